"""`prism ask`: answer a question (optionally about an image) from the corpus, with citations.

    prism ask "What is this animal and where does it live?" --image frog.png
    prism ask "Where do frogs live?" --json
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from ray_app.answer import AskInputError, AskOptions, AskPipeline, check_question
from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors
from ray_app.vision import ImageRejected, load_image


@handle_errors
def command(
    question: str = typer.Argument(..., help="The question."),
    image: Path | None = typer.Option(None, "--image", help="An image (PNG, JPEG, GIF, WebP) the question is about."),
    k: int = typer.Option(5, "--k", help="Passages to retrieve (1-20)."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Answer length limit (capped by settings)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Answer QUESTION with numbered citations; streams the answer unless --json."""
    data = _read_image(image) if image is not None else None
    try:  # check the input before loading any model
        check_question(question)
        if data is not None:
            load_image(data)
    except (AskInputError, ImageRejected) as exc:
        raise CLIError(str(exc)) from exc
    pipeline = AskPipeline()
    try:
        events = pipeline.ask_stream(question, data, AskOptions(k=k, max_new_tokens=max_new_tokens))
        response = None
        for event in events:
            if event["event"] == "token" and not json_out:
                sys.stdout.write(event["text"])
                sys.stdout.flush()
            elif event["event"] == "done":
                response = event["response"]
    except (AskInputError, ImageRejected) as exc:
        raise CLIError(str(exc)) from exc
    if json_out:
        emit(response, True)
    else:
        sys.stdout.write("\n")
        _print_sources(response)


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
