"""`prism demo`: bring the whole of Prism up on this machine and print the URL.

Steps, each skipped when its output already exists (so a second run takes seconds to minutes):

1. the embedded database (or DATABASE_URL's server): ``prism db up``;
2. the demo corpus (wiki + stamps + photos) as Parquet shards under ``$PRISM_HOME/data/demo-corpus``;
3. the image encoder (``prism train clip --config training/configs/clip/demo.yaml``) when no
   checkpoint exists;
4. the answer model's LoRA adapter: reused when ``PRISM_LLM_ADAPTER`` names one (``none``: the base model)
   or a trained one is under ``$PRISM_HOME/checkpoints``, else trained on Ray Train with the demo preset
   (``prism data sft --articles 400`` into ``data/sft-demo``, then ``prism train sft --config
   training/configs/smollm2/demo.yaml``);
5. the Ray Data ingest of the demo corpus (skipped when the shards and encoder are unchanged
   since the last ingest and the database still holds the documents);
6. the Serve application (``prism serve up --detach``, which serves the newest adapter and image encoder)
   unless it is already healthy;
7. an API key named ``demo`` (the previous demo key is revoked), printed with the URL.

Each step runs as ``prism`` subprocesses: each starts and stops its own Ray, and ``ray_app``
does not import ``training`` or ``serving``. Their output (Ray's worker logs, library warnings,
progress bars) goes to one log per step under ``$PRISM_HOME/logs/demo/``; the terminal shows one
line per step, and for a failed step the last lines of its log and the log's path.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.resources
import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import typer

from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors
from ray_app.cli.db import database_status
from ray_app.models.image_default import default_image_encoder_dir
from ray_app.settings import get_settings

DEMO_SOURCES = ("wiki", "stamps", "photos")
DEMO_SFT_ARTICLES = 400  # ~360 training examples; the demo preset (40 steps x 2 workers x 2) sees 160
LOG_TAIL_LINES = 20


class StepFailed(CLIError):
    """A command run by a demo step exited with an error; the details are in the step's log."""

    def __init__(self, command: str, exit_code: int, log_path: Path):
        super().__init__(f"`{command}` failed (exit {exit_code}); full log: {log_path}")
        self.exit_code = exit_code
        self.log_path = log_path


def demo_logs_dir() -> Path:
    return get_settings().logs_dir / "demo"


def clip_demo_config():
    """The demo preset of the image-encoder job, shipped as package data of ``training``."""
    return importlib.resources.files("training") / "configs" / "clip" / "demo.yaml"


def llm_demo_config():
    """The demo preset of the LLM SFT job (a LoRA adapter sized for the first run), package data of ``training``."""
    return importlib.resources.files("training") / "configs" / "smollm2" / "demo.yaml"


def run_logged(cmd: list[str], log_path: Path) -> tuple[int, list[str]]:
    """Run ``cmd``, appending its stdout and stderr to ``log_path`` as they arrive.

    Returns:
        The exit status and the lines the command wrote to stdout.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stdout_lines: list[str] = []
    lock = threading.Lock()
    with log_path.open("a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, errors="replace")

        def pump(stream: IO[str], keep: list[str] | None) -> None:
            for line in stream:
                with lock:
                    log.write(line)
                    log.flush()
                if keep is not None:
                    keep.append(line)

        readers = [threading.Thread(target=pump, args=(proc.stdout, stdout_lines), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, None), daemon=True)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        code = proc.wait()
        log.write(f"[exit {code}]\n")
    return code, stdout_lines


def run_prism(args: list[str], log_path: Path) -> dict:
    """Run ``prism ARGS`` in a subprocess logging to ``log_path``; return the JSON it printed (or ``{}``).

    Raises:
        StepFailed: the command exited with a non-zero status.
    """
    code, stdout = run_logged([sys.executable, "-m", "ray_app.cli", *args], log_path)
    if code != 0:
        raise StepFailed(f"prism {shlex.join(args)}", code, log_path)
    objects = [line for line in stdout if line.startswith("{")]
    return json.loads(objects[-1]) if objects else {}


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log (none when it does not exist)."""
    if not log_path.exists():
        return []
    with log_path.open(errors="replace") as fh:
        return [line.rstrip("\n") for line in collections.deque(fh, maxlen=lines)]


