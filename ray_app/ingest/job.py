"""The Ray Data ingest job: Parquet documents -> chunks -> text and image embeddings -> pgvector.

    prism ingest DIR [--address auto] [--json]
    ray job submit --working-dir . -- python -m ray_app.ingest DIR [--address auto] [--json]

``read_parquet`` -> ``map_batches(PrepareDocuments)`` (validate, skip documents already complete,
chunk) -> ``map_batches(EmbedImages)`` -> ``map_batches(EmbedText)`` (MiniLM, loaded once per
actor) -> ``write_datasink(PgvectorDatasink)`` (``Store.write`` per block: binary COPY into staging
tables + ``INSERT ... ON CONFLICT``, one transaction). Then the HNSW indexes are (re)built.

A document travels as one row with all its chunks, so each document is written whole in one
transaction. Ids are deterministic and a document whose ``(id, content_hash)`` is already complete
is skipped: a run killed at any point and started again ends with exactly the rows of a clean run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from ray.data import ActorPoolStrategy, Datasink

from ray_app.corpus.user import IMAGE_FORMATS
from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError, NotFound
from ray_app.ingest.chunking import ChunkConfig
from ray_app.ingest.config import IngestConfig
from ray_app.models.image import to_rgb
from ray_app.models.text import embedder_key, ingest_backend
from ray_app.raystart import init_ray
from ray_app.settings import EMBED_BACKENDS, EMBED_DIM, get_settings

log = logging.getLogger(__name__)
PROG = "python -m ray_app.ingest"

PREPARED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("title", pa.string()),
        ("url", pa.string()),
        ("license", pa.string()),
        ("category", pa.string()),
        ("metadata", pa.string()),
        ("image", pa.string()),
        ("caption", pa.string()),
        ("content_hash", pa.string()),
        ("status", pa.string()),  # "write", "unchanged" or "skip:<reason>"
        ("chunks", pa.list_(pa.string())),
        ("busy_prepare", pa.float64()),  # this row's share of its batch's stage time (a profile)
    ]
)
IMAGE_FIELDS = [("image_sha256", pa.string()), ("image_width", pa.int32()), ("image_height", pa.int32()),
                ("image_embedding", pa.binary()), ("busy_images", pa.float64())]


def _append_fields(schema: pa.Schema, fields: Iterable[tuple[str, pa.DataType]]) -> pa.Schema:
    for name, dtype in fields:
        schema = schema.append(pa.field(name, dtype))
    return schema


IMAGED_SCHEMA = _append_fields(PREPARED_SCHEMA, IMAGE_FIELDS)
EMBEDDED_SCHEMA = _append_fields(IMAGED_SCHEMA, [("embeddings", pa.binary()), ("busy_embed", pa.float64())])


def _worker_env(home: str, database_url: str) -> None:
    """Point this worker's settings at the driver's PRISM_HOME and database."""
    os.environ["PRISM_HOME"] = home
    os.environ["DATABASE_URL"] = database_url
    get_settings.cache_clear()


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(type(value).__name__)
    return value


def pipeline_key(text_model: str, chunk: ChunkConfig, image_key: str) -> str:
    """What besides the content decides a document's rows; part of its content hash."""
    return f"{text_model}|{chunk.key()}|{image_key}"


# How stored pictures are read before embedding; part of each image row's identity, so that an ingest after a change
# re-embeds them. "on-white": transparency laid on white (ray_app.models.image.to_rgb); before, alpha was dropped.
IMAGE_READING = "on-white"


def image_encoder_key(folder: Path | None) -> str:
    """Identity of an image-encoder checkpoint (changes when it is retrained) and of how pictures are read for it
    (:data:`IMAGE_READING`); '' without one."""
    if folder is None:
        return ""
    from ray_app.models.image import WEIGHTS_NAME

    stat = (folder / WEIGHTS_NAME).stat()
    return f"{folder.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{IMAGE_READING}"


