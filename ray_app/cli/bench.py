"""`prism bench ...`: benchmarks that print JSON and compare against a bare baseline in the same run."""

import typer

from ray_app.cli.common import mount

app = typer.Typer(help="Benchmarks that print JSON and compare against a bare baseline.", no_args_is_help=True)
mount(
    app,
    {
        "ingest": ("ray_app.benchmarks.ingest", "Ray Data ingest vs a bare embed loop and a bare COPY."),
        "embed": ("ray_app.benchmarks.embed", "INT8 vs fp32 text embedder: bare-loop texts/s and vector agreement."),
        "serve": ("ray_app.benchmarks.serve", "Locust against the Serve app, with Serve overhead vs bare uvicorn."),
        "clip": ("training.bench_clip", "Ray Train images/s vs a bare single-process loop."),
    },
)
