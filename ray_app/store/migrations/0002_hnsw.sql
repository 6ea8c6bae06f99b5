-- HNSW indexes (cosine). Parameters come from settings: {m} and {ef_construction} are
-- substituted by the migration runner. Ingest drops and rebuilds them around bulk loads.
CREATE INDEX IF NOT EXISTS chunks_embedding_hnsw ON chunks
    USING hnsw (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction});
CREATE INDEX IF NOT EXISTS images_embedding_hnsw ON images
    USING hnsw (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction});
