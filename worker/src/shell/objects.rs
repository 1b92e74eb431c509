//! The two Durable Objects.
//!
//! `ProviderBoardObject` (one, named "global") holds the live provider statistics and breakers:
//! every isolate must see the same breaker state and the same measured speeds (each routes on a
//! copy at most a second old, refreshed by the answers to its reports), and a Durable Object
//! is one strongly consistent, in-memory writer — D1 would turn each request's report into SQL
//! writes and still need read-modify-write care. The board is saved to the object's storage at
//! most once a second (an alarm), so it survives eviction without a disk write per request.
//!
//! `TokenGate` (one per caller token) enforces the token's requests per minute and its dollar
//! budget: both must hold across isolates, which only a single writer per token gives, and
//! keeping them together makes the check one call on the request's critical path, and for a
//! busy token mostly none: it grants small leases of requests that an isolate admits itself.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Method, Request, Response, Result, State};

use crate::router::auth::RateWindow;
use crate::router::config::BreakerConfig;
use crate::router::stats::{AttemptReport, ProviderBoard};

const BOARD_KEY: &str = "board";
const SPENT_KEY: &str = "spent_usd";
/// Longest time board updates stay only in memory.
const BOARD_SAVE_DELAY: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
pub struct BoardReport {
    pub breaker: BreakerConfig,
    pub reports: Vec<AttemptReport>,
}

#[durable_object]
pub struct ProviderBoardObject {
    state: State,
    board: RefCell<Option<ProviderBoard>>,
    /// Changes not yet saved; an alarm is pending.
    dirty: Cell<bool>,
}

impl ProviderBoardObject {
    async fn loaded(&self) -> ProviderBoard {
        if let Some(board) = self.board.borrow().clone() {
            return board;
        }
        let stored: Option<ProviderBoard> =
            self.state.storage().get(BOARD_KEY).await.unwrap_or(None);
        let board = stored.unwrap_or_default();
        *self.board.borrow_mut() = Some(board.clone());
        board
    }
}

impl DurableObject for ProviderBoardObject {
    fn new(state: State, _env: Env) -> Self {
        ProviderBoardObject {
            state,
            board: RefCell::new(None),
            dirty: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let mut board = self.loaded().await;
        if req.method() == Method::Post {
            let report: BoardReport = req.json().await?;
            let now = worker::Date::now().as_millis();
            for r in &report.reports {
                board.record(r, now, &report.breaker);
            }
            *self.board.borrow_mut() = Some(board.clone());
            if !self.dirty.replace(true) {
                self.state.storage().set_alarm(BOARD_SAVE_DELAY).await?;
            }
        }
        Response::from_json(&board)
    }

    async fn alarm(&self) -> Result<Response> {
        self.dirty.set(false);
        let board = self.board.borrow().clone();
        if let Some(board) = board {
            self.state.storage().put(BOARD_KEY, &board).await?;
        }
        Response::ok("saved")
    }
}

/// `POST /take`: may this request go ahead?
#[derive(Serialize, Deserialize)]
pub struct GateRequest {
    pub rpm_limit: u32,
    pub budget_usd: f64,
    /// The token's spend in D1, used only the first time this object starts.
    pub spent_seed_usd: f64,
    /// Requests to admit: the asking isolate admits the ones past the first itself, for a
    /// moment (a lease; see the shell's `pass_gate`).
    pub take: u32,
}

#[derive(Serialize, Deserialize)]
pub struct GateAnswer {
    /// Seconds to wait when over the per-minute limit.
    pub retry_after_s: Option<u64>,
    pub budget_exhausted: bool,
    /// Requests admitted (at most `take`; 0 when refused).
    pub granted: u32,
}

/// `POST /charge`: what a finished request cost.
#[derive(Serialize, Deserialize)]
pub struct GateCharge {
    pub cost_usd: f64,
    pub budget_usd: f64,
}

/// The answer to a charge: whether the budget is now spent.
#[derive(Serialize, Deserialize)]
pub struct GateCharged {
    pub budget_exhausted: bool,
}

#[durable_object]
pub struct TokenGate {
    state: State,
    window: RefCell<RateWindow>,
    spent_usd: Cell<Option<f64>>,
}

impl TokenGate {
    async fn spent(&self, seed: f64) -> f64 {
        if let Some(spent) = self.spent_usd.get() {
            return spent;
        }
        let stored: Option<f64> = self.state.storage().get(SPENT_KEY).await.unwrap_or(None);
        let spent = stored.unwrap_or(seed);
        self.spent_usd.set(Some(spent));
        spent
    }
}

impl DurableObject for TokenGate {
    fn new(state: State, _env: Env) -> Self {
        TokenGate {
            state,
            window: RefCell::new(RateWindow::default()),
            spent_usd: Cell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        if req.path() == "/charge" {
            let charge: GateCharge = req.json().await?;
            let spent = self.spent(0.0).await + charge.cost_usd.max(0.0);
            self.spent_usd.set(Some(spent));
            self.state.storage().put(SPENT_KEY, spent).await?;
            return Response::from_json(&GateCharged {
                budget_exhausted: spent >= charge.budget_usd,
            });
        }
        let ask: GateRequest = req.json().await?;
        if self.spent(ask.spent_seed_usd).await >= ask.budget_usd {
            return Response::from_json(&GateAnswer {
                retry_after_s: None,
                budget_exhausted: true,
                granted: 0,
            });
        }
        let now = worker::Date::now().as_millis();
        let taken = self
            .window
            .borrow_mut()
            .take_up_to(now, ask.rpm_limit, ask.take);
        Response::from_json(&GateAnswer {
            retry_after_s: taken.err(),
            budget_exhausted: false,
            granted: taken.unwrap_or(0),
        })
    }
}