def run_step(name: str, label: str, step: Callable[[Path], tuple[Any, str]], quiet: bool = False) -> Any:
    """Run one demo step with its own log; print one line for it, or its log's tail when it fails.

    Args:
        name: the log's name (``$PRISM_HOME/logs/demo/NAME.log``, started afresh each run).
        label: what the terminal line calls the step.
        step: called with the log path; returns the step's result and a one-line summary.
        quiet: print nothing when the step succeeds.

    Returns:
        The step's result.
    """
    log_path = demo_logs_dir() / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    started = time.perf_counter()
    try:
        with contextlib.nullcontext() if quiet else console.status(f"{label} ..."):
            result, summary = step(log_path)
    except BaseException:
        seconds = time.perf_counter() - started
        console.print(f"[red]✗[/red] {label} failed after {seconds:.0f} s; the last lines of its log:")
        for line in log_tail(log_path):
            console.print(f"    {line}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  full log: {log_path}", markup=False, highlight=False, soft_wrap=True)
        raise
    if not quiet:
        console.print(f"[green]✓[/green] {label}: {summary} [dim]({time.perf_counter() - started:.1f} s)[/dim]",
                      soft_wrap=True)
    return result


def corpus_dir() -> Path:
    return get_settings().data_dir / "demo-corpus"


def start_database(log_path: Path) -> tuple[dict, str]:
    """Start the embedded server (or check DATABASE_URL's) and migrate; returns its status."""
    status = run_prism(["db", "up", "--json"], log_path)
    return status, (f"PostgreSQL {status['postgres']} + pgvector {status['pgvector']}, "
                    f"{status['documents']:,} documents")


def build_demo_corpus(log_path: Path) -> tuple[dict, str]:
    """Build each demo source whose shards are missing; returns documents per source built."""
    out, built = corpus_dir(), {}
    for source in DEMO_SOURCES:
        if any(out.glob(f"{source}-*.parquet")):
            continue
        built[source] = run_prism(["corpus", "build", source, "--out", str(out), "--json"], log_path)["documents"]
    if not built:
        return built, f"already built ({', '.join(DEMO_SOURCES)})"
    return built, "built " + ", ".join(f"{source} ({n:,} documents)" for source, n in built.items())


def ensure_image_encoder(log_path: Path) -> tuple[str, str]:
    """Train the demo image encoder when no checkpoint exists; returns 'trained' or 'reused'."""
    checkpoint = default_image_encoder_dir()
    if (checkpoint / "open_clip_config.json").exists():
        return "reused", f"reused {checkpoint}"
    with importlib.resources.as_file(clip_demo_config()) as config:
        run_prism(["train", "clip", "--config", str(config)], log_path)
    return "trained", f"trained (demo preset) -> {checkpoint}"


def ensure_answer_adapter(log_path: Path) -> tuple[dict, str]:
    """Train the demo LoRA adapter unless one is configured or already trained; returns what Serve will load."""
    from ray_app.models.llm import resolve_adapter

    settings = get_settings()
    adapter, source = resolve_adapter(settings)
    if adapter is not None or settings.llm_adapter is not None:
        return ({"adapter": adapter, "source": source, "action": "reused"},
                f"reused {adapter or 'the base model'} ({source})")
    data = settings.data_dir / "sft-demo"
    if not (data / "train.jsonl").exists():
        run_prism(["data", "sft", "--articles", str(DEMO_SFT_ARTICLES), "--out", str(data), "--json"], log_path)
    with importlib.resources.as_file(llm_demo_config()) as config:
        trained = run_prism(["train", "sft", "--config", str(config), f"data.train_path={data / 'train.jsonl'}"],
                            log_path)
    adapter, source = resolve_adapter(settings)
    summary = {"adapter": adapter, "source": source, "action": "trained",
               "train_steps": trained.get("step"), "train_loss": trained.get("loss"),
               "train_wall_s": trained.get("wall_seconds")}
    return summary, f"trained (demo preset) -> {adapter}"


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


