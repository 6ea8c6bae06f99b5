"""`prism eval edge`: the edge runtime's answers and image labels against the server's, on the same inputs.

    prism eval edge --bundle $PRISM_HOME/edge/bundle-int4 --json     # docs/reports/edge-quality.{json,md}
    python -m edge.quality --bundle DIR --reference docs/reports/engine-quality/torch-bf16.json --pictures 60 --json

Answers: the held-out questions of a ``prism eval answers`` report (``--reference``, the server's engine; the
same sample, checked by question id), answered by the bundle's LLM through the edge runtime's generate stage
(ONNX Runtime GenAI, the bundle's prompt budget) with each question's own passages and the reference's answer
limit, scored by :mod:`ray_app.evaluation.answers` (``score_answer``, ``aggregate``) and compared metric by metric
with the reference. The issue's bar: grounding rate and ROUGE-L at most 2 points below the server's.

Labels: pictures through the edge runtime's vision stage and the server's
(:class:`ray_app.vision.analyzer.VisionAnalyzer` on the store, with the torch image encoder the bundle was
exported from): stored images as uploaded (the same bytes), transformed views of them
(``ray_app.vision.data.transformed_view``) and pictures of nothing (``unrelated_pictures``). Per group: the
share with the same top label, the same ``sure`` verdict, and the mean overlap of the top-5 labels. This part
needs the store the bundle was exported from (``prism db up``); ``--pictures 0`` skips it.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError, NotFound
from ray_app.reports import load_average, write_report

PROG = "python -m edge.quality"
DEFAULT_REFERENCE = Path("docs/reports/engine-quality/torch-bf16.json")  # the served default engine
BAR_POINTS = 2.0  # the issue: answer metrics within 2 points of the server
BARRED = ("grounding_rate", "rouge_l")
VIEW_SIZE = 128  # side of the square a stored image is fitted into before a transformed view is drawn


# ---------------------------------------------------------------- answers
def reference_questions(reference: dict, method: str | None) -> tuple[str, dict, list[dict]]:
    """The reference report's method, its metrics, and its questions (the same seeded sample, in its order).

    Raises:
        InputError: the report has no such method, or its questions cannot be drawn again.
    """
    from ray_app.evaluation.answers import pick_questions
    from ray_app.jsonl import read_jsonl

    evaluated = [m for m, r in reference["methods"].items() if r.get("samples")]
    method = method or (evaluated[0] if evaluated else None)
    if method not in evaluated:
        raise InputError(f"the reference report has no evaluated method {method!r} (it has {evaluated})")
    metrics = reference["methods"][method]
    test_path = Path(reference["eval"]["test_path"])
    if not test_path.exists():
        raise NotFound(f"the reference's questions {test_path} are missing (prism data heldout)")
    examples = pick_questions(read_jsonl(test_path), reference["eval"]["n_questions"], 0)
    if [e["id"] for e in examples] != [s["id"] for s in metrics["samples"]]:
        raise InputError("the reference answered other questions than `prism eval answers` draws now (seed 0)")
    return method, metrics, examples


def edge_answers(runtime, examples: list[dict], max_new_tokens: int, budget: int) -> tuple[list[str], float]:
    """The edge runtime's answers to ``examples`` (its LLM and prompt rendering, ``budget`` prompt tokens) and the
    seconds they took, one at a time as on a device."""
    import asyncio

    from edge.llm import EdgeGenerate
    from ray_app.evaluation.answers import answer_examples, eval_settings

    generate = EdgeGenerate(runtime.llm, budget, {"model": "edge", "adapter": None})
    settings = eval_settings(runtime.settings, max_new_tokens)
    started = time.perf_counter()
    answers = asyncio.run(answer_examples(generate, examples, settings, concurrency=1))
    return answers, time.perf_counter() - started


def compare_answers(edge: dict, reference: dict) -> dict:
    """Per metric: the edge's value, the server's, the difference in points; the verdict on :data:`BARRED`."""
    from ray_app.evaluation.answers import METRIC_COLUMNS

    rows = {}
    for metric in METRIC_COLUMNS:
        ours, theirs = edge.get(metric), reference.get(metric)
        delta = None if ours is None or theirs is None else round(100 * (ours - theirs), 2)
        rows[metric] = {"edge": ours, "server": theirs, "delta_points": delta}
    within = {m: rows[m]["delta_points"] is not None and rows[m]["delta_points"] >= -BAR_POINTS for m in BARRED}
    return {"metrics": rows, "within_2_points": within, "meets_bar": all(within.values())}


def evaluate_answers(runtime, reference: dict, questions: tuple[str, dict, list[dict]], max_new_tokens: int | None,
                     budget: int | None) -> dict:
    """Answer the reference's questions (:func:`reference_questions`) on the edge, score them, and compare."""
    from ray_app.evaluation.answers import aggregate, score_answer

    method, theirs, examples = questions
    max_new_tokens = max_new_tokens or reference["eval"]["max_new_tokens"]
    budget = budget or runtime.settings.prompt_token_budget
    answers, seconds = edge_answers(runtime, examples, max_new_tokens, budget)
    scores = [score_answer(e, a) for e, a in zip(examples, answers, strict=True)]
    ours = aggregate(scores)
    return {"reference": {"method": method, "engine": reference["eval"].get("engine"),
                          "command": reference.get("command"), "checkpoint": theirs.get("checkpoint")},
            "n_questions": len(examples), "max_new_tokens": max_new_tokens, "edge_prompt_token_budget": budget,
            "seconds_per_answer": round(seconds / len(examples), 3), "edge": ours,
            **compare_answers(ours, theirs),
            "samples": [{"id": s["id"], "kind": s["kind"], "edge": s["answer"], "server": r["answer"]}
                        for s, r in zip(scores, theirs["samples"], strict=True)]}


