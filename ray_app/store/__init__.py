"""Postgres + pgvector store: migrations, the embedded server, bulk writes and search."""

from ray_app.store.rows import (
    ChunkRow,
    DocumentRow,
    ImageRow,
    SearchHit,
    StoreInputError,
    content_hash,
    stable_id,
)
from ray_app.store.store import (
    Filters,
    Store,
    StoreError,
    WriteStats,
    close_store,
    fuse_rrf,
    get_store,
    resolve_url,
)

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
