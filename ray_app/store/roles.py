"""Database roles: the owner migrates, the serving role reads and appends and can change no schema.

``prism db up`` / ``prism db migrate`` (and every owner-side :class:`~ray_app.store.Store` that migrates)
apply the migrations, then :func:`grant_serving_role`: the role ``PRISM_SERVING_ROLE`` (default
``prism_serving``) exists, may connect, reads every table, writes only what answering needs
(``api_key_usage`` and other service tables; ``audit_log`` INSERT only; ``api_keys``, the corpus and
``schema_migrations`` read-only), and has no CREATE on the database or schema and no TEMPORARY: no DDL.
The Serve deployments open :func:`get_serving_store`: that role, no migrations, and a
``statement_timeout`` on every pooled connection.

On the embedded server the serving role connects over the same local socket as the owner. On an
external server set ``PRISM_SERVING_DATABASE_URL`` to the serving role's URL (its password in a
passfile or the URL); ``sslmode`` and every other parameter of ``DATABASE_URL`` carry over to the
derived URL.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ray_app.settings import Settings, get_settings

log = logging.getLogger(__name__)

_LOCK = 727172  # the migrations' advisory lock: grants and migrations never interleave
READ_ONLY_TABLES = ("api_keys", "documents", "chunks", "images", "schema_migrations")
APPEND_ONLY_TABLES = ("audit_log",)


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info, a ``password`` query parameter or ``password=``) as ``***``."""
    if "://" not in url:
        params = conninfo_to_dict(url)
        return make_conninfo(**(params | {"password": "***"})) if params.get("password") else url
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and userinfo.partition(":")[2]:  # a non-empty password (the embedded server's URL has none)
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _ in query):
        parts = parts._replace(query=urlencode([(k, "***" if k == "password" else v) for k, v in query], safe="/*"))
    return urlunsplit(parts)


def serving_url(owner_url: str, settings: Settings | None = None) -> str:
    """The serving role's connection: ``PRISM_SERVING_DATABASE_URL``, else the owner's with its user switched
    to the serving role and its password dropped; either way with ``statement_timeout`` set."""
    settings = settings or get_settings()
    base = settings.serving_database_url
    if base is None:
        params = {k: v for k, v in conninfo_to_dict(owner_url).items() if k != "password"}
        base = make_conninfo(**(params | {"user": settings.serving_role}))
    options = (conninfo_to_dict(base).get("options") or "").strip()
    timeout = f"-c statement_timeout={int(settings.statement_timeout_ms)}"
    return make_conninfo(base, options=f"{options} {timeout}".strip())


def grant_serving_role(conn: psycopg.Connection, settings: Settings | None = None) -> bool:
    """Create the serving role if needed and set its rights on this database (the owner's autocommit connection).

    Returns False, with a warning, when the owner may not create roles or grant (an external server whose
    roles an administrator manages: then grant the same rights by hand, docs/security.md).
    """
    name = (settings or get_settings()).serving_role
    role = sql.Identifier(name)
    try:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
            try:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION")
                             .format(role))
            except psycopg.errors.DuplicateObject:
                pass  # created by a concurrent migrator of another database (roles are per server)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
            _grant(conn, role)
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("could not set up the serving role %s: %s", name, str(exc).splitlines()[0])
        return False
    return True


def _grant(conn: psycopg.Connection, role: sql.Identifier) -> None:
    database = sql.Identifier(conn.execute("SELECT current_database()").fetchone()[0])
    tables = [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
    statements = [
        sql.SQL("REVOKE CREATE, TEMPORARY ON DATABASE {} FROM PUBLIC").format(database),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role),
        sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(role),
        sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role),
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(role),
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role),
    ]
    for table in tables:
        if table in READ_ONLY_TABLES:
            rights = "SELECT"
        elif table in APPEND_ONLY_TABLES:
            rights = "SELECT, INSERT"
        else:  # the service's own tables (usage windows, idempotency, ...): rows come and go
            rights = "SELECT, INSERT, UPDATE, DELETE"
        statements.append(sql.SQL(f"GRANT {rights} ON {{}} TO {{}}").format(sql.Identifier(table), role))
    for statement in statements:
        conn.execute(statement)


_stores: dict[str, object] = {}


def get_serving_store():
    """The process-wide store of a Serve replica: the serving role, no migrations, ``statement_timeout`` set.

    Without ``PRISM_SERVING_DATABASE_URL``, a database whose owner could not set the role up (an external
    server without CREATEROLE, or one not migrated since roles came in) is served on the owner's connection,
    still without migrations and with the timeout, and a warning says so.
    """
    from ray_app.store.store import Store, resolve_url

    if "store" not in _stores:
        settings = get_settings()
        owner = resolve_url(settings)
        url = serving_url(owner, settings)
        if settings.serving_database_url is None and not _role_ready(url):
            log.warning("the serving role %s cannot connect or lacks its rights here (run `prism db migrate` as the "
                        "owner, or set PRISM_SERVING_DATABASE_URL): serving on the owner's connection",
                        settings.serving_role)
            url = make_conninfo(owner, options=conninfo_to_dict(url)["options"])
        _stores["store"] = Store(url, settings=settings, migrate=False)
    return _stores["store"]


def _role_ready(url: str) -> bool:
    """The serving role connects and may read the corpus and append to the audit log."""
    try:
        with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
            return bool(conn.execute(
                "SELECT has_table_privilege('chunks', 'SELECT') AND has_table_privilege('audit_log', 'INSERT')"
            ).fetchone()[0])
    except psycopg.Error:
        return False


def close_serving_store() -> None:
    """Close and forget the serving store (tests, after the settings change)."""
    store = _stores.pop("store", None)
    if store is not None:
        store.close()
