"""`prism db up|down|status|migrate`: the embedded PostgreSQL + pgvector server, or DATABASE_URL's.

Migrations (and the serving role's rights, :mod:`ray_app.store.roles`) run here, on the owner's
connection; the Serve deployments connect as the serving role and cannot change the schema. No
command prints a password: a URL that holds one is shown with ``***``.
"""

from __future__ import annotations

import psycopg
import typer

from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.settings import get_settings
from ray_app.store import Store, StoreError, resolve_url
from ray_app.store.embedded import start_embedded, stop_embedded
from ray_app.store.roles import redact_url

app = typer.Typer(help="Start, stop and inspect Prism's PostgreSQL + pgvector database.", no_args_is_help=True)


def database_status() -> dict:
    """Connect, apply migrations, and report versions and row counts (``url``: the owner's, password masked)."""
    url = resolve_url()
    with Store(url) as store:
        counts = store.counts()
        with store.pool.connection() as conn:
            postgres = conn.execute("SHOW server_version").fetchone()[0]
            pgvector = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    return {"url": redact_url(url), "postgres": postgres, "pgvector": pgvector, **counts}


@app.command()
@handle_errors
def up(json_out: bool = JSON_OPTION) -> None:
    """Start the embedded server under $PRISM_HOME/pg (or check DATABASE_URL's server) and migrate."""
    settings = get_settings()
    if settings.database_url:
        message = "DATABASE_URL is set: using that server, not starting the embedded one"
    else:
        start_embedded(settings.pg_dir)
        message = f"embedded PostgreSQL running under {settings.pg_dir}"
    status = database_status()
    emit({"message": message, **status}, json_out, lambda s: console.print(f"[green]{message}[/green]\n{s['url']}"))


@app.command()
@handle_errors
def down(json_out: bool = JSON_OPTION) -> None:
    """Stop the embedded server (does nothing to a DATABASE_URL server)."""
    settings = get_settings()
    if settings.database_url:
        message = "DATABASE_URL is set: Prism does not stop external servers"
    else:
        message = "stopped" if stop_embedded(settings.pg_dir) else "the embedded server was not running"
    emit({"message": message}, json_out, lambda s: console.print(message))


@app.command()
@handle_errors
def status(json_out: bool = JSON_OPTION) -> None:
    """Print {url, postgres, pgvector, documents, chunks, images}."""
    try:
        info = database_status()
    except psycopg.Error as exc:
        raise StoreError(str(exc).strip().splitlines()[0]) from exc

    def human(s: dict) -> None:
        console.print(
            f"PostgreSQL {s['postgres']} + pgvector {s['pgvector']} at {s['url']}\n"
            f"documents {s['documents']:,}  chunks {s['chunks']:,}  images {s['images']:,}"
        )

    emit(info, json_out, human)


@app.command()
@handle_errors
def migrate(json_out: bool = JSON_OPTION) -> None:
    """Apply pending migrations and the serving role's rights, as the database owner (the Serve app never migrates)."""
    url = resolve_url()
    try:
        with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
            before = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()} \
                if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] else set()
    except psycopg.Error as exc:
        raise StoreError(str(exc).strip().splitlines()[0]) from exc
    with Store(url) as store, store.pool.connection() as conn:
        after = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
    applied = [v for v in after if v not in before]
    result = {"url": redact_url(url), "applied": applied, "version": max(after, default=0),
              "serving_role": get_settings().serving_role}
    emit(result, json_out, lambda r: console.print(
        f"migrated to version {r['version']} ({len(r['applied'])} applied); serving role {r['serving_role']}"))
