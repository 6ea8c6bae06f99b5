"""`prism demo`: bring the whole of Prism up on this machine and print the URL.

Steps, each skipped when its output already exists (so a second run takes seconds to minutes):

1. the embedded database (or DATABASE_URL's server);
2. the demo corpus (wiki + stamps + photos) as Parquet shards under ``$PRISM_HOME/data/demo-corpus``;
3. the image encoder (``prism train clip --config training/configs/clip/demo.yaml``) when no
   checkpoint exists;
4. the Ray Data ingest of the demo corpus (skipped when the shards and encoder are unchanged
   since the last ingest and the database still holds the documents);
5. the Serve application (``prism serve up --detach``) unless it is already healthy.

Heavy steps run as ``prism`` subprocesses: each starts and stops its own Ray, and ``ray_app``
does not import ``training`` or ``serving``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors
from ray_app.cli.db import database_status
from ray_app.models.image_default import default_image_encoder_dir
from ray_app.settings import get_settings
from ray_app.store.embedded import start_embedded

REPO = Path(__file__).resolve().parents[2]
DEMO_SOURCES = ("wiki", "stamps", "photos")
CLIP_DEMO_CONFIG = REPO / "training" / "configs" / "clip" / "demo.yaml"


def run_prism(args: list[str], quiet: bool) -> dict:
    """Run ``prism ARGS --json`` in a subprocess; return its JSON, or raise with its last error line."""
    cmd = [sys.executable, "-m", "ray_app.cli", *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None, text=True)
    if proc.returncode != 0:
        raise CLIError(f"`prism {' '.join(args)}` failed (exit {proc.returncode})")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def corpus_dir() -> Path:
    return get_settings().data_dir / "demo-corpus"


def build_demo_corpus(quiet: bool) -> dict:
    """Build each demo source whose shards are missing; returns documents per source."""
    out, built = corpus_dir(), {}
    for source in DEMO_SOURCES:
        if any(out.glob(f"{source}-*.parquet")):
            continue
        console.print(f"building the {source} corpus ...")
        built[source] = run_prism(["corpus", "build", source, "--out", str(out), "--json"], quiet)["documents"]
    return built


def ensure_image_encoder(quiet: bool) -> str:
    """Train the demo image encoder when no checkpoint exists; returns 'trained' or 'reused'."""
    if (default_image_encoder_dir() / "open_clip_config.json").exists():
        return "reused"
    console.print("training the image encoder (demo preset, about 10 minutes on 2 cores) ...")
    run_prism(["train", "clip", "--config", str(CLIP_DEMO_CONFIG)], quiet)
    return "trained"


def ingest_fingerprint() -> str:
    """Names, sizes and mtimes of the shards plus the encoder checkpoint: what an ingest depends on."""
    h = hashlib.sha256()
    for path in sorted(corpus_dir().glob("*.parquet")):
        stat = path.stat()
        h.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    weights = default_image_encoder_dir() / "open_clip_model.safetensors"
    if weights.exists():
        h.update(f"encoder:{weights.stat().st_mtime_ns}".encode())
    return h.hexdigest()


def ensure_ingested(documents_in_db: int, quiet: bool) -> dict | None:
    """Ingest the demo corpus unless the last ingest saw the same inputs; returns its summary or None."""
    marker = get_settings().data_dir / "demo-ingested.json"
    fingerprint = ingest_fingerprint()
    if documents_in_db > 0 and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return None
    console.print("ingesting the demo corpus with Ray Data ...")
    summary = run_prism(["ingest", str(corpus_dir()), "--json"], quiet)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}))
    return summary


def ensure_serving(quiet: bool) -> dict:
    """Start the Serve app unless it is already up; returns ``{"url", ...}``."""
    status = run_prism(["serve", "status", "--json"], quiet=True)
    if status.get("healthy"):
        return {"url": status["url"], "started": False}
    console.print("starting the Serve application ...")
    up = run_prism(["serve", "up", "--detach", "--json"], quiet)
    return {"url": up["url"], "started": True}


@handle_errors
def demo(
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the Serve app at the end."),
    quiet: bool = typer.Option(False, "--quiet", help="Hide the steps' own progress output."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Bring Prism up: database, demo corpus, image encoder, ingest, Serve app; print the URL."""
    started = time.perf_counter()
    settings = get_settings()
    if not settings.database_url:
        start_embedded(settings.pg_dir)
    before = database_status()
    timings: dict[str, float] = {"database": round(time.perf_counter() - started, 1)}

    def timed(name: str, step, *args):
        t0 = time.perf_counter()
        out = step(*args)
        timings[name] = round(time.perf_counter() - t0, 1)
        return out

    steps: dict = {"corpus_built": timed("corpus", build_demo_corpus, quiet or json_out)}
    steps["image_encoder"] = timed("image_encoder", ensure_image_encoder, quiet or json_out)
    steps["ingest"] = timed("ingest", ensure_ingested, before["documents"], quiet or json_out) or "unchanged"
    status = database_status()
    result = {"database": status, "steps": steps}
    if serve:
        result["serve"] = timed("serve", ensure_serving, quiet or json_out)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["step_seconds"] = timings

    def human(r: dict) -> None:
        s = r["database"]
        console.print(f"[green]Prism database ready[/green]: PostgreSQL {s['postgres']} + pgvector {s['pgvector']}")
        console.print(f"  documents {s['documents']:,}  chunks {s['chunks']:,}  images {s['images']:,}")
        console.print(f"  image encoder: {r['steps']['image_encoder']}; ingest: "
                      f"{'unchanged' if r['steps']['ingest'] == 'unchanged' else 'ran'}")
        if "serve" in r:
            console.print(f"[bold green]Prism is up at {r['serve']['url']}[/bold green]  (stop: prism serve down)")
        console.print(f"  ({r['seconds']:.0f} s)")

    emit(result, json_out, human)
