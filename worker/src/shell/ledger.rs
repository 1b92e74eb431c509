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

/// A finished request: what the ledger records of it.
pub struct Finished {
    pub entry: RequestEntry,
    pub result: RelayResult,
}

/// Writes the requests, each attempt (failed ones as such), and adds their cost to each token's
/// spend, in one D1 batch: all request rows in one statement and all attempt rows in another,
/// each bound to one JSON array that SQLite unpacks (`json_each`), then one update per token. A
/// statement per row (two per answer) cost the batch's sender, and the D1 database, most of
/// their time in per-statement overhead.
pub async fn record(db: &D1Database, finished: &[Finished]) -> Result<()> {
    let mut requests = Vec::with_capacity(finished.len());
    let mut attempts = Vec::new();
    for Finished { entry, result } in finished {
        requests.push(request_row(entry, result));
        attempts.extend(
            result
                .attempts
                .iter()
                .enumerate()
                .map(|(idx, a)| AttemptRow {
                    request_id: &entry.id,
                    idx,
                    provider: &a.provider,
                    outcome: &a.outcome,
                    status: a.status,
                    ttft_ms: a.ttft_ms,
                    duration_ms: a.duration_ms,
                    prompt_tokens: a.prompt_tokens,
                    completion_tokens: a.completion_tokens,
                    cost_usd: a.cost_usd,
                }),
        );
    }
    let mut statements: Vec<D1PreparedStatement> = vec![
        db.prepare(
            "INSERT INTO requests (id, token_id, created_ms, model, policy, stream, outcome, provider, \
             prompt_tokens, completion_tokens, cost_usd, attempts) \
             SELECT json_extract(value, '$.id'), json_extract(value, '$.token_id'), \
             json_extract(value, '$.created_ms'), json_extract(value, '$.model'), \
             json_extract(value, '$.policy'), json_extract(value, '$.stream'), \
             json_extract(value, '$.outcome'), json_extract(value, '$.provider'), \
             json_extract(value, '$.prompt_tokens'), json_extract(value, '$.completion_tokens'), \
             json_extract(value, '$.cost_usd'), json_extract(value, '$.attempts') FROM json_each(?1)",
        )
        .bind(&[serde_json::to_string(&requests)?.into()])?,
        db.prepare(
            "INSERT INTO attempts (request_id, idx, provider, outcome, status, ttft_ms, duration_ms, \
             prompt_tokens, completion_tokens, cost_usd) \
             SELECT json_extract(value, '$.request_id'), json_extract(value, '$.idx'), \
             json_extract(value, '$.provider'), json_extract(value, '$.outcome'), \
             json_extract(value, '$.status'), json_extract(value, '$.ttft_ms'), \
             json_extract(value, '$.duration_ms'), json_extract(value, '$.prompt_tokens'), \
             json_extract(value, '$.completion_tokens'), json_extract(value, '$.cost_usd') \
             FROM json_each(?1)",
        )
        .bind(&[serde_json::to_string(&attempts)?.into()])?,
    ];
    for (token, cost) in cost_by_token(finished) {
        statements.push(
            db.prepare("UPDATE tokens SET spent_usd = spent_usd + ?1 WHERE id = ?2")
                .bind(&[JsValue::from_f64(cost), token.into()])?,
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

/// A `requests` row, as the JSON object its insert reads.
#[derive(Serialize)]
struct RequestRow<'a> {
    id: &'a str,
    token_id: &'a str,
    created_ms: u64,
    model: &'a str,
    policy: &'a str,
    stream: u8,
    outcome: &'static str,
    /// The provider that finished the answer (none when every attempt failed).
    provider: Option<&'a str>,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    attempts: usize,
}

/// An `attempts` row, as the JSON object its insert reads.
#[derive(Serialize)]
struct AttemptRow<'a> {
    request_id: &'a str,
    idx: usize,
    provider: &'a str,
    outcome: &'a str,
    status: Option<u16>,
    ttft_ms: Option<u64>,
    duration_ms: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
}

fn request_row<'a>(entry: &'a RequestEntry, result: &'a RelayResult) -> RequestRow<'a> {
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
    RequestRow {
        id: &entry.id,
        token_id: &entry.token_id,
        created_ms: entry.created_ms,
        model: &entry.model,
        policy: &entry.policy,
        stream: u8::from(entry.stream),
        outcome,
        provider: provider.map(|a| a.provider.as_str()),
        prompt_tokens: result.usage.prompt_tokens,
        completion_tokens: result.usage.completion_tokens,
        cost_usd: result.cost_usd,
        attempts: result.attempts.len(),
    }
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
