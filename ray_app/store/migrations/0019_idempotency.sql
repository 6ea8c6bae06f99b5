-- Retry-safe asks (Idempotency-Key header): one row per caller and key. A 'pending' row claims the key
-- while its ask runs; 'done' keeps the answer that a retry with the same key and request gets back,
-- without a second ask (no second audit records, no second token charge).
CREATE TABLE IF NOT EXISTS ask_idempotency (
    caller       text NOT NULL,                 -- the API key id, or '' without auth
    key          text NOT NULL,                 -- the client's Idempotency-Key
    request_hash text NOT NULL,                 -- sha256 of the request: a reused key with another request is refused
    state        text NOT NULL CHECK (state IN ('pending', 'done')),
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
CREATE INDEX IF NOT EXISTS ask_idempotency_created_idx ON ask_idempotency (created_at);
