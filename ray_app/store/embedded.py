"""The embedded PostgreSQL 16 + pgvector server (PyPI ``pgserver``) under ``$PRISM_HOME/pg``.

``prism db up`` starts it detached (it outlives the CLI process); ``prism db down`` stops it.
Connections go over a Unix socket, so nothing listens on a TCP port.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

from ray_app.errors import Unavailable

log = logging.getLogger(__name__)
# pgserver asks platformdirs for XDG_RUNTIME_DIR, which is unset in containers and CI; the fallback is fine.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


class EmbeddedDatabaseError(Unavailable, RuntimeError):
    """The embedded server could not be started, found or stopped."""

    code = "database_unavailable"


def _postmaster_uri(pg_dir: Path) -> str | None:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pg_dir)
    if info is None or not info.is_running() or info.status != "ready":
        return None
    return info.get_uri()


def embedded_url(pg_dir: Path) -> str | None:
    """Return the URL of the running embedded server, or None when it is not running."""
    if not (pg_dir / "postmaster.pid").exists():
        return None
    return _postmaster_uri(pg_dir)


def start_embedded(pg_dir: Path) -> str:
    """Start (or find) the embedded server and return its URL; idempotent.

    Raises:
        EmbeddedDatabaseError: when pgserver cannot initialise or start PostgreSQL.
    """
    url = embedded_url(pg_dir)
    if url is not None:
        return url
    pg_dir.mkdir(parents=True, exist_ok=True)
    # pgserver as root runs PostgreSQL as the 'pgserver' user, which must reach the data folder
    # through its parents; the data folder itself must stay u=rwx only, or PostgreSQL refuses it.
    for parent in pg_dir.parents:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o011)
    if (pg_dir / "PG_VERSION").exists() and pg_dir.stat().st_mode & 0o077:
        pg_dir.chmod(0o700)
    import pgserver

    try:
        server = pgserver.get_server(pg_dir, cleanup_mode=None)
    except Exception as exc:  # pgserver raises bare subprocess/assert errors
        log_file = pg_dir / "log"
        tail = log_file.read_text()[-2000:] if log_file.exists() else ""
        raise EmbeddedDatabaseError(f"could not start PostgreSQL under {pg_dir}: {exc}\n{tail}") from exc
    return server.get_uri()


def stop_embedded(pg_dir: Path) -> bool:
    """Stop the embedded server. Returns True when a running server was stopped."""
    if embedded_url(pg_dir) is None:
        return False
    from pgserver._commands import pg_ctl

    user = "pgserver" if _is_root() else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg_dir, user=user)
    except subprocess.CalledProcessError as exc:
        raise EmbeddedDatabaseError(f"pg_ctl stop failed for {pg_dir}: {exc}") from exc
    (pg_dir / ".handle_pids.json").unlink(missing_ok=True)
    # pgserver caches one handle per data folder; a stale one would make the next start a no-op.
    from pgserver.postgres_server import PostgresServer

    for key in [k for k in PostgresServer._instances if Path(k).resolve() == pg_dir.resolve()]:
        del PostgresServer._instances[key]
    return True


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0
