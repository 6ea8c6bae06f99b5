"""`prism demo`: bring Prism up on this machine and say where it is.

Today: the embedded database (started and migrated) and its status. The ingest, training and
serving steps join this command as they land, each skipped when its output already exists.
"""

from __future__ import annotations

import typer

from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.cli.db import database_status
from ray_app.settings import get_settings
from ray_app.store.embedded import start_embedded


@handle_errors
def demo(json_out: bool = JSON_OPTION) -> None:
    """Bring up the database (and, as they land, the demo corpus, image encoder and Serve app)."""
    settings = get_settings()
    if not settings.database_url:
        start_embedded(settings.pg_dir)
    status = database_status()

    def human(s: dict) -> None:
        console.print(f"[green]Prism database ready[/green]: PostgreSQL {s['postgres']} + pgvector {s['pgvector']}")
        console.print(f"  url: {s['url']}")
        console.print(f"  documents {s['documents']:,}  chunks {s['chunks']:,}  images {s['images']:,}")

    emit({"database": status}, json_out, human)
    raise typer.Exit(0)