def check_document(row: dict, max_chars: int) -> tuple[dict, str | None]:
    """Normalise one input row; returns ``(row, skip_reason)`` with reason None for a good row."""
    try:
        clean = {k: _as_str(row.get(k)) for k in ("id", "source", "title", "text", "url", "license", "image", "caption")}
        metadata = json.loads(_as_str(row.get("metadata")) or "{}")
    except (TypeError, ValueError):
        return row, "wrong_type"
    if not isinstance(metadata, dict) or not clean["id"] or not clean["source"]:
        return row, "wrong_type"
    text = (clean["text"] or "").strip()
    if len(text) > max_chars:
        return row, "too_long"
    if not text and not (clean["image"] and (clean["caption"] or "").strip()):
        return row, "no_text"
    clean["text"], clean["metadata"] = text, metadata
    clean["title"] = (clean["title"] or "").strip() or (clean["caption"] or text)[:80].strip() or clean["id"]
    return clean, None


class PrepareDocuments:
    """Validate rows, drop documents already complete in the store, and chunk the rest.

    Args:
        home, database_url: the driver's PRISM_HOME and database.
        chunk: chunk budget and overlap.
        image_key: identity of the image encoder (see :func:`image_encoder_key`).
        backend: the text-embedding backend (None: settings); INT8 vectors have their own identity.
    """

    def __init__(self, home: str, database_url: str, chunk: ChunkConfig, image_key: str,
                 backend: str | None = None):
        _worker_env(home, database_url)
        from ray_app.ingest.chunking import Chunker
        from ray_app.store import Store

        self.settings = get_settings()
        self.store = Store(database_url, settings=self.settings)
        self.chunker = Chunker(chunk)
        text_key = embedder_key(self.settings.text_model, backend or self.settings.embed_backend)
        self.key = pipeline_key(text_key, chunk, "")
        self.image_key = pipeline_key(text_key, chunk, image_key)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        rows = [check_document(r, self.settings.max_text_chars) for r in batch.to_pylist()]
        out = []
        for row, reason in rows:
            if reason is None:
                from ray_app.store import content_hash

                key = self.image_key if row["image"] else self.key
                meta = json.dumps(row["metadata"], sort_keys=True)
                row["content_hash"] = content_hash(row["title"], row["text"], row["url"], row["license"],
                                                   row["image"], row["caption"], meta, key)
            out.append(self._output(row, reason))
        done = self.store.document_hashes([r["id"] for r in out if r["status"] == "write"])
        to_chunk = []
        for r in out:
            if r["status"] == "write" and done.get(r["id"]) == r["content_hash"]:
                r["status"] = "unchanged"
            elif r["status"] == "write":
                to_chunk.append(r)
        for r, chunks in zip(to_chunk, self.chunker.chunk_many([r.pop("_text") for r in to_chunk]), strict=True):
            r["chunks"] = chunks
        share = (time.perf_counter() - started) / max(len(out), 1)
        for r in out:
            r.pop("_text", None)
            r["busy_prepare"] = share
        return pa.Table.from_pylist(out, schema=PREPARED_SCHEMA)

    @staticmethod
    def _output(row: dict, reason: str | None) -> dict:
        if reason is not None:
            raw_id = row.get("id") if isinstance(row.get("id"), str) else None
            return {"id": raw_id, "status": f"skip:{reason}", "chunks": []}
        meta = row["metadata"]
        return {
            "id": row["id"], "source": row["source"], "title": row["title"], "url": row["url"],
            "license": row["license"], "category": meta.get("category") if isinstance(meta.get("category"), str) else None,
            "metadata": json.dumps(meta, sort_keys=True, ensure_ascii=False), "image": row["image"],
            "caption": row["caption"], "content_hash": row["content_hash"], "status": "write", "chunks": [],
            "_text": row["text"] or (row["caption"] or ""),
        }


