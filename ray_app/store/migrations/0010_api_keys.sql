-- API keys (prism keys create|list|revoke) and their per-window usage (rate limits shared by every
-- ingress replica). A key is "prism_<id>_<secret>"; only the secret's salted scrypt hash is stored.
CREATE TABLE IF NOT EXISTS api_keys (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    kdf            text NOT NULL,             -- e.g. 'scrypt:n=16384,r=8,p=1'
    salt           bytea NOT NULL,
    hash           bytea NOT NULL,
    rpm            bigint NOT NULL CHECK (rpm > 0),
    tokens_per_day bigint NOT NULL CHECK (tokens_per_day > 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);

-- One row per key, kind and fixed window: 'requests' per minute, 'tokens' per UTC day.
CREATE TABLE IF NOT EXISTS api_key_usage (
    key_id       text NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    kind         text NOT NULL CHECK (kind IN ('requests', 'tokens')),
    window_start timestamptz NOT NULL,
    used         bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (key_id, kind, window_start)
);
