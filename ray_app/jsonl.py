"""JSON Lines, read and written in one place (training data, user corpora, benchmark heartbeats)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ray_app.errors import InputError, NotFound


def iter_jsonl(path: Path, on_error: Callable[[int, json.JSONDecodeError], None] | None = None,
               ) -> Iterator[tuple[int, object]]:
    """``(line number, value)`` for each non-blank line of ``path``.

    Args:
        path: the file.
        on_error: called with the line number and error for a line that is not JSON; without it
            such a line raises :class:`ray_app.errors.InputError`.
    """
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as exc:
                if on_error is None:
                    raise InputError(f"{path}:{line_no}: not JSON: {exc.msg}") from exc
                on_error(line_no, exc)


def read_jsonl(path: Path, limit: int | None = None) -> list:
    """The first ``limit`` (default: all) values of a JSONL file.

    Raises:
        NotFound: no such file.
        InputError: a line that is not JSON.
    """
    path = Path(path)
    if not path.exists():
        raise NotFound(f"no such file: {path}")
    rows = []
    for _, value in iter_jsonl(path):
        rows.append(value)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def write_jsonl(rows: Iterable, path: Path) -> Path:
    """Write one JSON value per line, atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def append_jsonl(row, path: Path) -> None:
    """Append one value as a line (logs and heartbeats that a reader may follow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