class EmbedImages:
    """Read, hash and (with a checkpoint) embed the images of documents being written.

    A document whose image is missing or does not decode is skipped (``skip:bad_image``).

    Args:
        home, database_url: the driver's PRISM_HOME and database.
        encoder_dir: open_clip checkpoint folder, or None to store images without embeddings.
        threads: torch threads for the encoder.
    """

    def __init__(self, home: str, database_url: str, encoder_dir: str | None, threads: int | None):
        _worker_env(home, database_url)
        self.settings = get_settings()
        self.encoder_dir, self.threads = encoder_dir, threads
        self._encoder = None

    def _load_encoder(self):
        if self._encoder is None and self.encoder_dir is not None:
            from ray_app.models.image import ImageEncoder

            self._encoder = ImageEncoder(self.encoder_dir, threads=self.threads)
            if self._encoder.dim != EMBED_DIM:
                raise InputError(f"image encoder {self.encoder_dir} gives {self._encoder.dim}-d vectors, need {EMBED_DIM}")
        return self._encoder

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        rows = batch.to_pylist()
        picked, images = [], []
        for i, row in enumerate(rows):
            row.update(image_sha256=None, image_width=None, image_height=None, image_embedding=None)
            if row["status"] != "write" or not row["image"]:
                continue
            image = self._read(row)
            if image is None:
                row.update(status="skip:bad_image", chunks=[])
            else:
                picked.append(i)
                images.append(image)
        encoder = self._load_encoder() if images else None
        if encoder is not None:
            vectors = encoder.embed(images)
            for i, vector in zip(picked, vectors, strict=True):
                rows[i]["image_embedding"] = vector.astype(np.float32).tobytes()
        for r in rows:
            r["busy_images"] = (time.perf_counter() - started) / max(len(rows), 1)
        return pa.Table.from_pylist(rows, schema=IMAGED_SCHEMA)

    def _read(self, row: dict):
        from PIL import Image

        path = Path(row["image"])
        try:
            data = path.read_bytes()
            if len(data) > self.settings.max_image_bytes:
                return None
            from io import BytesIO

            image = Image.open(BytesIO(data), formats=sorted(IMAGE_FORMATS))  # allow-listed, as at corpus build
            if image.width * image.height > self.settings.max_image_pixels:
                return None
            image.load()
        except Exception:  # missing file or bytes PIL cannot decode: the row is skipped and counted
            return None
        row.update(image_sha256=hashlib.sha256(data).hexdigest(), image_width=image.width, image_height=image.height)
        return to_rgb(image)  # transparency on white, as the encoder was trained and uploads are read


