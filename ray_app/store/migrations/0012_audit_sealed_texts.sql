-- The audit log's question and answer texts at rest (ray_app/audit/sealing.py): AES-256-GCM, nonce +
-- ciphertext + tag in `sealed`, the key's id in `sealed_key_id` (keys live outside the database and
-- rotate: `prism audit rotate-key`). The record JSON names the same key id and the blob's SHA-256, so
-- the chain's HMAC covers the ciphertext; adding columns changes no existing row or hash.
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS sealed bytea;
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS sealed_key_id text;
CREATE INDEX IF NOT EXISTS audit_log_sealed_key_id ON audit_log (sealed_key_id) WHERE sealed_key_id IS NOT NULL;
