"""`prism eval retrieval|image-encoder|answers`: the evaluation jobs, which write docs/reports/*.{json,md}.

Each command builds its job's config (:mod:`ray_app.evaluation`; the defaults are the config's) and
calls the job; ``python -m ray_app.evaluation.<job>`` runs the same job without the CLI.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ray_app.cli.common import JSON_OPTION, console, emit, handle_errors
from ray_app.evaluation.answers import AnswersEvalConfig
from ray_app.evaluation.image_encoder import ImageEncoderEvalConfig
from ray_app.evaluation.retrieval import RetrievalEvalConfig

app = typer.Typer(help="Evaluate retrieval, the image encoder and answers; write docs/reports.", no_args_is_help=True)


@app.command("retrieval")
@handle_errors
def retrieval(
    queries: int | None = typer.Option(RetrievalEvalConfig.queries, "--queries", min=1,
                                       help="Evaluate a spread of N queries (default all)."),
    depth: int | None = typer.Option(RetrievalEvalConfig.depth, "--depth", min=1,
                                     help="Candidates per list fused by hybrid search."),
    out: Path = typer.Option(RetrievalEvalConfig.out, "--out", help="Where retrieval.{json,md} are written."),
    write: bool = typer.Option(RetrievalEvalConfig.write, "--write/--no-write", help="Write the report files."),
    corpus_command: str | None = typer.Option(RetrievalEvalConfig.corpus_command, "--corpus-command",
                                              help="How the corpus was built (for the report)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Retrieval R@1/R@10/MRR/nDCG@10 for vector, text and hybrid search on the ingested wiki corpus."""
    from ray_app.evaluation.retrieval import describe, eval_retrieval

    result = eval_retrieval(RetrievalEvalConfig(queries, depth, out, write, corpus_command))
    emit(result, json_out, lambda r: console.print(describe(r), highlight=False))


@app.command("image-encoder")
@handle_errors
def image_encoder(
    checkpoint: Path | None = typer.Option(ImageEncoderEvalConfig.checkpoint, "--checkpoint",
                                           help="Checkpoint folder (default: the demo encoder under PRISM_HOME)."),
    out: Path = typer.Option(ImageEncoderEvalConfig.out, "--out", help="Where image-encoder.{json,md} go."),
    curve: list[Path] = typer.Option(None, "--curve",
                                     help="Earlier checkpoints of the run, for a learning curve (repeatable)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Held-out caption<->image recall and zero-shot accuracy, untrained baseline vs trained."""
    from ray_app.evaluation.image_encoder import eval_image_encoder, render_markdown

    report = eval_image_encoder(ImageEncoderEvalConfig(checkpoint, out, curve or []))
    emit(report, json_out, lambda r: console.print(render_markdown(r)))


@app.command("answers")
@handle_errors
def answers(
    methods: str = typer.Option(AnswersEvalConfig.methods, "--methods",
                                help="Comma-separated subset of base,lora,full,lora_dpo."),
    n: int = typer.Option(AnswersEvalConfig.n, "--n", min=1, help="Held-out questions (stratified by kind)."),
    max_new_tokens: int = typer.Option(AnswersEvalConfig.max_new_tokens, "--max-new-tokens", min=8, max=512,
                                       help="Generation limit per answer."),
    batch_size: int = typer.Option(AnswersEvalConfig.batch_size, "--batch-size", min=1, help="Answers decoded together."),
    seed: int = typer.Option(AnswersEvalConfig.seed, "--seed", help="Question sampling seed."),
    test_path: Path | None = typer.Option(AnswersEvalConfig.test_path, "--test-path",
                                          help="SFT test JSONL (default $PRISM_HOME/data/sft/test.jsonl)."),
    runs_dir: Path | None = typer.Option(AnswersEvalConfig.runs_dir, "--runs-dir",
                                         help="Checkpoints dir holding smollm2-lora, smollm2-full, smollm2-lora-dpo."),
    out: Path = typer.Option(AnswersEvalConfig.out, "--out", help="Report path without extension."),
    reuse: bool = typer.Option(AnswersEvalConfig.reuse, "--reuse/--no-reuse",
                               help="Reuse a method's cached answers when nothing changed."),
    checkpoint: list[str] = typer.Option(None, "--checkpoint", help="METHOD=DIR: evaluate this checkpoint for METHOD."),
    note: list[str] = typer.Option(None, "--note", help="A line for the report's notes (e.g. the machine's load)."),
    skip_missing: bool = typer.Option(AnswersEvalConfig.skip_missing, "--skip-missing",
                                      help="Report a method without a checkpoint as not evaluated."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Evaluate the fine-tuned answer models (citations, grounding, ROUGE-L, injection); write the report."""
    from ray_app.evaluation.answers import eval_answers, parse_checkpoints, summarise

    config = AnswersEvalConfig(methods, n, max_new_tokens, batch_size, seed, test_path, runs_dir, out, reuse,
                               parse_checkpoints(checkpoint or []), list(note or []), skip_missing)
    emit(summarise(eval_answers(config), out), json_out)