class EmbedText:
    """Embed every chunk as "Title: text" with MiniLM; the model loads once per actor.

    Args:
        home, database_url: the driver's PRISM_HOME and database.
        backend: 'onnx', 'onnx-int8', 'torch' or 'torch-bf16' (None: settings).
        threads: intra-op threads (None: this node's CPUs divided by ``actors``).
        actors: how many embed actors share a node (for the thread default).
    """

    def __init__(self, home: str, database_url: str, backend: str | None, threads: int | None, actors: int):
        _worker_env(home, database_url)
        from ray_app.models.text import TextEmbedder

        threads = threads or max(1, (os.cpu_count() or 1) // actors)
        # No spinning: the actor shares the cores with the prepare and write stages, PostgreSQL and
        # Ray itself, and spinning threads take CPU from them while the whole op waits for a
        # preempted thread (measured on 3,000 documents: 28.8 ms per chunk without, 30.8 with).
        self.embedder = TextEmbedder(backend=backend, threads=threads, spin=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        rows = batch.to_pylist()
        texts = [f"{r['title']}: {c}" for r in rows for c in (r["chunks"] or [])]
        vectors = self.embedder.embed(texts) if texts else np.zeros((0, EMBED_DIM), np.float32)
        pos = 0
        for r in rows:
            n = len(r["chunks"] or [])
            r["embeddings"] = vectors[pos : pos + n].tobytes() if r["status"] == "write" else None
            pos += n
        share = (time.perf_counter() - started) / max(len(rows), 1)
        for r in rows:
            r["busy_embed"] = share
        return pa.Table.from_pylist(rows, schema=EMBEDDED_SCHEMA)


def rows_for_store(rows: list[dict]):
    """Turn embedded rows into the store's document, chunk and image rows (status 'write' only)."""
    from ray_app.store import ChunkRow, DocumentRow, ImageRow, stable_id

    documents, chunks, images = [], [], []
    for r in rows:
        if r["status"] != "write":
            continue
        texts = r["chunks"] or []
        vectors = np.frombuffer(r["embeddings"] or b"", dtype=np.float32).reshape(len(texts), EMBED_DIM)
        documents.append(DocumentRow(r["id"], r["source"], r["title"], r["content_hash"], len(texts), r["url"],
                                     r["license"], r["category"], json.loads(r["metadata"] or "{}")))
        chunks += [ChunkRow(r["id"], i, t, v) for i, (t, v) in enumerate(zip(texts, vectors, strict=True))]
        if r["image"]:
            embedding = np.frombuffer(r["image_embedding"], dtype=np.float32) if r["image_embedding"] else None
            images.append(ImageRow(stable_id(r["id"], "image"), r["id"], r["caption"], r["image"], embedding,
                                   r["image_sha256"], r["image_width"], r["image_height"]))
    return documents, chunks, images


_stores: dict[str, Any] = {}


def _store_for(home: str, database_url: str):
    """One store (connection pool) per worker process and database."""
    if database_url not in _stores:
        from ray_app.store import Store

        _worker_env(home, database_url)
        _stores[database_url] = Store(database_url, settings=get_settings())
    return _stores[database_url]


class PgvectorDatasink(Datasink):
    """A Ray Data ``Datasink`` writing each block with ``Store.write`` (one transaction per block).

    ``write`` returns counters per task; ``on_write_complete`` (on the driver) sums them in ``totals``.
    """

    def __init__(self, home: str, database_url: str, rows_per_write: int = 512):
        self.home, self.database_url, self.rows_per_write = home, database_url, rows_per_write
        self.totals: Counter = Counter()

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_write

    def write(self, blocks, ctx) -> dict:
        store = _store_for(self.home, self.database_url)
        stats: Counter = Counter()
        for block in blocks:
            rows = block.to_pylist() if isinstance(block, pa.Table) else pa.Table.from_pandas(block).to_pylist()
            documents, chunks, images = rows_for_store(rows)
            started = time.perf_counter()
            if documents or images:
                store.write(documents, chunks, images)
            stats["write_seconds"] += time.perf_counter() - started
            stats["written"] += len(documents)
            stats["chunks"] += len(chunks)
            stats["images"] += len(images)
            stats["images_embedded"] += sum(i.embedding is not None for i in images)
            for r in rows:
                if r["status"] != "write":
                    stats[r["status"]] += 1
                for stage in ("prepare", "images", "embed"):
                    stats[f"busy_{stage}"] += r.get(f"busy_{stage}") or 0.0
        return dict(stats)

    def on_write_complete(self, write_result) -> None:
        for stats in write_result.write_returns:
            self.totals.update(stats)


def ingest_inline(records: list[dict], database_url: str | None = None, chunk: ChunkConfig | None = None,
                  image_encoder: Path | None = None) -> dict:
    """Run the same stages in this process, without Ray (small corpora: tests, quick fixtures).

    Returns:
        The sink's counters (``written``, ``chunks``, ``images``, ``unchanged``, ``skip:<reason>``...).
    """
    from ray_app.corpus.schema import SCHEMA
    from ray_app.store import resolve_url

    settings = get_settings()
    url = database_url or resolve_url(settings)
    home = str(settings.home.resolve())
    table = pa.Table.from_pylist(records, schema=SCHEMA)
    encoder = str(image_encoder) if image_encoder else None
    key = image_encoder_key(Path(encoder) if encoder else None)
    table = PrepareDocuments(home, url, chunk or ChunkConfig(), key)(table)
    table = EmbedImages(home, url, encoder, None)(table)
    table = EmbedText(home, url, None, None, 1)(table)
    sink = PgvectorDatasink(home, url)
    sink.totals.update(sink.write([table], None))
    return dict(sink.totals)


def _resolve(config: IngestConfig) -> tuple[str, str, str | None]:
    from ray_app.models.image import CONFIG_NAME, WEIGHTS_NAME
    from ray_app.models.image_default import default_image_encoder_dir
    from ray_app.store import resolve_url

    settings = get_settings()
    url = config.database_url or resolve_url(settings)
    home = config.home or str(settings.home.resolve())
    encoder = config.image_encoder
    if encoder is not None and not (Path(encoder) / CONFIG_NAME).exists():
        raise NotFound(f"no image encoder at {encoder} ({CONFIG_NAME} missing)")
    if encoder is None:
        default = default_image_encoder_dir()
        encoder = default if (default / CONFIG_NAME).exists() and (default / WEIGHTS_NAME).exists() else None
    return url, home, (str(Path(encoder).resolve()) if encoder is not None else None)


def build_dataset(config: IngestConfig, url: str, home: str, encoder: str | None, has_images: bool = True):
    """The lazy Ray Data pipeline from Parquet to embedded rows (not yet written).

    Without images in the input the image stage is left out (no actor to start).
    """
    import ray

    # Small blocks keep the pipeline streaming: Ray Data otherwise coalesces a whole Parquet file
    # into one block, and nothing is written until every document of that file is embedded.
    context = ray.data.DataContext.get_current()
    context.target_max_block_size = config.block_bytes
    # The V2 Parquet reader adds a ListFiles task that always asks for 1 whole CPU: on nodes of
    # 1 CPU whose actors already hold a fraction each, it never schedules and the job hangs. The
    # classic reader honours ``num_cpus`` below.
    context.use_datasource_v2 = False
    ds = ray.data.read_parquet(str(config.input_dir), file_extensions=["parquet"], num_cpus=0.25)
    ds = ds.map_batches(
        PrepareDocuments, fn_constructor_kwargs={"home": home, "database_url": url, "chunk": config.chunk,
                                                 "image_key": image_encoder_key(Path(encoder) if encoder else None),
                                                 "backend": config.backend},
        batch_size=config.batch_docs, batch_format="pyarrow", compute=ActorPoolStrategy(size=1), num_cpus=0.25,
    )
    ds = ds if not has_images else ds.map_batches(
        EmbedImages, fn_constructor_kwargs={"home": home, "database_url": url, "encoder_dir": encoder,
                                            "threads": config.embed_threads},
        batch_size=config.batch_docs, batch_format="pyarrow", compute=ActorPoolStrategy(size=1), num_cpus=0.25,
    )
    return ds.map_batches(
        EmbedText, fn_constructor_kwargs={"home": home, "database_url": url, "backend": config.backend,
                                          "threads": config.embed_threads, "actors": config.embed_actors},
        batch_size=config.embed_batch_docs, batch_format="pyarrow", compute=ActorPoolStrategy(size=config.embed_actors),
        num_cpus=config.embed_cpus,
    )


def scan_input(input_dir: Path) -> tuple[int, bool]:
    """Rows in the input shards and whether any has an image, from Parquet metadata only.

    Raises:
        NotFound: no such folder, or no shards in it.
    """
    import pyarrow.parquet as pq

    if not input_dir.exists():
        raise NotFound(f"no such folder: {input_dir}")
    files = sorted(input_dir.rglob("*.parquet")) if input_dir.is_dir() else [input_dir]
    if not files:
        raise NotFound(f"no Parquet shards under {input_dir} (run `prism corpus build ...` first)")
    rows, has_images = 0, False
    for file in files:
        meta = pq.ParquetFile(file).metadata
        rows += meta.num_rows
        column = meta.schema.names.index("image") if "image" in meta.schema.names else None
        for g in range(meta.num_row_groups) if column is not None and not has_images else ():
            stats = meta.row_group(g).column(column).statistics
            group_rows = meta.row_group(g).num_rows
            has_images = has_images or stats is None or not stats.has_null_count or stats.null_count < group_rows
    return rows, has_images


def run_ingest(input_dir: Path, address: str | None = None, **options: Any) -> dict:
    """Run the ingest job and return its summary.

    Args:
        input_dir: folder of Parquet shards (``prism corpus build`` output).
        address: Ray address; None starts a local Ray (or joins RAY_ADDRESS).
        **options: further :class:`IngestConfig` fields.

    Returns:
        ``{"documents", "chunks", "images", "seconds", "docs_per_s", "embed_per_s", "write_rows_per_s",
        "skipped", ...}``: documents = input documents now complete in the store (``written`` this run +
        ``unchanged``), chunks and images written this run, ``skipped`` bad rows (by reason in
        ``skipped_reasons``), rates over the run's wall time (writes: over time spent in ``Store.write``).

    Raises:
        NotFound: no input shards, or a missing ``--image-encoder``.
        StoreError: no database.
    """
    import ray

    from ray_app.store import Store

    config = IngestConfig(input_dir=Path(input_dir), address=address, **options)
    config.backend = ingest_backend(config.backend)  # bf16 where this machine multiplies it natively
    started = time.perf_counter()
    n_input, has_images = scan_input(config.input_dir)
    url, home, encoder = _resolve(config)
    with Store(url) as store:
        before = store.counts()
        rebuild = config.rebuild_index if config.rebuild_index is not None else n_input >= before["documents"]
        if rebuild:
            store.drop_bulk_indexes()
    owns_ray = init_ray(config.address, config.num_cpus, log_to_driver=True)
    try:
        sink = PgvectorDatasink(home, url)
        build_dataset(config, url, home, encoder, has_images).write_datasink(sink, ray_remote_args={"num_cpus": 0.25})
        totals = sink.totals
    finally:
        if owns_ray:
            ray.shutdown()
    load_seconds = time.perf_counter() - started
    with Store(url) as store:
        index_started = time.perf_counter()
        store.build_indexes()
        index_seconds = time.perf_counter() - index_started
        after = store.counts()
    return summarise(totals, load_seconds, index_seconds, after, encoder) | {"backend": config.backend}


def summarise(totals: Counter, load_seconds: float, index_seconds: float, store_counts: dict,
              encoder: str | None) -> dict:
    """The ``--json`` summary from the sink's counters."""
    skipped = {k.removeprefix("skip:"): int(v) for k, v in sorted(totals.items()) if k.startswith("skip:")}
    written, unchanged = int(totals["written"]), int(totals["unchanged"])
    chunks, images = int(totals["chunks"]), int(totals["images"])
    seconds = load_seconds + index_seconds
    write_rows = written + chunks + images
    return {
        "documents": written + unchanged,
        "chunks": chunks,
        "images": images,
        "seconds": round(seconds, 3),
        "docs_per_s": round((written + unchanged) / max(load_seconds, 1e-9), 2),
        "embed_per_s": round(chunks / max(load_seconds, 1e-9), 2),
        "write_rows_per_s": round(write_rows / max(totals["write_seconds"], 1e-9), 2) if write_rows else 0.0,
        "skipped": sum(skipped.values()),
        "skipped_reasons": skipped,
        "written": written,
        "unchanged": unchanged,
        "images_embedded": int(totals["images_embedded"]),
        "images_without_embedding": images - int(totals["images_embedded"]),
        "image_encoder": encoder,
        "load_seconds": round(load_seconds, 3),
        "index_build_s": round(index_seconds, 3),
        "stage_busy_s": {"prepare": round(totals["busy_prepare"], 2), "images": round(totals["busy_images"], 2),
                         "embed": round(totals["busy_embed"], 2), "write": round(totals["write_seconds"], 2)},
        "store": store_counts,
    }


def describe(summary: dict) -> str:
    """The summary in a few readable lines (what the job prints without ``--json``)."""
    s = summary
    lines = [f"ingested {s['documents']:,} documents ({s['written']:,} written, {s['unchanged']:,} unchanged), "
             f"{s['chunks']:,} chunks, {s['images']:,} images in {s['seconds']:.1f}s "
             f"({s['docs_per_s']:.1f} docs/s, {s['embed_per_s']:.1f} chunks/s)"]
    if s["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in s["skipped_reasons"].items()))
    if s["images_without_embedding"]:
        lines.append(f"{s['images_without_embedding']} images stored without embeddings (no image encoder)")
    return "\n".join(lines)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`IngestConfig`'s (or :class:`ChunkConfig`'s)."""
    d = IngestConfig
    p = job_parser(prog, __doc__)
    p.add_argument("input_dir", type=Path, metavar="DIR", help="Folder of Parquet shards (from `prism corpus build`).")
    p.add_argument("--address", default=d.address, help="Ray address ('auto' joins a running cluster).")
    p.add_argument("--embed-actors", type=int_at_least(1), default=d.embed_actors, metavar="N",
                   help="Text-embedding actors.")
    p.add_argument("--threads", dest="embed_threads", type=int_at_least(1), default=d.embed_threads, metavar="N",
                   help="Threads per embedding actor (default: the node's CPUs / actors).")
    p.add_argument("--backend", choices=EMBED_BACKENDS, default=d.backend,
                   help="Embedding backend: onnx, onnx-int8 (about 2x faster on CPU; query with the same "
                   "PRISM_EMBED_BACKEND), torch or torch-bf16 (fp32's vectors within a cosine of 0.9999). Default: "
                   "PRISM_EMBED_BACKEND, with fp32 run as torch-bf16 where the CPU multiplies bf16 natively.")
    p.add_argument("--batch-docs", type=int_at_least(1), default=d.batch_docs, metavar="N",
                   help="Documents per map_batches batch.")
    p.add_argument("--embed-batch-docs", type=int_at_least(1), default=d.embed_batch_docs, metavar="N",
                   help="Documents per text-embedding batch (bigger pads less).")
    p.add_argument("--chunk-tokens", type=int_at_least(8), default=ChunkConfig.max_tokens, metavar="N",
                   help="Token budget per chunk.")
    p.add_argument("--overlap-tokens", type=int_at_least(0), default=ChunkConfig.overlap_tokens, metavar="N",
                   help="Token overlap between chunks (below --chunk-tokens).")
    p.add_argument("--image-encoder", type=Path, default=d.image_encoder, metavar="DIR",
                   help="open_clip checkpoint folder (default: the demo encoder, when it exists).")
    p.add_argument("--num-cpus", type=int_at_least(1), default=d.num_cpus, metavar="N",
                   help="CPUs for a local Ray (default: all).")
    p.add_argument("--rebuild-index", dest="rebuild_index", action="store_const", const=True, default=d.rebuild_index,
                   help="Drop the HNSW and full-text indexes and build them after the load (default: when bulk loading).")
    p.add_argument("--keep-index", dest="rebuild_index", action="store_const", const=False,
                   help="Keep the indexes during the load.")
    return p


def ingest_from_args(args: dict) -> dict:
    """:func:`run_ingest` with the parsed arguments.

    Raises:
        InputError: an overlap not below the chunk budget.
    """
    chunk_tokens, overlap_tokens = args.pop("chunk_tokens"), args.pop("overlap_tokens")
    if overlap_tokens >= chunk_tokens:
        raise InputError(f"--overlap-tokens ({overlap_tokens}) must be below --chunk-tokens ({chunk_tokens})")
    return run_ingest(chunk=ChunkConfig(chunk_tokens, overlap_tokens), **args)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism ingest DIR [...]`` / ``python -m ray_app.ingest DIR [...]`` (what ``ray job submit`` runs):
    prints and returns the summary."""
    return run_job(build_parser(prog or PROG), argv, ingest_from_args, describe)


if __name__ == "__main__":
    main()
