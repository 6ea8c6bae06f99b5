"""`prism bench ingest|embed|serve|llm|edge|demo|precision|clip|chaos|explain`: benchmarks that compare against a bare baseline in the same run.

``ingest``, ``embed``, ``serve`` and ``llm`` are their jobs' ``main(argv)`` (:mod:`ray_app.benchmarks`): each
job owns its options and ``--help``, and ``python -m ray_app.benchmarks.<job>`` takes the same ones.
"""

from __future__ import annotations

import typer

from ray_app.cli.common import job_command, mount

app = typer.Typer(help="Benchmarks that print JSON and compare against a bare baseline.", no_args_is_help=True)

job_command(app, "ingest", "ray_app.benchmarks.ingest",
            "Pipeline throughput vs a bare embed loop and a bare COPY; HNSW build, recall@10, latency.")
job_command(app, "embed", "ray_app.benchmarks.embed",
            "INT8 vs fp32 MiniLM: texts/s of bare loops on the same chunks, and how close the vectors are.")
job_command(app, "serve", "ray_app.benchmarks.serve",
            "Load-test the app with Locust and measure Serve's overhead; print (and optionally write) the report.")
job_command(app, "llm", "ray_app.benchmarks.llm",
            "The fusion LLM in each precision on the same prompts: TTFT, answers/s at batch 1/4/16, agreement.")
job_command(app, "edge", "edge.bench",
            "The edge bundle per variant on 2 cores and 1: cold start, TTFT/total p50/p95, decode tok/s vs bandwidth, RSS.")
job_command(app, "lexical", "ray_app.benchmarks.lexical",
            "The BM25 index at the store's size and replicated to 1M chunks: build time, memory, query p50/p95.")
job_command(app, "chaos", "serving.chaos",
            "Kill a fusion, rag and ingress replica, restart Postgres and redeploy under load: requests lost, "
            "5xx, recovery time, audit completeness.")
job_command(app, "explain", "ray_app.benchmarks.explain",
            "What explain: true costs: passage attribution per answer and saliency maps per image, and whether they "
            "point at the gold passage / the object's corner.")
job_command(app, "demo", "ray_app.benchmarks.demo",
            "Time `prism demo` on a fresh PRISM_HOME and again (reused); report what it serves.")
job_command(app, "precision", "training.bench_precision",
            "bf16 vs fp32 on this CPU: matmul GFLOP/s and seconds per LoRA SFT step of SmolLM2.")
mount(app, {"clip": ("training.bench_clip_cli", "Ray Train images/s vs a bare single-process loop.")})
