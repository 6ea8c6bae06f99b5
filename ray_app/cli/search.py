"""`prism search`: hybrid, vector or full-text search over the ingested corpus."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from ray_app.ask.retrieval import search_corpus
from ray_app.cli.common import JSON_OPTION, CLIError, console, emit, handle_errors


class FairAttribute(StrEnum):
    gender = "gender"
    region = "region"
    era = "era"


class Mode(StrEnum):
    hybrid = "hybrid"
    vector = "vector"
    text = "text"


@handle_errors
def search(
    text: str = typer.Argument(..., help="What to look for."),
    image: Path | None = typer.Option(None, "--image", help="Also find images similar to this one."),
    k: int = typer.Option(5, "--k", min=1, max=100, help="Results per kind."),
    mode: Mode = typer.Option(Mode.hybrid, "--mode", help="Ranking: hybrid (RRF of vector + text), vector, text."),
    source: list[str] = typer.Option([], "--source", help="Only documents from this source (repeatable)."),
    fair_exposure: FairAttribute | None = typer.Option(
        None, "--fair-exposure", help="Re-rank the people among the results so that each group of this attribute "
                                      "(annotated from their biographies) gets exposure in proportion to the "
                                      "candidates (the bias audit's mitigation; off by default)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Search chunks (and images with --image) and print {"results": [...]}."""
    if not text.strip():
        raise CLIError("the search text is empty")
    results = search_corpus(text, k=k, mode=mode.value, image_path=image, sources=source or None,
                            fair_exposure=fair_exposure.value if fair_exposure else None)

    def human(obj: dict) -> None:
        for i, hit in enumerate(obj["results"], 1):
            body = (hit.get("text") or hit.get("caption") or "").replace("\n", " ")
            console.print(f"[bold]{i}. [{hit['kind']}] {hit['title']}[/bold] ({hit['score']:.3f})\n   {body[:160]}")

    emit({"results": [h.to_dict() for h in results]}, json_out, human)
