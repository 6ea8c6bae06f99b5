"""Prism's document schema and the Parquet shard writer every source shares.

A record: ``id`` (deterministic from source + key), ``source``, ``title``, ``text``, ``url``,
``license``, ``image`` (path or None), ``caption`` (or None), ``metadata`` (a JSON string).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ray_app.store.rows import stable_id

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("url", pa.string()),
        ("license", pa.string()),
        ("image", pa.string()),
        ("caption", pa.string()),
        ("metadata", pa.string()),
    ]
)
COLUMNS = [f.name for f in SCHEMA]


def make_record(
    source: str,
    key: str,
    title: str,
    text: str,
    url: str | None = None,
    license: str | None = None,
    image: str | None = None,
    caption: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one record; the id is ``stable_id(source, key)`` so rebuilding gives the same ids."""
    return {
        "id": stable_id(source, key),
        "source": source,
        "title": title,
        "text": text,
        "url": url,
        "license": license,
        "image": image,
        "caption": caption,
        "metadata": json.dumps(metadata or {}, ensure_ascii=False, sort_keys=True),
    }


def batched(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_shards(records: Iterable[dict], out_dir: Path, prefix: str, shard_rows: int = 50_000) -> list[Path]:
    """Write records as ``{prefix}-00000.parquet``, ... under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, batch in enumerate(batched(records, shard_rows)):
        path = out_dir / f"{prefix}-{i:05d}.parquet"
        table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in batch], schema=SCHEMA)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        paths.append(path)
    return paths
