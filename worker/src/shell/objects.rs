//! The two Durable Objects.
//!
//! `ProviderBoardObject` (one, named "global") holds the live provider statistics and breakers:
//! every isolate must see the same breaker state and the same measured speeds, and a Durable Object
//! is one strongly consistent, in-memory writer — D1 would turn each request's report into SQL
//! writes and still need read-modify-write care. The board is also saved to the object's storage
//! so it survives eviction.
//!
//! `TokenGate` (one per caller token) counts requests per minute: the limit must hold across
//! isolates, which only a single writer per token gives.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, Result, State};

use crate::router::auth::RateWindow;
use crate::router::config::BreakerConfig;
use crate::router::stats::{AttemptReport, ProviderBoard};

const BOARD_KEY: &str = "board";

#[derive(Serialize, Deserialize)]
pub struct BoardReport {
    pub breaker: BreakerConfig,
    pub reports: Vec<AttemptReport>,
}

#[durable_object]
pub struct ProviderBoardObject {
    state: State,
    board: RefCell<Option<ProviderBoard>>,
}

impl ProviderBoardObject {
    async fn loaded(&self) -> Result<ProviderBoard> {
        if let Some(board) = self.board.borrow().clone() {
            return Ok(board);
        }
        let stored: Option<ProviderBoard> =
            self.state.storage().get(BOARD_KEY).await.unwrap_or(None);
        let board = stored.unwrap_or_default();
        *self.board.borrow_mut() = Some(board.clone());
        Ok(board)
    }
}

impl DurableObject for ProviderBoardObject {
    fn new(state: State, _env: Env) -> Self {
        ProviderBoardObject {
            state,
            board: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let mut board = self.loaded().await?;
        if req.method() == worker::Method::Post {
            let report: BoardReport = req.json().await?;
            let now = worker::Date::now().as_millis();
            for r in &report.reports {
                board.record(r, now, &report.breaker);
            }
            *self.board.borrow_mut() = Some(board.clone());
            self.state.storage().put(BOARD_KEY, &board).await?;
        }
        Response::from_json(&board)
    }
}

#[derive(Serialize, Deserialize)]
pub struct GateRequest {
    pub rpm_limit: u32,
}

#[derive(Serialize, Deserialize)]
pub struct GateAnswer {
    /// Seconds to wait when over the limit.
    pub retry_after_s: Option<u64>,
}

#[durable_object]
pub struct TokenGate {
    window: RefCell<RateWindow>,
}

impl DurableObject for TokenGate {
    fn new(_state: State, _env: Env) -> Self {
        TokenGate {
            window: RefCell::new(RateWindow::default()),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let ask: GateRequest = req.json().await?;
        let now = worker::Date::now().as_millis();
        let retry_after_s = self.window.borrow_mut().take(now, ask.rpm_limit).err();
        Response::from_json(&GateAnswer { retry_after_s })
    }
}
