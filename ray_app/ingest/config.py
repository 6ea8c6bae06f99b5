"""The ingest job's configuration: every option of `prism ingest` and ``python -m ray_app.ingest``
with its default, in one place (kept free of Ray imports so the CLI can read the defaults cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ray_app.errors import InputError
from ray_app.ingest.chunking import ChunkConfig
from ray_app.models.text import check_backend


@dataclass
class IngestConfig:
    """Everything one ingest run needs; the driver resolves paths and the database URL once.

    Attributes:
        input_dir: folder of Parquet shards in Prism's document schema.
        address: Ray address ('auto', 'ray://...'); None starts a local Ray (or joins RAY_ADDRESS).
        embed_actors: text-embedding actors (each loads the model once).
        embed_threads: intra-op threads per actor (None: the node's CPU count / actors).
        embed_cpus: logical CPUs Ray reserves per embedding actor; threads are set separately, and
            leaving headroom lets Ray's file listing and read/write tasks schedule beside the actors.
        backend: 'onnx', 'onnx-int8', 'torch' or 'torch-bf16' (None: settings, fp32 run as bf16 where the
            CPU multiplies bf16 natively: :func:`ray_app.models.text.ingest_backend`).
        batch_docs: documents per ``map_batches`` batch.
        embed_batch_docs: documents per batch of the text-embedding stage. Bigger batches pad less
            (the embedder sorts a batch's texts by length); their output is still cut into blocks
            of ``block_bytes``, so write transactions stay small.
        block_bytes: Ray Data's target block size; a block is written in one transaction.
        chunk: chunk budget and overlap.
        image_encoder: open_clip checkpoint folder; None uses the default one when it exists.
        num_cpus: CPUs for a local Ray (None: all).
        rebuild_index: drop the HNSW and full-text indexes before loading and build them after; None
            decides by load size (when the input is at least as big as what the store holds).
        database_url: resolved on the driver when None.
        home: PRISM_HOME made absolute on the driver, so workers find the same model caches.
    """

    input_dir: Path
    address: str | None = None
    embed_actors: int = 1
    embed_threads: int | None = None
    embed_cpus: float = 0.5
    backend: str | None = None
    batch_docs: int = 128
    embed_batch_docs: int = 768
    block_bytes: int = 512 * 1024
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    image_encoder: Path | None = None
    num_cpus: int | None = None
    rebuild_index: bool | None = None
    database_url: str | None = None
    home: str | None = None

    def __post_init__(self) -> None:
        self.input_dir = Path(self.input_dir)
        if self.embed_actors < 1 or self.batch_docs < 1 or self.embed_batch_docs < 1:
            raise InputError("embed_actors, batch_docs and embed_batch_docs must be at least 1")
        if (self.embed_threads is not None and self.embed_threads < 1) or (self.num_cpus is not None and self.num_cpus < 1):
            raise InputError("embed_threads and num_cpus must be at least 1")
        if self.backend is not None:
            check_backend(self.backend)
