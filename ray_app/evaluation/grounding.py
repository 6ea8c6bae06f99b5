"""`prism eval grounding`: how far the audit's ``grounded: true`` can be trusted, against hand labels.

    prism eval grounding --json            # docs/reports/grounding-check.{json,md}
    python -m ray_app.evaluation.grounding --json

The sample is ``datasets/grounding/answers.jsonl``: real answers of Prism's answer models with the
passages they were shown, each labelled by hand (the card, ``datasets/grounding/README.md``, has the
labelling guide). The sample is split in two halves by a fixed hash of the question id (every
answer to one question in the same half): the checker's rules were tuned on the ``tune`` half and
the report's top-level ``precision_grounded`` / ``recall_grounded`` are the final checker
(:data:`ray_app.audit.grounding.DEFAULT_RULES`) on the ``heldout`` half. The baseline is the check
before it (:data:`ray_app.audit.grounding.BASELINE_RULES`: token overlap >= 0.5 or MiniLM cosine
>= 0.6), run as serving ran it, with the embedder.

* ``precision_grounded`` — of the answers the checker calls grounded, the share labelled grounded;
* ``recall_grounded`` — of the answers labelled grounded, the share the checker calls grounded;
* ``ms_per_answer`` — the checker's wall time per answer on this machine (embedding included where
  the rules use it), with the load average it was measured under.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError, NotFound
from ray_app.reports import load_average, write_report

PROG = "python -m ray_app.evaluation.grounding"
DEFAULT_DATASET = Path("datasets/grounding/answers.jsonl")
HALVES = ("tune", "heldout")


@dataclass
class GroundingEvalConfig:
    """What `prism eval grounding` measures and where it writes.

    Attributes:
        dataset: the labelled sample (JSONL, see ``datasets/grounding/README.md``).
        limit: evaluate only the first N answers (a quick run; the report says so).
        out: report path without extension.
        write: write the report files.
    """

    dataset: Path = DEFAULT_DATASET
    limit: int | None = None
    out: Path = Path("docs/reports/grounding-check")
    write: bool = True


def half_of(question_id: str) -> str:
    """``tune`` or ``heldout``: the parity of the first 32 bits of sha1(question id), fixed forever."""
    return HALVES[int(hashlib.sha1(question_id.encode()).hexdigest()[:8], 16) % 2]


def load_sample(path: Path, limit: int | None = None) -> list[dict]:
    """The labelled answers, each with its ``half``.

    Raises:
        NotFound: no such file.
        InputError: a line without the fields the evaluation needs.
    """
    if not Path(path).exists():
        raise NotFound(f"{path} not found (the labelled sample lives in datasets/grounding/answers.jsonl)")
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "question_id", "answer", "passages", "grounded"} - row.keys()
        if missing or not isinstance(row["grounded"], bool):
            raise InputError(f"{path}:{number}: needs id, question_id, answer, passages and a boolean grounded label")
        rows.append({**row, "half": half_of(row["question_id"])})
    return rows[:limit] if limit else rows


def confusion(predicted: list[bool], labels: list[bool]) -> dict:
    """Precision and recall of ``grounded: true`` plus the counts behind them."""
    tp = sum(p and y for p, y in zip(predicted, labels, strict=True))
    fp = sum(p and not y for p, y in zip(predicted, labels, strict=True))
    fn = sum(y and not p for p, y in zip(predicted, labels, strict=True))
    return {
        "n": len(labels),
        "precision_grounded": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall_grounded": round(tp / (tp + fn), 4) if tp + fn else None,
        "true_positive": tp, "false_positive": fp, "false_negative": fn, "true_negative": len(labels) - tp - fp - fn,
    }  # fmt: skip


def run_checker(rows: list[dict], rules, embedder) -> tuple[list[bool], float]:
    """The checker's verdict per answer and its mean milliseconds per answer."""
    from ray_app.audit.grounding import check_grounding
    from ray_app.llm.prompting import Passage

    verdicts = []
    started = time.perf_counter()
    for row in rows:
        passages = [Passage(p["n"], p["title"], p["text"]) for p in row["passages"]]
        verdicts.append(check_grounding(row["answer"], passages, embedder, rules).grounded)
    return verdicts, round(1000 * (time.perf_counter() - started) / max(len(rows), 1), 2)


