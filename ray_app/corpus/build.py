"""Build a corpus: dispatch a SOURCE to its adapter and write Parquet shards in Prism's schema.

``prism corpus build wiki|stamps|photos|openclipart|emoji|synthetic|PATH [--docs N] [--out DIR]``.
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ray_app.corpus.schema import write_shards
from ray_app.errors import InputError, Unavailable
from ray_app.settings import get_settings

BUILTIN_SOURCES = ("wiki", "stamps", "photos", "openclipart", "emoji", "synthetic")


def default_out_dir(source: str) -> Path:
    """``$PRISM_HOME/data/corpus/<name>``; a user path uses its file or folder name."""
    name = source if source in BUILTIN_SOURCES else Path(source).stem or "user"
    return get_settings().data_dir / "corpus" / name


def _clear_shards(out_dir: Path, prefix: str) -> None:
    # A rebuild with fewer documents must not leave stale shards for ingest to pick up.
    for old in out_dir.glob(f"{prefix}-*.parquet"):
        old.unlink()


def _builtin_records(source: str, docs: int | None, every: int = 1) -> Iterator[dict]:
    try:
        module = importlib.import_module(f"ray_app.corpus.{source}")
    except ModuleNotFoundError as exc:
        if exc.name != f"ray_app.corpus.{source}":
            raise
        raise Unavailable(f"source {source!r} is not available in this installation") from exc
    return module.build_records(limit=docs, every=every) if every > 1 else module.build_records(limit=docs)


def _limited(records: Iterable[dict], docs: int | None) -> Iterator[dict]:
    return iter(records) if docs is None else itertools.islice(records, docs)


def build_corpus(
    source: str,
    out_dir: Path | None = None,
    docs: int | None = None,
    seed: int = 0,
    image_fraction: float = 0.0,
    workers: int | None = None,
    every: int = 1,
) -> dict:
    """Write the corpus of ``source`` as Parquet shards and return a summary.

    Args:
        source: 'wiki', 'stamps', 'photos', 'openclipart', 'emoji', 'synthetic', or a path to JSONL/Parquet/an image folder.
        out_dir: where the shards go (default :func:`default_out_dir`).
        docs: at most this many documents (synthetic: exactly this many; default 1,000).
        seed: synthetic only: the seed that fixes every document.
        image_fraction: synthetic only: share of documents that get a generated image.
        workers: synthetic only: parallel generator processes (default: CPU count).
        every: wiki only: keep every ``every``-th article (a deterministic subset).

    Returns:
        ``{"source", "out", "documents", "shards", "skipped", "seconds"}``; ``skipped`` counts bad rows by reason.

    Raises:
        InputError: ``docs`` below 1 or an unsupported input.
        NotFound: a user path that does not exist.
    """
    if every > 1 and source != "wiki":
        raise InputError("--every applies to the wiki source only")
    if docs is not None and docs < 1:
        raise InputError(f"--docs must be at least 1, got {docs}")
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(source)
    skipped: Counter = Counter()
    prefix = source if source in BUILTIN_SOURCES else "user"
    if source == "synthetic":
        from ray_app.corpus.synthetic import write_synthetic

        _clear_shards(out_dir, prefix)
        paths, count = write_synthetic(docs or 1000, out_dir, seed=seed, workers=workers, image_fraction=image_fraction)
    else:
        if source in BUILTIN_SOURCES:
            records = _builtin_records(source, docs, every)
        else:
            from ray_app.corpus.user import read_user_data

            records = read_user_data(Path(source), skipped)
        counted = _Counted(_limited(records, docs))
        tmp_dir = out_dir / ".building"
        _clear_shards(tmp_dir, prefix)
        paths = write_shards(counted, tmp_dir, prefix)
        _clear_shards(out_dir, prefix)
        paths = [p.replace(out_dir / p.name) for p in paths]
        tmp_dir.rmdir()
        count = counted.n
    return {
        "source": source,
        "out": str(out_dir),
        "documents": count,
        "shards": len(paths),
        "skipped": dict(sorted(skipped.items())),
        "seconds": round(time.perf_counter() - started, 3),
    }


class _Counted:
    """Iterate records and count them."""

    def __init__(self, records: Iterator[dict]):
        self.records, self.n = records, 0

    def __iter__(self) -> Iterator[dict]:
        for record in self.records:
            self.n += 1
            yield record
