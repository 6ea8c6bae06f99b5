"""`prism bench ingest|embed|serve|clip`: benchmarks that compare against a bare baseline in the same run.

Each command builds its job's config (:mod:`ray_app.benchmarks`; the defaults are the config's) and
calls the job; ``python -m ray_app.benchmarks.<job>`` runs the same job without the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ray_app.benchmarks.embed import EmbedBenchConfig
from ray_app.benchmarks.ingest import IngestBenchConfig
from ray_app.benchmarks.serve import ServeBenchConfig
from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors, mount

app = typer.Typer(help="Benchmarks that print JSON and compare against a bare baseline.", no_args_is_help=True)


def _print_json(result: dict) -> None:
    console.print_json(json.dumps(result, default=str))


@app.command("ingest")
@handle_errors
def ingest(
    docs: int = typer.Option(IngestBenchConfig.docs, "--docs", min=1, help="Synthetic documents to ingest."),
    seed: int = typer.Option(IngestBenchConfig.seed, "--seed", help="Synthetic corpus seed."),
    threads: int | None = typer.Option(IngestBenchConfig.threads, "--threads", min=1,
                                       help="Embedding threads (pipeline and bare)."),
    backend: str | None = typer.Option(IngestBenchConfig.backend, "--backend",
                                       help="Embedding backend (pipeline, bare loop and queries): onnx, onnx-int8 "
                                       "or torch (default: PRISM_EMBED_BACKEND, onnx)."),
    bare_sample: int = typer.Option(IngestBenchConfig.bare_sample, "--bare-sample", min=100,
                                    help="Texts/rows for the bare baselines."),
    queries: int = typer.Option(IngestBenchConfig.queries, "--queries", min=10, max=2000,
                                help="Held-out queries for recall/latency."),
    workdir: Path | None = typer.Option(IngestBenchConfig.workdir, "--workdir",
                                        help="Where the corpus shards go (default: a temp dir; with --resume: "
                                        "$PRISM_HOME/bench/ingest-<N>)."),
    resume: bool = typer.Option(IngestBenchConfig.resume, "--resume",
                                help="Keep and reuse the corpus and database of an earlier, killed run in --workdir "
                                "and continue it (for multi-hour runs)."),
    out: Path = typer.Option(IngestBenchConfig.out, "--out", help="Where ingest-<N>.{json,md} are written."),
    write: bool = typer.Option(IngestBenchConfig.write, "--write/--no-write", help="Write the report files."),
    progress: bool = typer.Option(False, "--progress", help="Only print where a --resume run of this --docs stands "
                                  "(documents stored, recent rate, ETA) from its heartbeats; runs nothing."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Pipeline throughput vs a bare embed loop and a bare COPY; HNSW build, recall@10, latency."""
    from ray_app.benchmarks.ingest import bench_ingest, run_progress
    from ray_app.ingest.job import stdout_to_stderr

    config = IngestBenchConfig(docs, seed, threads, backend, bare_sample, queries, workdir, resume, out, write)
    if progress:
        emit(run_progress(config), json_out, _print_json)
        return
    with stdout_to_stderr(json_out):
        result = bench_ingest(config)
    emit(result, json_out, _print_json)


@app.command("embed")
@handle_errors
def embed(
    docs: int = typer.Option(EmbedBenchConfig.docs, "--docs", min=1, help="Synthetic documents whose chunks are embedded."),
    seed: int = typer.Option(EmbedBenchConfig.seed, "--seed", help="Synthetic corpus seed."),
    threads: int | None = typer.Option(EmbedBenchConfig.threads, "--threads", min=1,
                                       help="Threads per backend (default: all CPUs)."),
    out: Path = typer.Option(EmbedBenchConfig.out, "--out", help="Where embed-int8.{json,md} are written."),
    write: bool = typer.Option(EmbedBenchConfig.write, "--write/--no-write", help="Write the report files."),
    json_out: bool = JSON_OPTION,
) -> None:
    """INT8 vs fp32 MiniLM: texts/s of bare loops on the same chunks, and how close the vectors are."""
    from ray_app.benchmarks.embed import bench_embed

    emit(bench_embed(EmbedBenchConfig(docs, seed, threads, out, write)), json_out, _print_json)


@app.command("serve")
@handle_errors
def serve(
    users: int = typer.Option(ServeBenchConfig.users, "--users", help="Concurrent simulated users (1-5000)."),
    duration: int = typer.Option(ServeBenchConfig.duration, "--duration", help="Seconds of load (5-3600)."),
    url: str = typer.Option(ServeBenchConfig.url, "--url", help="The Prism app under test."),
    spawn_rate: float = typer.Option(ServeBenchConfig.spawn_rate, "--spawn-rate", help="Users started per second."),
    overhead_requests: int = typer.Option(ServeBenchConfig.overhead_requests, "--overhead-requests",
                                          help="Requests per no-op server (0: skip)."),
    profile: bool = typer.Option(ServeBenchConfig.profile, "--profile/--no-profile",
                                 help="After the load, time the fusion LLM's prefill and decode steps in-process on "
                                 "the load mix's prompts (needs the app's database)."),
    out: Path | None = typer.Option(ServeBenchConfig.out, "--out",
                                    help="Write OUT.json and OUT.md (e.g. docs/reports/serve-100users)."),
    locustfile: Path = typer.Option(ServeBenchConfig.locustfile, "--locustfile",
                                    help="The Locust file; its request mix is load_mix.json beside it."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Load-test the app with Locust and measure Serve's overhead; print (and optionally write) the report."""
    from ray_app.benchmarks.serve import bench_serve, render_markdown

    config = ServeBenchConfig(users, duration, url, spawn_rate, overhead_requests, profile, out, locustfile)
    emit(bench_serve(config), json_out, lambda r: console.print(render_markdown(r)))


mount(app, {"clip": ("training.bench_clip_cli", "Ray Train images/s vs a bare single-process loop.")})