def by_half(rows: list[dict], verdicts: list[bool]) -> dict:
    """:func:`confusion` for each half and for all rows."""
    out = {}
    for half in (*HALVES, "all"):
        pick = [i for i, r in enumerate(rows) if half == "all" or r["half"] == half]
        out[half] = confusion([verdicts[i] for i in pick], [rows[i]["grounded"] for i in pick])
    return out


def by_model(rows: list[dict], verdicts: list[bool]) -> dict:
    """:func:`confusion` on the held-out half per answer model."""
    models = sorted({r["model"] for r in rows if r["half"] == "heldout"})
    return {m: confusion([v for r, v in zip(rows, verdicts, strict=True) if r["half"] == "heldout" and r["model"] == m],
                         [r["grounded"] for r in rows if r["half"] == "heldout" and r["model"] == m]) for m in models}


def disagreements(rows: list[dict], verdicts: list[bool], half: str = "heldout") -> list[dict]:
    """Held-out answers where the checker and the label disagree (for the report's reader)."""
    return [
        {"id": r["id"], "model": r["model"], "label": r["grounded"], "checker": v, "answer": r["answer"][:200],
         "note": r.get("note", "")}
        for r, v in zip(rows, verdicts, strict=True) if r["half"] == half and v != r["grounded"]
    ]


def evaluate_grounding(rows: list[dict], embedder) -> dict:
    """Baseline and final checker on both halves; the final checker's held-out numbers at the top."""
    from ray_app.audit.grounding import BASELINE_RULES, DEFAULT_RULES

    baseline, baseline_ms = run_checker(rows, BASELINE_RULES, embedder)
    final, final_ms = run_checker(rows, DEFAULT_RULES, embedder)
    final_halves = by_half(rows, final)
    top = final_halves["heldout"]
    return {
        "n": top["n"],
        "precision_grounded": top["precision_grounded"],
        "recall_grounded": top["recall_grounded"],
        "final": {"rules": asdict(DEFAULT_RULES), "ms_per_answer": final_ms, **final_halves,
                  "heldout_by_model": by_model(rows, final)},
        "baseline": {"rules": asdict(BASELINE_RULES), "ms_per_answer": baseline_ms, **by_half(rows, baseline),
                     "heldout_by_model": by_model(rows, baseline)},
        "split": {
            "method": "sha1(question_id): even first 32 bits -> tune, odd -> heldout; the rules were tuned on tune only",
            "tune": sum(r["half"] == "tune" for r in rows),
            "heldout": sum(r["half"] == "heldout" for r in rows),
        },
        "labels": {"grounded": sum(r["grounded"] for r in rows), "not_grounded": sum(not r["grounded"] for r in rows)},
        "heldout_disagreements": disagreements(rows, final),
        "load_average": load_average(),
    }


