"""Finished training runs under ``$PRISM_HOME/checkpoints``: which one Prism serves when none is configured."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

MODEL_SPEC_FILE = "prism_model.json"  # written by ray_app.llm.checkpoints.write_model_spec


def finished_runs(checkpoints_dir: str | Path, marker: str) -> list[Path]:
    """``<checkpoints_dir>/<run>/final`` folders that hold ``marker``, newest first (by the marker's mtime).

    A run writes ``final/`` last, so its marker's modification time is when the run finished.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [run / "final" for run in root.iterdir() if (run / "final" / marker).is_file()]
    return sorted(found, key=lambda f: ((f / marker).stat().st_mtime_ns, f.parent.name), reverse=True)


def newest_adapter(checkpoints_dir: str | Path, base_matches: Callable[[dict], bool]) -> Path | None:
    """The most recently finished LoRA adapter (``<run>/final`` with ``adapter_config.json``) for a base model.

    Args:
        checkpoints_dir: the folder holding the runs (``$PRISM_HOME/checkpoints``).
        base_matches: ``prism_model.json``'s contents -> whether the adapter was trained on the served base.
            Adapters of randomly initialised bases (tests' tiny models) never match.
    """
    for final in finished_runs(checkpoints_dir, "adapter_config.json"):
        try:
            spec = json.loads((final / MODEL_SPEC_FILE).read_text())
        except (OSError, ValueError):
            continue
        if spec.get("random_init") is None and base_matches(spec):
            return final
    return None
