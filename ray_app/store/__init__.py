"""Postgres + pgvector store: migrations, the embedded server, bulk writes and search."""

from ray_app.store.rows import (
    ChunkRow,
    DocumentRow,
    ImageRow,
    SearchHit,
    StoreInputError,
    content_hash,
    fuse_rrf,
    stable_id,
)

# store.py (psycopg, pgvector) loads on first use, so code that needs only the row types (the edge
# runtime, which has no Postgres) can import them without the driver.
_STORE_NAMES = ("Filters", "Store", "StoreError", "WriteStats", "close_store", "get_store", "resolve_url")


def __getattr__(name: str):
    if name in _STORE_NAMES:
        from ray_app.store import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChunkRow",
    "DocumentRow",
    "Filters",
    "ImageRow",
    "SearchHit",
    "Store",
    "StoreError",
    "StoreInputError",
    "WriteStats",
    "close_store",
    "content_hash",
    "fuse_rrf",
    "get_store",
    "resolve_url",
    "stable_id",
]
