"""`prism ingest DIR [--address auto] [--json]`: run the Ray Data ingest job (see ``ray_app/ingest.py``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors


@contextlib.contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """Send everything written to file descriptor 1 (Ray's logs and progress included) to stderr."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@handle_errors
def command(
    input_dir: Path = typer.Argument(..., help="Folder of Parquet shards (from `prism corpus build`)."),
    address: str | None = typer.Option(None, "--address", help="Ray address ('auto' joins a running cluster)."),
    embed_actors: int = typer.Option(1, "--embed-actors", min=1, help="Text-embedding actors."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per embedding actor."),
    backend: str | None = typer.Option(None, "--backend", help="Embedding backend: onnx (default), onnx-int8 (about 2x faster on CPU; "
                                         "query with the same PRISM_EMBED_BACKEND) or torch."),
    batch_docs: int = typer.Option(128, "--batch-docs", min=1, help="Documents per map_batches batch."),
    embed_batch_docs: int = typer.Option(768, "--embed-batch-docs", min=1,
                                         help="Documents per text-embedding batch (bigger pads less)."),
    chunk_tokens: int = typer.Option(200, "--chunk-tokens", min=8, help="Token budget per chunk."),
    overlap_tokens: int = typer.Option(32, "--overlap-tokens", min=0, help="Token overlap between chunks."),
    image_encoder: Path | None = typer.Option(None, "--image-encoder", help="open_clip checkpoint folder."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=1, help="CPUs for a local Ray."),
    rebuild_index: bool | None = typer.Option(
        None, "--rebuild-index/--keep-index",
        help="Drop the HNSW and full-text indexes and build them after the load (default: when bulk loading)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Chunk, embed and load a corpus into pgvector with Ray Data; idempotent and resumable."""
    from ray_app.ingest.chunking import ChunkConfig
    from ray_app.ingest.job import run_ingest

    if not input_dir.exists():
        raise FileNotFoundError(f"no such folder: {input_dir}")
    with stdout_to_stderr(json_out):
        summary = run_ingest(
            input_dir, address, embed_actors=embed_actors, embed_threads=threads, backend=backend,
            batch_docs=batch_docs, embed_batch_docs=embed_batch_docs, chunk=ChunkConfig(chunk_tokens, overlap_tokens),
            image_encoder=image_encoder, num_cpus=num_cpus, rebuild_index=rebuild_index,
        )

    def human(s: dict) -> None:
        console.print(
            f"[green]ingested[/green] {s['documents']:,} documents ({s['written']:,} written, {s['unchanged']:,} "
            f"unchanged), {s['chunks']:,} chunks, {s['images']:,} images in {s['seconds']:.1f}s "
            f"({s['docs_per_s']:.1f} docs/s, {s['embed_per_s']:.1f} chunks/s)"
        )
        if s["skipped"]:
            console.print("skipped: " + ", ".join(f"{k} {v}" for k, v in s["skipped_reasons"].items()))
        if s["images_without_embedding"]:
            console.print(f"{s['images_without_embedding']} images stored without embeddings (no image encoder)")

    emit(summary, json_out, human)
