"""`prism data sft|dpo`: build the LLM fine-tuning data from the wiki corpus (JSONL under $PRISM_HOME/data)."""

from __future__ import annotations

from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, CLIError, emit, handle_errors
from ray_app.jsonl import read_jsonl, write_jsonl

app = typer.Typer(help="Build SFT and DPO data for the answer LLM.", no_args_is_help=True)


def default_dir(name: str) -> Path:
    from ray_app.settings import get_settings

    return get_settings().data_dir / name


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise CLIError(f"{path} not found: run `prism data sft` first")
    return read_jsonl(path)


@app.command()
@handle_errors
def sft(
    articles: int = typer.Option(1600, min=4, help="Wiki articles sampled (one example each)."),
    k: int = typer.Option(3, min=2, max=8, help="Passages per example."),
    test_fraction: float = typer.Option(0.1, min=0.0, max=0.9, help="Share of articles held out for evaluation."),
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(None, help="Output folder (default $PRISM_HOME/data/sft)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Question + retrieved passages + a cited reference answer; split by article into train/test."""
    from ray_app.corpus.wiki import load_wiki_records
    from ray_app.llm.data import build_sft_examples, summarise

    out = out or default_dir("sft")
    train, test = build_sft_examples(load_wiki_records(), articles, k, test_fraction, seed)
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    emit(
        {
            "train": str(out / "train.jsonl"),
            "test": str(out / "test.jsonl"),
            "n_train": len(train),
            "n_test": len(test),
            "kinds_train": summarise(train),
            "kinds_test": summarise(test),
            "shared_articles": len({e["article"] for e in train} & {e["article"] for e in test}),
        },
        as_json,
    )


HELDOUT_PATH = Path("datasets/answers-heldout/questions.jsonl")


@app.command()
@handle_errors
def heldout(
    n: int = typer.Option(420, min=1, help="Questions (one per held-out article)."),
    k: int = typer.Option(3, min=2, max=8, help="Passages per question."),
    test_fraction: float = typer.Option(0.1, min=0.01, max=0.9,
                                        help="The SFT split's held-out share: only its articles are used."),
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(HELDOUT_PATH, help="Output JSONL (`prism eval answers` reads this one by default)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Evaluation questions from articles no SFT/DPO training set contains (datasets/answers-heldout)."""
    from ray_app.corpus.wiki import load_wiki_records
    from ray_app.llm.data import build_heldout_examples, summarise

    rows = build_heldout_examples(load_wiki_records(), n, k, test_fraction, seed)
    write_jsonl(rows, out)
    emit({"out": str(out), "n": len(rows), "kinds": summarise(rows), "test_fraction": test_fraction, "seed": seed},
         as_json)


@app.command()
@handle_errors
def dpo(
    sft_dir: Path = typer.Option(None, help="Folder with the SFT train.jsonl (default $PRISM_HOME/data/sft)."),
    per_example: int = typer.Option(1, min=1, max=3, help="Rejected answers per SFT example."),
    seed: int = typer.Option(0, help="Sampling seed."),
    out: Path = typer.Option(None, help="Output folder (default $PRISM_HOME/data/dpo)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Preference pairs: chosen = grounded and cited; rejected = hallucinated, uncited or injection-following."""
    from ray_app.llm.data import build_dpo_pairs, summarise

    sft_dir = sft_dir or default_dir("sft")
    out = out or default_dir("dpo")
    train = build_dpo_pairs(read_rows(sft_dir / "train.jsonl"), seed, per_example)
    test = build_dpo_pairs(read_rows(sft_dir / "test.jsonl"), seed, per_example) if (sft_dir / "test.jsonl").exists() else []
    write_jsonl(train, out / "train.jsonl")
    write_jsonl(test, out / "test.jsonl")
    emit(
        {
            "train": str(out / "train.jsonl"),
            "test": str(out / "test.jsonl"),
            "n_train": len(train),
            "n_test": len(test),
            "rejected_kinds": summarise(train, "rejected_kind"),
        },
        as_json,
    )
