"""`prism edge ask|search|serve --bundle DIR`: Prism from an edge bundle, with no Ray, no Postgres, no network.

    prism edge ask "What is this animal?" --image frog.png --bundle ./bundle-int4 --json
    prism edge search "frogs" --bundle ./bundle-int4 --json
    prism edge serve --bundle ./bundle-int4 --port 8080
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors

app = typer.Typer(help="Run Prism from an edge bundle (prism export edge).", no_args_is_help=True)
BUNDLE_OPTION = typer.Option(..., "--bundle", help="The bundle folder (prism export edge --out DIR).")
THREADS_OPTION = typer.Option(2, "--threads", help="Cores to use (every thread pool is bounded by it).")


def _read_image(path: Path | None) -> bytes | None:
    if path is None:
        return None
    if not path.is_file():
        raise CLIError(f"image not found: {path}")
    return path.read_bytes()


@app.command("ask")
@handle_errors
def ask(
    question: str = typer.Argument(..., help="The question."),
    image: Path | None = typer.Option(None, "--image", help="An image (PNG, JPEG, GIF, WebP) the question is about."),
    bundle: Path = BUNDLE_OPTION,
    k: int | None = typer.Option(None, "--k", help="Passages to retrieve (default: the bundle's)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Answer length limit (capped by the bundle)."),
    threads: int = THREADS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Answer QUESTION with numbered citations (the /v1/ask response with --json); streams the answer otherwise."""
    from edge.runtime import EdgeRuntime
    from ray_app.ask.service import check_question

    data = _read_image(image)
    check_question(question)
    runtime = EdgeRuntime(bundle, threads=threads)
    options = runtime.options(k, max_new_tokens)
    response = runtime.ask(question, data, options) if json_out else asyncio.run(_stream(runtime, question, data, options))
    if json_out:
        emit(response, True)
        return
    sys.stdout.write("\n")
    for c in response["citations"]:
        console.print(f"[{c['n']}] {c['title']}: {c['snippet'][:100]}")
    console.print(f"grounded: {response['audit']['grounded']}  flags: {', '.join(response['audit']['flags']) or '-'}")


async def _stream(runtime, question: str, image: bytes | None, options) -> dict:
    asyncio.get_running_loop().set_default_executor(runtime.executor())
    async for event in runtime.stream(question, image, options):
        if event.kind == "token":
            sys.stdout.write(event.data["text"])
            sys.stdout.flush()
        elif event.kind in ("done", "flagged"):  # flagged: the answer withheld by the injection defences
            return event.data
    raise RuntimeError("the ask pipeline ended without an answer")


@app.command("search")
@handle_errors
def search(
    text: str = typer.Argument(..., help="What to look for."),
    bundle: Path = BUNDLE_OPTION,
    image: Path | None = typer.Option(None, "--image", help="Also find stored images like this one."),
    k: int = typer.Option(5, "--k", help="Results to return."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid, vector or text."),
    sources: list[str] | None = typer.Option(None, "--source", help="Only this source (repeatable)."),
    threads: int = THREADS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Search the bundle's index (the /v1/search response with --json)."""
    from edge.runtime import EdgeRuntime

    runtime = EdgeRuntime(bundle, threads=threads)
    hits = runtime.search(text, k, mode, sources or None, _read_image(image))
    emit({"results": [h.to_dict() for h in hits]}, json_out,
         lambda r: [console.print(f"{h['score']:.3f} {h['title']}: {(h['text'] or '')[:90]}") for h in r["results"]])


@app.command("serve")
@handle_errors
def serve(
    bundle: Path = BUNDLE_OPTION,
    port: int = typer.Option(8080, "--port", help="Port on 127.0.0.1."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (a device serves itself: keep localhost)."),
    threads: int = THREADS_OPTION,
) -> None:
    """Serve /v1/search and /v1/ask (streaming) on localhost; PRISM_EDGE_KEY, when set, is required as a Bearer key."""
    from edge.runtime import EdgeRuntime
    from edge.server import serve as run

    runtime = EdgeRuntime(bundle, threads=threads)
    console.print(f"Prism edge on http://{host}:{port} ({runtime.manifest['variant']}, loaded in {runtime.load_s:.1f} s)")
    run(runtime, host, port)
