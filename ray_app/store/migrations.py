"""Numbered SQL migrations (``migrations/NNNN_name.sql``), applied in order and recorded.

Each file runs in its own transaction together with its row in ``schema_migrations``, so a
failed migration leaves nothing behind and re-running ``apply_migrations`` is a no-op. Then the
serving role gets its rights on every table (:mod:`ray_app.store.roles`): only the owner migrates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ray_app.settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def list_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Return the migrations in ``directory`` sorted by version; reject duplicate versions."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations share version {version}: {found[version].path.name}, {path.name}")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def render_migration(migration: Migration, settings: Settings) -> str:
    """Substitute index parameters from settings into a migration's SQL."""
    sql = migration.path.read_text()
    return sql.replace("{m}", str(settings.hnsw_m)).replace("{ef_construction}", str(settings.hnsw_ef_construction))


def apply_migrations(conn: psycopg.Connection, settings: Settings) -> list[int]:
    """Apply pending migrations. Returns the versions applied by this call (empty when up to date)."""
    with conn.transaction():
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        # Serialise concurrent migrators (two Ray workers starting at once).
        conn.execute("SELECT pg_advisory_xact_lock(727172)")
    applied: list[int] = []
    for migration in list_migrations():
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(727172)")
            done = conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)).fetchone()
            if done:
                continue
            conn.execute(render_migration(migration, settings))
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
            applied.append(migration.version)
    from ray_app.store.roles import grant_serving_role

    grant_serving_role(conn, settings)  # tables added by a migration get the serving role's rights at once
    return applied
