-- Caller tokens: `ec_<id>_<secret>`; only the SHA-256 of the secret is stored.
CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  secret_sha256 TEXT NOT NULL,
  rpm_limit INTEGER NOT NULL,
  budget_usd REAL NOT NULL,
  spent_usd REAL NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL
);

-- One row per caller request.
CREATE TABLE requests (
  id TEXT PRIMARY KEY,
  token_id TEXT NOT NULL REFERENCES tokens(id),
  created_ms INTEGER NOT NULL,
  model TEXT NOT NULL,
  policy TEXT NOT NULL,
  stream INTEGER NOT NULL,
  outcome TEXT NOT NULL,          -- completed | failed | truncated | cancelled
  provider TEXT,                  -- the provider that finished the answer
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  attempts INTEGER NOT NULL
);
CREATE INDEX requests_by_token ON requests(token_id, created_ms);

-- One row per upstream attempt, failed ones included (billed only for text the caller kept).
CREATE TABLE attempts (
  request_id TEXT NOT NULL REFERENCES requests(id),
  idx INTEGER NOT NULL,
  provider TEXT NOT NULL,
  outcome TEXT NOT NULL,
  status INTEGER,
  ttft_ms INTEGER,
  duration_ms INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  PRIMARY KEY (request_id, idx)
);
