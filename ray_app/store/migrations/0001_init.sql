-- Prism's core schema: documents, their chunks (text + tsvector + 384-d vector),
-- images (caption + 384-d vector) and the append-only audit log.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE documents (
    id           text PRIMARY KEY,
    source       text NOT NULL,
    title        text NOT NULL,
    url          text,
    license      text,
    category     text,
    content_hash text NOT NULL,
    n_chunks     integer NOT NULL DEFAULT 0 CHECK (n_chunks >= 0),
    metadata     jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_source_idx ON documents (source);
CREATE INDEX documents_category_idx ON documents (category);

-- Chunk ids are "<doc_id>:<ord>"; a document that shrinks loses its chunks with ord >= n_chunks.
CREATE TABLE chunks (
    id        text PRIMARY KEY,
    doc_id    text NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    ord       integer NOT NULL CHECK (ord >= 0),
    text      text NOT NULL CHECK (length(btrim(text)) > 0),
    tsv       tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    embedding vector(384) NOT NULL,
    UNIQUE (doc_id, ord)
);
CREATE INDEX chunks_tsv_idx ON chunks USING gin (tsv);

CREATE TABLE images (
    id        text PRIMARY KEY,
    doc_id    text REFERENCES documents (id) ON DELETE CASCADE,
    caption   text,
    path      text,
    sha256    text,
    width     integer,
    height    integer,
    embedding vector(384)
);
CREATE INDEX images_doc_idx ON images (doc_id);

-- Tamper-evident: hash = sha256(prev_hash || canonical JSON of record).
CREATE TABLE audit_log (
    seq        bigserial PRIMARY KEY,
    audit_id   text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    record     jsonb NOT NULL,
    prev_hash  text NOT NULL,
    hash       text NOT NULL UNIQUE
);
