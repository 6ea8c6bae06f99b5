-- Exact-copy lookups of uploaded images (vision labels an upload that is already in the corpus).
CREATE INDEX IF NOT EXISTS images_sha256_idx ON images (sha256);
