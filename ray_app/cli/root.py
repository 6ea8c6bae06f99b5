"""The `prism` command line, assembled (Typer). `--json` on any command prints one JSON object and nothing else.

Command groups live one module each; groups that belong to `training`, `serving` and `edge`
are mounted by import path, so `ray_app` itself never imports those packages at module level.
A job with its own ``main(argv)`` (``prism ingest``) is mounted as a command that forwards its arguments.
"""

from __future__ import annotations

import os
import sys

# Quiet third-party chatter before anything heavy is imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import typer  # noqa: E402

from ray_app.cli import db, demo, search  # noqa: E402
from ray_app.cli.common import job_command, mount, setup_logging  # noqa: E402

app = typer.Typer(
    name="prism",
    help="Prism: a multimodal learning assistant on Ray (vision + RAG over pgvector + an LLM + audit).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr.")) -> None:
    setup_logging(verbose)


app.add_typer(db.app, name="db")
app.command("search")(search.search)
app.command("demo")(demo.demo)

# Groups filled by their own modules; each module defines `app` (a typer.Typer). Only groups that exist.
_GROUPS = {
    "corpus": ("ray_app.cli.corpus", "Build corpora (wiki, stamps, photos, synthetic, your files) as Parquet shards."),
    "ask": ("ray_app.cli.ask", "Ask a question (optionally about an image) and get a cited answer."),
    "data": ("ray_app.cli.data", "Build SFT and DPO training data from the corpus."),
    "eval": ("ray_app.cli.eval", "Evaluate retrieval, the image encoder and answers; write docs/reports."),
    "bench": ("ray_app.cli.bench", "Benchmarks that print JSON and compare against a bare baseline."),
    "audit": ("ray_app.cli.audit", "Inspect and verify the tamper-evident audit log."),
    "rai": ("ray_app.cli.rai", "Responsible AI: the bias audit, fairness metrics and the generated RAI report."),
    "keys": ("ray_app.cli.keys", "Create, list and revoke API keys for the HTTP API."),
    "train": ("training.cli", "Ray Train jobs: image encoder (clip), LLM SFT and DPO."),
    "tune": ("training.tune_cli", "Ray Tune sweeps."),
    "serve": ("serving.cli", "Run the Ray Serve application (HTTP API + web page)."),
    "export": ("edge.cli", "Export Prism for other runtimes: an offline edge bundle (ONNX, INT8/INT4, index), a TensorRT-LLM checkpoint, a TensorRT Edge-LLM ONNX export."),
    "edge": ("edge.runtime_cli", "Run Prism from an edge bundle: no Ray, no Postgres, no network."),
}

# Jobs mounted as one command each; the module (imported when the command runs) has `main(argv, prog)`.
_JOBS = {
    "ingest": ("ray_app.ingest.job", "Embed a corpus with Ray Data and load it into pgvector."),
}

mount(app, _GROUPS)
for _name, (_module, _help) in _JOBS.items():
    job_command(app, _name, _module, _help)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point; ``argv`` defaults to ``sys.argv[1:]``."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="prism")


if __name__ == "__main__":
    main()
