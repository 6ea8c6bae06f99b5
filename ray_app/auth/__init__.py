"""Access control: API keys (salted scrypt hashes in Postgres) and per-key rate limits shared by every replica."""
