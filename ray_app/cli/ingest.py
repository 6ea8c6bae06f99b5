"""`prism ingest DIR [--address auto] [--json]`: the Ray Data ingest job (:mod:`ray_app.ingest.job`).

The options' defaults are the job's own (:class:`~ray_app.ingest.config.IngestConfig`,
:class:`~ray_app.ingest.chunking.ChunkConfig`); ``python -m ray_app.ingest`` takes the same options.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.ingest.chunking import ChunkConfig
from ray_app.ingest.config import IngestConfig


@handle_errors
def command(
    input_dir: Path = typer.Argument(..., help="Folder of Parquet shards (from `prism corpus build`)."),
    address: str | None = typer.Option(IngestConfig.address, "--address",
                                       help="Ray address ('auto' joins a running cluster)."),
    embed_actors: int = typer.Option(IngestConfig.embed_actors, "--embed-actors", min=1, help="Text-embedding actors."),
    threads: int | None = typer.Option(IngestConfig.embed_threads, "--threads", min=1,
                                       help="Threads per embedding actor."),
    backend: str | None = typer.Option(IngestConfig.backend, "--backend",
                                       help="Embedding backend: onnx (default), onnx-int8 (about 2x faster on CPU; "
                                       "query with the same PRISM_EMBED_BACKEND) or torch."),
    batch_docs: int = typer.Option(IngestConfig.batch_docs, "--batch-docs", min=1,
                                   help="Documents per map_batches batch."),
    embed_batch_docs: int = typer.Option(IngestConfig.embed_batch_docs, "--embed-batch-docs", min=1,
                                         help="Documents per text-embedding batch (bigger pads less)."),
    chunk_tokens: int = typer.Option(ChunkConfig.max_tokens, "--chunk-tokens", min=8, help="Token budget per chunk."),
    overlap_tokens: int = typer.Option(ChunkConfig.overlap_tokens, "--overlap-tokens", min=0,
                                       help="Token overlap between chunks."),
    image_encoder: Path | None = typer.Option(IngestConfig.image_encoder, "--image-encoder",
                                              help="open_clip checkpoint folder."),
    num_cpus: int | None = typer.Option(IngestConfig.num_cpus, "--num-cpus", min=1, help="CPUs for a local Ray."),
    rebuild_index: bool | None = typer.Option(
        IngestConfig.rebuild_index, "--rebuild-index/--keep-index",
        help="Drop the HNSW and full-text indexes and build them after the load (default: when bulk loading)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Chunk, embed and load a corpus into pgvector with Ray Data; idempotent and resumable."""
    from ray_app.ingest.job import describe, run_ingest, stdout_to_stderr

    with stdout_to_stderr(json_out):
        summary = run_ingest(
            input_dir, address, embed_actors=embed_actors, embed_threads=threads, backend=backend,
            batch_docs=batch_docs, embed_batch_docs=embed_batch_docs, chunk=ChunkConfig(chunk_tokens, overlap_tokens),
            image_encoder=image_encoder, num_cpus=num_cpus, rebuild_index=rebuild_index,
        )
    emit(summary, json_out, lambda s: console.print(describe(s), highlight=False))