def ensure_ingested(documents_in_db: int, log_path: Path) -> tuple[dict | None, str]:
    """Ingest the demo corpus unless the last ingest saw the same inputs; returns its summary or None."""
    marker = get_settings().data_dir / "demo-ingested.json"
    fingerprint = ingest_fingerprint()
    if documents_in_db > 0 and marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return None, "unchanged since the last ingest"
    summary = run_prism(["ingest", str(corpus_dir()), "--json"], log_path)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}))
    return summary, (f"{summary.get('documents', 0):,} documents, {summary.get('chunks', 0):,} chunks, "
                     f"{summary.get('images', 0):,} images")


def create_demo_key(log_path: Path) -> tuple[dict, str]:
    """A new API key named ``demo`` (earlier demo keys are revoked: one demo key at a time)."""
    from ray_app.auth.keys import create_key, list_keys, revoke_key
    from ray_app.store import get_store

    store = get_store()
    if any(k.name == "demo" and k.revoked_at is None for k in list_keys(store)):
        revoke_key(store, "demo")
    settings = get_settings()
    row, key = create_key(store, "demo", settings.key_default_rpm, settings.key_default_tokens_per_day)
    return {"id": row.id, "key": key}, f"key {row.id} ({row.rpm} requests/min, {row.tokens_per_day:,} tokens/day)"


def ensure_serving(log_path: Path) -> tuple[dict, str]:
    """Start the Serve app unless it is already up; returns ``{"url", "started", "versions"}`` (/healthz's)."""
    status = run_prism(["serve", "status", "--json"], log_path)
    started = not status.get("healthy")
    if started:
        run_prism(["serve", "up", "--detach", "--json"], log_path)
        status = run_prism(["serve", "status", "--json"], log_path)
    versions = status.get("versions") or {}
    served = (f"adapter {versions.get('adapter') or 'none'}, image encoder {versions.get('image_encoder') or 'none'}")
    return ({"url": status["url"], "started": started, "versions": versions},
            f"{'up' if started else 'already up'} at {status['url']} ({served})")


@handle_errors
def demo(
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the Serve app at the end."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the result, not a line per step."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Bring Prism up: database, demo corpus, image encoder, LoRA adapter, ingest, Serve app; print the URL.

    Each step's output goes to $PRISM_HOME/logs/demo/STEP.log; a failed step shows its last lines.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(name: str, label: str, step: Callable[[Path], tuple[Any, str]]) -> Any:
        t0 = time.perf_counter()
        out = run_step(name, label, step, quiet)
        timings[name] = round(time.perf_counter() - t0, 1)
        return out

    before = timed("database", "database", start_database)
    steps: dict = {"corpus_built": timed("corpus", "demo corpus", build_demo_corpus)}
    steps["image_encoder"] = timed("image_encoder", "image encoder", ensure_image_encoder)
    steps["answer_model"] = timed("answer_model", "answer model (LoRA)", ensure_answer_adapter)
    steps["ingest"] = timed("ingest", "ingest",
                            lambda log: ensure_ingested(before["documents"], log)) or "unchanged"
    result = {"database": database_status(), "steps": steps}
    if serve:
        result["serve"] = timed("serve", "Serve app", ensure_serving)
    if get_settings().auth == "on":
        result["api_key"] = timed("api_key", "API key", create_demo_key)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["step_seconds"] = timings
    result["logs"] = str(demo_logs_dir())

    def human(r: dict) -> None:
        s = r["database"]
        console.print(f"  documents {s['documents']:,}  chunks {s['chunks']:,}  images {s['images']:,}"
                      f"  ({r['seconds']:.0f} s; logs in {r['logs']})")
        if "serve" in r:
            console.print(f"[bold green]Prism is up at {r['serve']['url']}[/bold green]  (stop: prism serve down)")
        if "api_key" in r:
            console.print("  API key (the page asks for it once; send it as `Authorization: Bearer KEY`):")
            console.print(f"  {r['api_key']['key']}", markup=False, highlight=False, soft_wrap=True)

    emit(result, json_out, human)
