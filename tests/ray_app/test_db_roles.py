"""Database roles on a real Postgres: the owner migrates (`prism db migrate`), the serving role reads and appends
but can change no schema, its connections carry a statement_timeout, and `prism db status` prints no password."""

import json

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.settings import get_settings
from ray_app.store import Store
from ray_app.store.roles import redact_url, serving_url
from tests.conftest import reset_settings

DDL = ["CREATE TABLE evil (x int)", "CREATE TEMP TABLE evil (x int)", "DROP TABLE chunks",
       "ALTER TABLE documents ADD COLUMN evil int", "CREATE INDEX evil ON chunks (ord)", "TRUNCATE api_key_usage",
       "CREATE SCHEMA evil", "CREATE FUNCTION evil() RETURNS int LANGUAGE sql AS 'SELECT 1'"]
DENIED_DML = ["UPDATE audit_log SET audit_id = 'x'", "DELETE FROM audit_log", "INSERT INTO documents (id) VALUES ('x')",
              "UPDATE api_keys SET rpm = 1", "DELETE FROM chunks", "INSERT INTO schema_migrations VALUES (999, 'x')"]


def test_the_serving_role_has_no_ddl_and_a_statement_timeout(store, database_url):
    url = serving_url(database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == get_settings().serving_role
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "15s"
        for statement in DDL + DENIED_DML:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # what answering needs: read the corpus and keys, append to the audit log, count usage
        conn.execute("SELECT count(*) FROM chunks").fetchone()
        conn.execute("SELECT count(*) FROM api_keys").fetchone()
        conn.execute("SELECT pg_advisory_lock(1), pg_advisory_unlock(1)").fetchone()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SET statement_timeout = 200")
            conn.execute("SELECT pg_sleep(2)")
    with psycopg.connect(database_url, autocommit=True) as owner:  # the owner keeps every right
        owner.execute("CREATE TEMP TABLE fine (x int)")


def test_prism_db_migrate_runs_once_as_the_owner(database_url):
    first = CliRunner().invoke(app, ["db", "migrate", "--json"])
    assert first.exit_code == 0, first.output
    result = json.loads(first.output)
    assert 12 in result["applied"] and result["version"] >= 12 and result["serving_role"] == "prism_serving"
    again = CliRunner().invoke(app, ["db", "migrate", "--json"])
    assert json.loads(again.output)["applied"] == []


def test_db_status_never_prints_a_password(database_url, monkeypatch):
    secret = "hunter2-Zq9"  # the embedded server trusts its socket, so any password connects
    with_password = database_url.replace("postgresql://postgres:@", f"postgresql://postgres:{secret}@")
    assert with_password != database_url
    monkeypatch.setenv("DATABASE_URL", with_password)
    reset_settings()
    for args in (["db", "status", "--json"], ["db", "status"], ["db", "up"], ["db", "migrate", "--json"],
                 ["db", "migrate"]):
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 0, out.output
        assert secret not in out.output, (args, out.output)
        assert "***" in out.output or args == ["db", "migrate"], (args, out.output)  # that one prints no URL
    assert json.loads(CliRunner().invoke(app, ["db", "status", "--json"]).output)["url"] == redact_url(with_password)


def test_status_url_stays_the_owners_socket_connection(database_url):
    out = json.loads(CliRunner().invoke(app, ["db", "status", "--json"]).output)
    assert out["url"] == database_url and "host=/" in database_url.replace("%2F", "/")
    with Store(out["url"], migrate=False) as store, store.pool.connection() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] != "prism_serving"


def test_serving_url_keeps_sslmode_and_drops_the_owners_password():
    owner = "postgresql://owner:pw@db.example:5432/prism?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    params = conninfo_to_dict(serving_url(owner))
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "/etc/ca.pem"
    assert params["user"] == "prism_serving" and "password" not in params and params["host"] == "db.example"
    assert "statement_timeout=15000" in params["options"]
    assert redact_url(owner) == "postgresql://owner:***@db.example:5432/prism?sslmode=verify-full&sslrootcert=/etc/ca.pem"


def test_the_serving_store_uses_the_role_and_falls_back_to_the_owner_only_without_its_rights(store, database_url,
                                                                                          caplog):
    from ray_app.store.roles import close_serving_store, get_serving_store

    close_serving_store()
    try:
        with get_serving_store().pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "prism_serving"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "15s"
        close_serving_store()
        with psycopg.connect(database_url, autocommit=True) as owner:  # a database the owner never granted
            owner.execute("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM prism_serving")
        with get_serving_store().pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "postgres"
            assert conn.execute("SHOW statement_timeout").fetchone()[0] == "15s"
        assert "serving on the owner's connection" in caplog.text
    finally:
        close_serving_store()


def test_the_serving_role_searches_and_reads_like_the_owner(store, database_url, text_embedder):
    from ray_app.store import ChunkRow, DocumentRow, content_hash

    texts = ["Frogs live in ponds and marshes.", "Tigers live in forests of Asia.", "The Moon orbits the Earth."]
    docs = [DocumentRow(f"d{i}", "wiki", t.split()[0], content_hash(t), 1) for i, t in enumerate(texts)]
    chunks = [ChunkRow(f"d{i}", 0, t, v) for i, (t, v) in enumerate(zip(texts, text_embedder.embed(texts), strict=True))]
    store.write(docs, chunks)
    vector = text_embedder.embed(["where do frogs live"])[0]
    with Store(serving_url(database_url), migrate=False) as serving:
        with serving.pool.connection() as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "prism_serving"
        for owner_hits, serving_hits in [
            (store.search_text("frogs ponds", 3), serving.search_text("frogs ponds", 3)),
            (store.search_vector(vector, 3), serving.search_vector(vector, 3)),
            (store.search_hybrid("where do frogs live", vector, 3), serving.search_hybrid("where do frogs live", vector, 3)),
        ]:
            assert [h.id for h in serving_hits] == [h.id for h in owner_hits] and serving_hits
        assert serving.get_document("d0")["title"] == "Frogs"
