//! D1: caller tokens and the per-token ledger of requests and their attempts.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Result};

use crate::router::relay::{RelayOutcome, RelayResult};

#[derive(Clone, Debug, Deserialize)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub secret_sha256: String,
    pub rpm_limit: u32,
    pub budget_usd: f64,
    pub spent_usd: f64,
}

pub async fn find_token(db: &D1Database, id: &str) -> Result<Option<TokenRow>> {
    db.prepare("SELECT id, name, secret_sha256, rpm_limit, budget_usd, spent_usd FROM tokens WHERE id = ?1")
        .bind(&[id.into()])?
        .first::<TokenRow>(None)
        .await
}

/// What the ledger needs to know about a request besides the relay's result.
pub struct RequestEntry {
    pub id: String,
    pub token_id: String,
    pub created_ms: u64,
    pub model: String,
    pub policy: String,
    pub stream: bool,
}

fn num(n: impl Into<f64>) -> JsValue {
    JsValue::from_f64(n.into())
}

fn opt_num(n: Option<u64>) -> JsValue {
    n.map_or(JsValue::NULL, |n| JsValue::from_f64(n as f64))
}

/// A finished request: what the ledger records of it.
pub struct Finished {
    pub entry: RequestEntry,
    pub result: RelayResult,
}

/// Writes the requests, each attempt (failed ones as such), and adds their cost to each token's
/// spend, in one D1 batch.
pub async fn record(db: &D1Database, finished: &[Finished]) -> Result<()> {
    let mut statements: Vec<D1PreparedStatement> = Vec::new();
    for Finished { entry, result } in finished {
        request_rows(db, entry, result, &mut statements)?;
    }
    for (token, cost) in cost_by_token(finished) {
        statements.push(
            db.prepare("UPDATE tokens SET spent_usd = spent_usd + ?1 WHERE id = ?2")
                .bind(&[num(cost), token.into()])?,
        );
    }
    db.batch(statements).await?;
    Ok(())
}

/// What the requests cost, per token (tokens whose requests cost nothing left out).
pub fn cost_by_token(finished: &[Finished]) -> Vec<(&str, f64)> {
    let mut costs: Vec<(&str, f64)> = Vec::new();
    for Finished { entry, result } in finished.iter().filter(|f| f.result.cost_usd > 0.0) {
        match costs.iter_mut().find(|(token, _)| *token == entry.token_id) {
            Some((_, sum)) => *sum += result.cost_usd,
            None => costs.push((&entry.token_id, result.cost_usd)),
        }
    }
    costs
}

/// The `requests` row of one request and its `attempts` rows.
fn request_rows(
    db: &D1Database,
    entry: &RequestEntry,
    result: &RelayResult,
    statements: &mut Vec<D1PreparedStatement>,
) -> Result<()> {
    let outcome = match result.outcome {
        RelayOutcome::Completed => "completed",
        RelayOutcome::Failed => "failed",
        RelayOutcome::Truncated => "truncated",
        RelayOutcome::Cancelled => "cancelled",
    };
    let provider = result
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome == "ok" || a.outcome == "client_cancelled");
    statements.push(db
        .prepare(
            "INSERT INTO requests (id, token_id, created_ms, model, policy, stream, outcome, provider, \
             prompt_tokens, completion_tokens, cost_usd, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .bind(&[
            entry.id.as_str().into(),
            entry.token_id.as_str().into(),
            num(entry.created_ms as f64),
            entry.model.as_str().into(),
            entry.policy.as_str().into(),
            num(u8::from(entry.stream)),
            outcome.into(),
            provider.map_or(JsValue::NULL, |a| a.provider.as_str().into()),
            num(result.usage.prompt_tokens as f64),
            num(result.usage.completion_tokens as f64),
            num(result.cost_usd),
            num(result.attempts.len() as f64),
        ])?);
    for (i, a) in result.attempts.iter().enumerate() {
        statements.push(
            db.prepare(
                "INSERT INTO attempts (request_id, idx, provider, outcome, status, ttft_ms, duration_ms, \
                 prompt_tokens, completion_tokens, cost_usd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .bind(&[
                entry.id.as_str().into(),
                num(i as f64),
                a.provider.as_str().into(),
                a.outcome.as_str().into(),
                opt_num(a.status.map(u64::from)),
                opt_num(a.ttft_ms),
                num(a.duration_ms as f64),
                num(a.prompt_tokens as f64),
                num(a.completion_tokens as f64),
                num(a.cost_usd),
            ])?,
        );
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Totals {
    requests: f64,
    prompt_tokens: f64,
    completion_tokens: f64,
    cost_usd: f64,
}

/// The caller's ledger: totals, and the latest requests (or one by id) with their attempts.
pub async fn usage(
    db: &D1Database,
    token: &TokenRow,
    request_id: Option<&str>,
    limit: u32,
) -> Result<Value> {
    let totals = db
        .prepare(
            "SELECT COUNT(*) AS requests, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, \
             COALESCE(SUM(completion_tokens), 0) AS completion_tokens, COALESCE(SUM(cost_usd), 0) AS cost_usd \
             FROM requests WHERE token_id = ?1",
        )
        .bind(&[token.id.as_str().into()])?
        .first::<Totals>(None)
        .await?;
    let (requests, attempts) = match request_id {
        Some(id) => (
            db.prepare("SELECT * FROM requests WHERE token_id = ?1 AND id = ?2")
                .bind(&[token.id.as_str().into(), id.into()])?,
            db.prepare(
                "SELECT a.* FROM attempts a JOIN requests r ON r.id = a.request_id \
                 WHERE r.token_id = ?1 AND r.id = ?2 ORDER BY a.idx",
            )
            .bind(&[token.id.as_str().into(), id.into()])?,
        ),
        None => (
            db.prepare("SELECT * FROM requests WHERE token_id = ?1 ORDER BY created_ms DESC LIMIT ?2")
                .bind(&[token.id.as_str().into(), num(limit)])?,
            db.prepare(
                "SELECT a.* FROM attempts a WHERE a.request_id IN \
                 (SELECT id FROM requests WHERE token_id = ?1 ORDER BY created_ms DESC LIMIT ?2) ORDER BY a.request_id, a.idx",
            )
            .bind(&[token.id.as_str().into(), num(limit)])?,
        ),
    };
    let requests: Vec<Value> = requests.all().await?.results()?;
    let attempts: Vec<Value> = attempts.all().await?.results()?;
    let requests: Vec<Value> = requests
        .into_iter()
        .map(|mut r| {
            let id = r["id"].clone();
            r["attempts_detail"] = Value::Array(
                attempts
                    .iter()
                    .filter(|a| a["request_id"] == id)
                    .cloned()
                    .collect(),
            );
            r
        })
        .collect();
    Ok(json!({
        "object": "usage",
        "token": {"id": token.id, "name": token.name, "rpm_limit": token.rpm_limit,
                  "budget_usd": token.budget_usd, "spent_usd": token.spent_usd},
        "totals": totals,
        "requests": requests,
    }))
}
