"""`prism corpus build SOURCE [--docs N] [--out DIR] [--json]`: write a corpus as Parquet shards."""

from __future__ import annotations

from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors

app = typer.Typer(help="Build corpora (wiki, stamps, photos, openclipart, emoji, synthetic, your files) as Parquet shards.",
                  no_args_is_help=True)


@app.command("build")
@handle_errors
def build(
    source: str = typer.Argument(..., help="wiki, stamps, photos, openclipart, emoji, synthetic, or a JSONL/Parquet file or image folder."),
    docs: int | None = typer.Option(None, "--docs", min=1, help="At most N documents (synthetic: exactly N)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default $PRISM_HOME/data/corpus/SOURCE)."),
    seed: int = typer.Option(0, "--seed", help="synthetic: the seed that fixes every document."),
    images: float = typer.Option(0.0, "--images", min=0.0, max=1.0, help="synthetic: share of documents with an image."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="synthetic: generator processes."),
    every: int = typer.Option(1, "--every", min=1, help="wiki: keep every K-th article (deterministic subset)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Build SOURCE into Parquet shards in Prism's document schema; bad rows are counted, not fatal."""
    from ray_app.corpus.build import build_corpus

    summary = build_corpus(source, out, docs, seed=seed, image_fraction=images, workers=workers,
                           every=every)

    def human(s: dict) -> None:
        console.print(f"[green]{s['documents']:,} documents[/green] from {s['source']} -> {s['out']} "
                      f"({s['shards']} shards, {s['seconds']:.1f}s)")
        if s["skipped"]:
            console.print("skipped: " + ", ".join(f"{k} {v}" for k, v in s["skipped"].items()))

    emit(summary, json_out, human)
