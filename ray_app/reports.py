"""Reports: every figure in ``docs/reports/`` is a JSON written by the command that measured it,
plus the Markdown rendered from that JSON.

    write_report(Path("docs/reports"), "retrieval", result, render_markdown, command="prism eval retrieval")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load averages, recorded with every benchmark."""
    return [round(x, 2) for x in os.getloadavg()]


def write_report(out_dir: Path, name: str, result: dict, render: Callable[[dict], str],
                 command: str | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` (``result``, plus ``command`` when given) and ``name.md`` (``render(result)``).

    Returns:
        The JSON and Markdown paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if command is not None:
        result = {**result, "command": command}
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    md_path.write_text(render(result))
    return json_path, md_path


def read_report(out_dir: Path, name: str) -> dict:
    """The JSON of an existing report (to re-render it without a new run)."""
    return json.loads((Path(out_dir) / f"{name}.json").read_text())
