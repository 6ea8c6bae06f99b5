"""Retrieval shared by the CLI, the eval jobs and the Serve graph: text and image queries."""

from __future__ import annotations

from pathlib import Path

from ray_app.models.text import get_text_embedder
from ray_app.store import Filters, SearchHit, Store, StoreInputError

_store: Store | None = None


def get_store() -> Store:
    """Process-wide store (one connection pool per process)."""
    global _store
    if _store is None:
        _store = Store()
    return _store


def search_corpus(
    text: str,
    k: int = 5,
    mode: str = "hybrid",
    image_path: Path | None = None,
    sources: list[str] | None = None,
    store: Store | None = None,
) -> list[SearchHit]:
    """Search chunks by ``mode`` and, with ``image_path``, images by the image encoder.

    Raises:
        StoreInputError: empty text or an unknown mode.
        ModelNotAvailable: an image query without a trained image encoder.
    """
    store = store or get_store()
    filters = Filters(sources=sources)
    if mode not in {"hybrid", "vector", "text"}:
        raise StoreInputError(f"mode must be hybrid, vector or text, got {mode!r}")
    if mode == "text":
        hits = store.search_text(text, k, filters)
    else:
        vector = get_text_embedder().embed([text])[0]
        hits = store.search_vector(vector, k, "chunk", filters) if mode == "vector" else store.search_hybrid(
            text, vector, k, filters
        )
    if image_path is not None:
        hits += search_images_by_image(Path(image_path), k, store)
    return hits


def search_images_by_image(path: Path, k: int, store: Store) -> list[SearchHit]:
    """Nearest stored images to the image at ``path`` (needs a trained image encoder)."""
    from PIL import Image

    from ray_app.models.image_default import get_image_encoder

    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as im:
        vector = get_image_encoder().embed([im])[0]
    return store.search_vector(vector, k, "image")
