"""`prism ask`: answer a question (optionally about an image) from the corpus, with citations.

    prism ask "What is this animal and where does it live?" --image frog.png
    prism ask "Where do frogs live?" --json
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer

from ray_app.ask.service import AskOptions, AskService, check_question
from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors
from ray_app.vision.analyzer import load_image


@handle_errors
def command(
    question: str = typer.Argument(..., help="The question."),
    image: Path | None = typer.Option(None, "--image", help="An image (PNG, JPEG, GIF, WebP) the question is about."),
    k: int = typer.Option(5, "--k", help="Passages to retrieve (1-20)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Answer length limit (capped by settings)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Answer QUESTION with numbered citations; streams the answer unless --json."""
    from ray_app.ask.stages import local_service

    data = _read_image(image) if image is not None else None
    check_question(question)  # check the input before loading any model
    if data is not None:
        load_image(data)
    service = local_service()
    response = asyncio.run(_run(service, question, data, AskOptions(k=k, max_new_tokens=max_new_tokens), json_out))
    if json_out:
        emit(response, True)
    else:
        sys.stdout.write("\n")
        if response.get("withheld"):  # the injection defences stopped it: say so instead of what streamed
            console.print(f"[bold red]withheld:[/] {response['answer']}")
        _print_sources(response)


async def _run(service: AskService, question: str, image: bytes | None, options: AskOptions, quiet: bool) -> dict:
    """Print the answer's pieces as they arrive (unless ``quiet``); return the final response."""
    async for event in service.stream(question, image, options):
        if event.kind == "token" and not quiet:
            sys.stdout.write(event.data["text"])
            sys.stdout.flush()
        elif event.kind in ("done", "flagged"):  # flagged: the answer withheld (``withheld``)
            return event.data
    raise RuntimeError("the ask pipeline ended without an answer")


def _read_image(path: Path) -> bytes:
    if not path.is_file():
        raise CLIError(f"image not found: {path}")
    return path.read_bytes()


def _print_sources(response: dict) -> None:
    vision = response.get("vision") or {}
    if vision.get("labels"):
        console.print("labels: " + ", ".join(f"{x['label']} ({x['score']:.2f})" for x in vision["labels"]))
    for c in response["citations"]:
        how = " (attributed)" if c.get("attributed") else ""
        console.print(f"[{c['n']}] {c['title']}{how}: {c['snippet'][:100]}")
    audit = response["audit"]
    console.print(f"grounded: {audit['grounded']}  flags: {', '.join(audit['flags']) or '-'}  audit id: {audit['audit_id']}")