# ---------------------------------------------------------------- labels
def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def stored_images(store, n: int, seed: int) -> list[tuple[str, Path]]:
    """``n`` stored images (id, file) with a vector and a readable file, drawn with ``seed``."""
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT id, path FROM images WHERE embedding IS NOT NULL AND path IS NOT NULL"
                            " ORDER BY id").fetchall()
    rows = [(i, Path(p)) for i, p in rows if Path(p).is_file() and Path(p).suffix.lower() != ".svg"]
    picked = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(picked)]


def label_pictures(store, n: int, seed: int) -> list[tuple[str, str, bytes]]:
    """``(group, name, bytes)``: ``n`` stored images as uploaded, a transformed view of each (the view kinds in
    turn), and ``n`` pictures of nothing (the unrelated kinds in turn)."""
    from PIL import Image

    from ray_app.vision.data import (
        UNRELATED_KINDS,
        VIEW_KINDS,
        fit_square_rgba,
        transformed_view,
        unrelated_pictures,
    )

    pictures = []
    for i, (image_id, path) in enumerate(stored_images(store, n, seed)):
        pictures.append(("stored", image_id, path.read_bytes()))
        kind = VIEW_KINDS[i % len(VIEW_KINDS)]
        view = transformed_view(fit_square_rgba(Image.open(path), VIEW_SIZE), kind, np.random.default_rng([seed, i]))
        pictures.append(("view", f"{image_id}/{kind}", png_bytes(view)))
    per_kind = -(-n // len(UNRELATED_KINDS))
    pictures += [("unrelated", name, png_bytes(image)) for name, image in unrelated_pictures(per_kind, seed)[:n]]
    return pictures


def agreement(ours: dict, theirs: dict) -> dict:
    """How one picture's edge labels compare with the server's."""
    a, b = [x["label"].lower() for x in ours["labels"]], [x["label"].lower() for x in theirs["labels"]]
    return {"top1": a[:1] == b[:1], "sure": ours.get("sure") == theirs.get("sure"),
            "top5_overlap": len(set(a) & set(b)) / max(len(a), len(b), 1)}


def summarise_agreement(rows: list[dict]) -> dict:
    def share(key):
        return round(float(np.mean([r[key] for r in rows])), 4) if rows else None

    return {"n": len(rows), "top1_agreement": share("top1"), "sure_agreement": share("sure"),
            "top5_overlap": share("top5_overlap")}


def server_vision(manifest: dict):
    """The server's vision path on the store, with the torch image encoder the bundle was exported from.

    Raises:
        NotFound: a text-only bundle, or its encoder's checkpoint is gone.
    """
    from ray_app.models.image import ImageEncoder
    from ray_app.models.text import get_text_embedder
    from ray_app.store import get_store
    from ray_app.vision.analyzer import VisionAnalyzer

    image = manifest.get("image")
    if not image:
        raise NotFound("a text-only bundle has no image labels to compare (--pictures 0 skips them)")
    checkpoint = Path(image["checkpoint"])
    if not checkpoint.exists():
        raise NotFound(f"the bundle's image encoder {checkpoint} is gone: the server's labels need it")
    store = get_store()
    return VisionAnalyzer(store, get_text_embedder(), ImageEncoder(checkpoint)), store


def evaluate_labels(runtime, n: int, seed: int) -> dict:
    """Edge vs server labels on the same pictures, overall and per group, with a few disagreements."""
    if runtime.vision.analyzer is None:
        raise NotFound("a text-only bundle has no image labels to compare (--pictures 0 skips them)")
    server, store = server_vision(runtime.manifest)
    rows, examples = [], []
    for group, name, data in label_pictures(store, n, seed):
        ours = runtime.vision.analyzer.analyze(data, ocr=False).public()
        theirs = server.analyze(data, ocr=False).public()
        row = {"group": group, **agreement(ours, theirs)}
        rows.append(row)
        if not (row["top1"] and row["sure"]) and len(examples) < 12:
            examples.append({"group": group, "picture": name, "edge": top_labels(ours), "server": top_labels(theirs)})
    groups = sorted({r["group"] for r in rows})
    return {"overall": summarise_agreement(rows),
            "by_group": {g: summarise_agreement([r for r in rows if r["group"] == g]) for g in groups},
            "disagreements": examples, "server_encoder": runtime.manifest["image"]["checkpoint"],
            "edge_encoder": f"{runtime.manifest['image']['file']} ({runtime.manifest['image']['precision']})"}


def top_labels(result: dict) -> dict:
    return {"sure": result.get("sure"), "labels": [(x["label"], x["score"], x.get("source")) for x in result["labels"][:3]]}


# ---------------------------------------------------------------- the job
def evaluate_edge(bundle: Path, reference_path: Path, method: str | None = None, max_new_tokens: int | None = None,
                  prompt_budget: int | None = None, pictures: int = 60, answers: bool = True, threads: int = 2,
                  seed: int = 0, out: Path = Path("docs/reports/edge-quality")) -> dict:
    """Run both comparisons and write ``<out>.{json,md}``; returns the report.

    Raises:
        NotFound: no bundle, no reference report, no store or image encoder for the labels.
        InputError: the reference's questions cannot be drawn again.
    """
    from edge.runtime import EdgeRuntime

    if not reference_path.exists():
        raise NotFound(f"no reference report at {reference_path}: run `prism eval answers` on the server first")
    reference = json.loads(reference_path.read_text())
    questions = reference_questions(reference, method) if answers else None  # a bad reference fails before loading
    load = load_average()
    runtime = EdgeRuntime(bundle, threads=threads)
    report = {"bundle": str(bundle), "variant": runtime.manifest["variant"], "llm": runtime.manifest["llm"],
              "threads": threads, "reference_report": str(reference_path)}
    if answers:
        report["answers"] = evaluate_answers(runtime, reference, questions, max_new_tokens, prompt_budget)
    if pictures:
        report["labels"] = evaluate_labels(runtime, pictures, seed)
    report["load_average"] = {"start": load, "end": load_average()}
    report["generated_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report["command"] = command_line(bundle, reference_path, method, max_new_tokens, prompt_budget, pictures,
                                     answers, threads, seed, out)
    write_report(out.parent, out.name, report, render_markdown)
    return report


def command_line(bundle, reference, method, max_new_tokens, prompt_budget, pictures, answers, threads, seed,
                 out) -> str:
    parts = [f"prism eval edge --bundle {bundle} --reference {reference}", f"--pictures {pictures}",
             f"--threads {threads}", f"--out {out}"]
    parts += [f"--method {method}"] if method else []
    parts += [f"--max-new-tokens {max_new_tokens}"] if max_new_tokens else []
    parts += [f"--prompt-budget {prompt_budget}"] if prompt_budget else []
    parts += [] if answers else ["--no-answers"]
    parts += [f"--seed {seed}"] if seed else []
    return " ".join(parts) + " --json"


def render_markdown(report: dict) -> str:
    lines = ["# The edge runtime against the server: answers and image labels", "",
             f"`{report['command']}`; bundle variant **{report['variant']}** ({report['llm'].get('int4_recipe') or 'default'}"
             f" recipe), {report['threads']} threads; load average {report['load_average']['start']} at the start, "
             f"{report['load_average']['end']} at the end; {report['generated_at']}.", ""]
    if "answers" in report:
        lines += render_answers(report["answers"])
    if "labels" in report:
        lines += render_labels(report["labels"])
    return "\n".join(lines) + "\n"


def render_answers(a: dict) -> list[str]:
    ref = a["reference"]
    lines = ["## Answers", "",
             f"{a['n_questions']} held-out questions (`prism eval answers`' sample), max_new_tokens {a['max_new_tokens']}; "
             f"the edge renders prompts within {a['edge_prompt_token_budget']} tokens; {a['seconds_per_answer']} s per "
             f"answer. Server: method `{ref['method']}`, engine {ref['engine']} (`{ref['command']}`).", "",
             "| metric | edge | server | edge − server (points) |", "|---|---|---|---|"]
    for metric, row in a["metrics"].items():
        cells = ["—" if v is None else f"{v:.3f}" for v in (row["edge"], row["server"])]
        delta = "—" if row["delta_points"] is None else f"{row['delta_points']:+.1f}"
        lines.append(f"| {metric} | {cells[0]} | {cells[1]} | {delta} |")
    verdicts = ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in a["within_2_points"].items())
    lines += ["", f"Within {BAR_POINTS:g} points of the server (not lower by more): {verdicts}.", ""]
    return lines