def render_markdown(result: dict) -> str:
    """The Markdown page for ``docs/reports/grounding-check.md``."""

    def row(name: str, part: dict, ms: float | str) -> str:
        def cell(v):
            return "—" if v is None else f"{v:.3f}"

        return (f"| {name} | {part['n']} | {cell(part['precision_grounded'])} | {cell(part['recall_grounded'])} | "
                f"{part['true_positive']} | {part['false_positive']} | {part['false_negative']} | {part['true_negative']} | {ms} |")

    b, f = result["baseline"], result["final"]
    lines = [
        "# Grounding check: precision and recall of `grounded: true` against hand labels",
        "",
        f"Generated by `{result['command']}` on {result['generated_at']} ({result['machine']}, load average "
        f"{result['load_average']}). Sample: `{result['dataset']}` ({result['labels']['grounded']} answers labelled "
        f"grounded, {result['labels']['not_grounded']} not; labelling guide in `datasets/grounding/README.md`).",
        "",
        f"**Final checker on the held-out half ({result['n']} answers): precision {result['precision_grounded']}, "
        f"recall {result['recall_grounded']}.** Split: {result['split']['method']} "
        f"({result['split']['tune']} tune, {result['split']['heldout']} held out).",
        "",
        "| checker, half | n | precision | recall | TP | FP | FN | TN | ms/answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, part, ms in (("baseline, tune", b["tune"], ""), ("baseline, held out", b["heldout"], b["ms_per_answer"]),
                           ("final, tune", f["tune"], ""), ("final, held out", f["heldout"], f["ms_per_answer"])):
        lines.append(row(name, part, ms))
    lines += ["", "## Held out, per answer model", "", "| model | checker | n | precision | recall | TP | FP | FN | TN | |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model in f["heldout_by_model"]:
        lines.append(row(f"{model} | baseline", b["heldout_by_model"][model], ""))
        lines.append(row(f"{model} | final", f["heldout_by_model"][model], ""))
    lines += ["", "## Rules", "", f"- baseline: `{b['rules']}`", f"- final: `{f['rules']}`",
              "", "Definitions: `ray_app/audit/grounding.py` (module docstring).", "",
              "## Held-out answers where the final checker and the label disagree", ""]
    for d in result["heldout_disagreements"]:
        lines.append(f"- `{d['id']}` ({d['model']}) label {d['label']}, checker {d['checker']}: {d['answer']!r} — {d['note']}")
    if not result["heldout_disagreements"]:
        lines.append("- none")
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def eval_grounding(config: GroundingEvalConfig) -> dict:
    """Measure both checkers and (with ``config.write``) write ``<out>.{json,md}``; returns the result.

    Raises:
        NotFound: the sample file does not exist.
        InputError: a malformed sample line, or a sample without both halves.
    """
    from ray_app.models.text import get_text_embedder

    rows = load_sample(config.dataset, config.limit)
    if not {r["half"] for r in rows} >= set(HALVES):
        raise InputError(f"{config.dataset}: the sample needs answers in both halves (tune and heldout); got {len(rows)}")
    result = evaluate_grounding(rows, get_text_embedder())
    result.update({
        "dataset": str(config.dataset),
        "generated_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "notes": [f"quick run on the first {config.limit} answers only"] if config.limit else [],
    })
    command = "prism eval grounding --json" + (f" --limit {config.limit}" if config.limit else "") + (
        f" --dataset {config.dataset}" if Path(config.dataset) != DEFAULT_DATASET else "")
    if config.write:
        write_report(config.out.parent, config.out.name, result, render_markdown, command=command)
    return {**result, "command": command}


def describe(result: dict) -> str:
    b, f = result["baseline"]["heldout"], result["final"]["heldout"]
    return (f"held out ({result['n']} answers): final precision {f['precision_grounded']} recall {f['recall_grounded']} "
            f"({result['final']['ms_per_answer']} ms/answer); baseline precision {b['precision_grounded']} "
            f"recall {b['recall_grounded']} ({result['baseline']['ms_per_answer']} ms/answer)")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`GroundingEvalConfig`'s."""
    d = GroundingEvalConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--dataset", type=Path, default=d.dataset, metavar="JSONL", help="The hand-labelled sample.")
    p.add_argument("--limit", type=int_at_least(2), default=d.limit, metavar="N", help="Only the first N answers (quick run).")
    p.add_argument("--out", type=Path, default=d.out, help="Report path without extension.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism eval grounding`` / ``python -m ray_app.evaluation.grounding``: measure, write the report, print it."""
    return run_job(build_parser(prog or PROG), argv, lambda args: eval_grounding(GroundingEvalConfig(**args)), describe)


if __name__ == "__main__":
    main()
