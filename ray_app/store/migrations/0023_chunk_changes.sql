-- The lexical (BM25) index lives beside Postgres, in each searching process (ray_app/store/lexical.py),
-- built from chunks.tsv. Every write statement that changes chunks (or a document's source/category,
-- which search filters read) appends one row here from a statement-level trigger, in the writer's
-- transaction: a reader whose index was built at another (count, max id) rebuilds it before it answers,
-- so BM25 statistics (N, average length, document frequencies) are never those of an older store.
-- Appending takes no lock that another writer waits on (parallel ingest writers stay parallel), and a
-- statement that changed nothing (an idempotent re-write: ON CONFLICT ... WHERE unchanged) adds no row.
CREATE TABLE IF NOT EXISTS chunk_changes (
    id      bigserial PRIMARY KEY,
    tbl     text NOT NULL,
    op      text NOT NULL,
    n_rows  bigint NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION record_chunk_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        n := -1;
    ELSE
        SELECT count(*) INTO n FROM changed_rows;
    END IF;
    IF n <> 0 THEN
        INSERT INTO chunk_changes (tbl, op, n_rows) VALUES (TG_TABLE_NAME, TG_OP, n);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS chunks_changed_insert ON chunks;
DROP TRIGGER IF EXISTS chunks_changed_update ON chunks;
DROP TRIGGER IF EXISTS chunks_changed_delete ON chunks;
DROP TRIGGER IF EXISTS chunks_changed_truncate ON chunks;
DROP TRIGGER IF EXISTS documents_changed_update ON documents;
CREATE TRIGGER chunks_changed_insert AFTER INSERT ON chunks REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_chunk_change();
CREATE TRIGGER chunks_changed_update AFTER UPDATE ON chunks REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_chunk_change();
CREATE TRIGGER chunks_changed_delete AFTER DELETE ON chunks REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_chunk_change();
CREATE TRIGGER chunks_changed_truncate AFTER TRUNCATE ON chunks
    FOR EACH STATEMENT EXECUTE FUNCTION record_chunk_change();
CREATE TRIGGER documents_changed_update AFTER UPDATE ON documents REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_chunk_change();