def render_labels(labels: dict) -> list[str]:
    lines = ["## Image labels", "",
             f"The edge's labels ({labels['edge_encoder']}, the bundle's index, vocabulary and calibration) against "
             f"the server's vision path (the store and the torch encoder `{labels['server_encoder']}`), OCR off.", "",
             "| pictures | n | same top label | same sure verdict | top-5 overlap |", "|---|---|---|---|---|"]
    for name, row in [*labels["by_group"].items(), ("all", labels["overall"])]:
        lines.append(f"| {name} | {row['n']} | {row['top1_agreement']} | {row['sure_agreement']} | {row['top5_overlap']} |")
    if labels["disagreements"]:
        lines += ["", "Disagreements (top 3 labels with score and source):", ""]
        lines += [f"- {d['group']} `{d['picture']}`: edge {d['edge']}; server {d['server']}"
                  for d in labels["disagreements"]]
    return lines + [""]


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = job_parser(prog, __doc__)
    p.add_argument("--bundle", type=Path, required=True, help="The edge bundle (prism export edge).")
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                   help="The server's `prism eval answers` report to compare with (its questions are reused).")
    p.add_argument("--method", default=None, help="The reference's method (default: its first evaluated one).")
    p.add_argument("--max-new-tokens", type=int_at_least(8, 512), default=None, metavar="8..512",
                   help="Answer limit (default: the reference's).")
    p.add_argument("--prompt-budget", type=int_at_least(64, 4096), default=None, metavar="TOKENS",
                   help="Prompt tokens on the edge (default: the bundle's).")
    p.add_argument("--pictures", type=int_at_least(0), default=60, metavar="N",
                   help="Stored images (each also as a transformed view) and unrelated pictures; 0 skips labels.")
    p.add_argument("--answers", action=argparse.BooleanOptionalAction, default=True, help="Compare answers.")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="The edge runtime's cores.")
    p.add_argument("--seed", type=int, default=0, help="Which pictures.")
    p.add_argument("--out", type=Path, default=Path("docs/reports/edge-quality"), help="Report path without extension.")
    return p


def summary(report: dict, path: Path) -> dict:
    """What the command prints: the report's path, verdicts and figures, without the samples."""
    out = {"report": str(path.with_suffix(".json")), "variant": report["variant"]}
    if "answers" in report:
        a = report["answers"]
        out["answers"] = {"metrics": a["metrics"], "within_2_points": a["within_2_points"], "meets_bar": a["meets_bar"]}
    if "labels" in report:
        out["labels"] = {"overall": report["labels"]["overall"], "by_group": report["labels"]["by_group"]}
    return out


def run(args: dict) -> dict:
    if not args["answers"] and not args["pictures"]:
        raise InputError("nothing to compare: --no-answers with --pictures 0")
    report = evaluate_edge(args["bundle"], args["reference"], args["method"], args["max_new_tokens"],
                           args["prompt_budget"], args["pictures"], args["answers"], args["threads"], args["seed"],
                           args["out"])
    return summary(report, args["out"])


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism eval edge`` / ``python -m edge.quality``."""
    return run_job(build_parser(prog or PROG), argv, run)


if __name__ == "__main__":
    main()
