"""`prism bench explain`: what ``explain: true`` costs, and whether its attributions point where they should.

    prism bench explain --questions 40 --images 16 --json     # writes docs/reports/explain.{json,md}
    python -m ray_app.benchmarks.explain --questions 40 --images 16 --json

Passage attribution (:mod:`ray_app.llm.attribution`) runs on the served LLM (``PRISM_LLM_MODEL``, its adapter,
``PRISM_LLM_DTYPE``) over held-out questions whose answer comes from one known passage
(``datasets/answers-heldout``: kinds ``what_is``, ``who_was``, ``known_for``, ``where``), teacher-forcing each
reference answer after its passages: the time per answer, the forward passes, and how often a sentence's
top-ranked passage is its gold passage. Image saliency (:mod:`ray_app.vision.saliency`) runs on the served image
encoder with Tux Paint stamps pasted into a random corner of a white canvas, explained for their own name: the
time per map and the share of the map's mass in the stamp's quadrant. One process, the models' default threads;
the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.reports import load_average, write_report

REPORT_NAME = "explain"
PROG = "python -m ray_app.benchmarks.explain"
HELDOUT_PATH = Path("datasets/answers-heldout/questions.jsonl")
SINGLE_SOURCE_KINDS = ("what_is", "who_was", "known_for", "where")
STAMPS = Path("/usr/share/tuxpaint/stamps")


@dataclass
class ExplainBenchConfig:
    """What `prism bench explain` measures and where it writes.

    Attributes:
        questions: held-out single-source questions whose reference answers are attributed.
        images: stamps whose saliency maps are made (0: skip the image part).
        seed: sampling seed (questions, stamps, corners).
        test_path: the held-out questions JSONL.
        out: folder for ``explain.{json,md}``.
        write: write the report files.
    """

    questions: int = 40
    images: int = 16
    seed: int = 0
    test_path: Path = HELDOUT_PATH
    out: Path = Path("docs/reports")
    write: bool = True


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def pick_single_source(path: Path, n: int, seed: int) -> list[dict]:
    """A seeded sample of ``n`` held-out questions answered from exactly one gold passage."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["kind"] in SINGLE_SOURCE_KINDS and len(r.get("gold_passages") or []) == 1
            and not r.get("injected") and len(r["passages"]) > 1]
    random.Random(seed).shuffle(rows)
    return rows[:n]


def bench_attribution(rows: list[dict]) -> dict:
    """Attribute every reference answer on the served LLM; time, passes and top-1 agreement with the gold passage."""
    import torch

    from ray_app.llm.attribution import attribute_passages
    from ray_app.llm.generate import count_tokens, model_versions, render_prompt
    from ray_app.llm.prompting import Passage
    from ray_app.models.llm import load_llm
    from ray_app.settings import get_settings

    settings = get_settings()
    llm = load_llm(settings=settings)
    ms, passes, prompt_tokens, answer_tokens, sentences, top1 = [], [], [], [], 0, 0
    for i, row in enumerate(rows):
        passages = [Passage(p["n"], p["title"], p["text"], p.get("doc_id"), chunk_id=str(p["n"])) for p in row["passages"]]
        if i == 0:  # warm-up, not counted
            attribute_passages(llm, row["question"], passages, None, row["answer"], settings.prompt_token_budget)
        start = time.perf_counter()
        out = attribute_passages(llm, row["question"], passages, None, row["answer"], settings.prompt_token_budget)
        ms.append((time.perf_counter() - start) * 1000)
        passes.append(out["forward_passes"])
        prompt_tokens.append(count_tokens(llm.tokenizer, render_prompt(llm.tokenizer, row["question"], passages, None,
                                                                       settings.prompt_token_budget)))
        answer_tokens.append(count_tokens(llm.tokenizer, row["answer"]))
        for sentence in out["sentences"]:
            sentences += 1
            top1 += sentence["passages"][0]["n"] in row["gold_passages"]
    return {"model": model_versions(llm, settings), "threads": torch.get_num_threads(), "answers": len(rows),
            "ms_p50": percentile(ms, 50), "ms_p95": percentile(ms, 95), "ms_max": percentile(ms, 100),
            "forward_passes_mean": round(float(np.mean(passes)), 2) if passes else None,
            "passages_mean": round(float(np.mean([len(r["passages"]) for r in rows])), 2) if rows else None,
            "prompt_tokens_mean": round(float(np.mean(prompt_tokens)), 1) if rows else None,
            "answer_tokens_mean": round(float(np.mean(answer_tokens)), 1) if rows else None,
            "sentences_scored": sentences, "top1_is_gold_rate": round(top1 / sentences, 3) if sentences else None}


def corner_canvas(stamp: Path, corner: int, side: int = 256):
    """The stamp (at most 45 % of the side) in corner 0 (top left), 1 (top right), 2 (bottom left) or 3 of a white
    canvas."""
    from PIL import Image

    image = Image.open(stamp).convert("RGBA")
    image.thumbnail((int(side * 0.45), int(side * 0.45)))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    x = 4 if corner in (0, 2) else side - image.width - 4
    y = 4 if corner in (0, 1) else side - image.height - 4
    canvas.paste(image, (x, y), image)
    return canvas


def quadrant_share(saliency: np.ndarray, corner: int) -> float:
    h, w = saliency.shape
    rows = slice(0, h // 2) if corner in (0, 1) else slice(h // 2, h)
    cols = slice(0, w // 2) if corner in (0, 2) else slice(w // 2, w)
    total = float(saliency.sum())
    return float(saliency[rows, cols].sum()) / total if total > 0 else 0.0


def bench_saliency(n: int, seed: int) -> dict:
    """Saliency maps of stamps in random corners, explained for their own names: time and mass in the right corner."""
    import base64
    import io

    from PIL import Image

    from ray_app.models.errors import ModelNotAvailable
    from ray_app.models.image_default import get_image_encoder
    from ray_app.models.text import get_text_embedder
    from ray_app.vision.analyzer import encoder_version
    from ray_app.vision.saliency import explain_image

    stamps = sorted(STAMPS.glob("**/*.png"))
    if not stamps:
        return {"skipped": f"no Tux Paint stamps under {STAMPS} (make setup)"}
    try:
        encoder = get_image_encoder()
    except ModelNotAvailable as exc:
        return {"skipped": str(exc)}
    rng = random.Random(seed)
    picked = rng.sample(stamps, min(n, len(stamps)))
    vectors = get_text_embedder().embed([p.stem.replace("_", " ").replace("-", " ") for p in picked])
    ms, shares, evaluations = [], [], 0
    for i, (stamp, vector) in enumerate(zip(picked, vectors, strict=True)):
        corner = rng.randrange(4)
        canvas = corner_canvas(stamp, corner)
        if i == 0:
            explain_image(encoder, canvas, vector, stamp.stem)  # warm-up, not counted
        start = time.perf_counter()
        out = explain_image(encoder, canvas, vector, stamp.stem)
        ms.append((time.perf_counter() - start) * 1000)
        evaluations = out["evaluations"]
        png = Image.open(io.BytesIO(base64.b64decode(out["image_saliency"].split(",", 1)[1])))
        shares.append(quadrant_share(np.asarray(png)[..., 3].astype(np.float64), corner))
    return {"encoder": encoder_version(encoder), "input_side": encoder.config.image_size, "images": len(picked),
            "evaluations_per_map": evaluations, "ms_p50": percentile(ms, 50), "ms_p95": percentile(ms, 95),
            "corner_mass_mean": round(float(np.mean(shares)), 3),
            "corner_hit_rate": round(float(np.mean([s > 0.5 for s in shares])), 3)}


def render_markdown(r: dict) -> str:
    a, s = r["attribution"], r["saliency"]
    lines = [
        "# What `explain: true` costs",
        "",
        f"`{r['command']}` on {r['cpu_count']} CPUs, load average {r['load_average']} at the end.",
        "",
        "## Passage attribution (fusion deployment)",
        "",
        f"{a['answers']} held-out reference answers (single-source questions, {a['passages_mean']} passages, "
        f"~{a['prompt_tokens_mean']:.0f} prompt + {a['answer_tokens_mean']:.0f} answer tokens) on `{a['model']['model']}` "
        f"(adapter `{a['model']['adapter']}`), {a['threads']} threads.",
        "",
        "| ms p50 | ms p95 | ms max | forward passes | sentences | top-ranked passage is the gold one |",
        "|---|---|---|---|---|---|",
        f"| {a['ms_p50']} | {a['ms_p95']} | {a['ms_max']} | {a['forward_passes_mean']} | {a['sentences_scored']} | "
        f"{a['top1_is_gold_rate']} |",
        "",
        "## Image saliency (vision deployment)",
        "",
    ]
    if "skipped" in s:
        lines += [f"Skipped: {s['skipped']}", ""]
    else:
        lines += [
            f"{s['images']} Tux Paint stamps, each in a random corner of a white 256 x 256 canvas, explained for its "
            f"own name on `{s['encoder']}` ({s['input_side']} px input, {s['evaluations_per_map']} occluded copies "
            "per map).",
            "",
            "| ms p50 | ms p95 | map mass in the stamp's quadrant (mean) | maps with most mass there |",
            "|---|---|---|---|",
            f"| {s['ms_p50']} | {s['ms_p95']} | {s['corner_mass_mean']} | {s['corner_hit_rate']} |",
            "",
        ]
    lines += ["The numbers are in `explain.json` next to this file.", ""]
    return "\n".join(lines)


def bench_explain(config: ExplainBenchConfig) -> dict:
    """Run the benchmark and (with ``config.write``) write its report; returns the result."""
    import os

    rows = pick_single_source(config.test_path, config.questions, config.seed)
    result = {"questions": len(rows), "seed": config.seed, "attribution": bench_attribution(rows),
              "saliency": bench_saliency(config.images, config.seed) if config.images else {"skipped": "--images 0"},
              "cpu_count": os.cpu_count(), "load_average": load_average()}
    command = (f"prism bench explain --questions {config.questions} --images {config.images} --seed {config.seed} "
               "--json")
    result["command"] = command
    if config.write:
        write_report(config.out, REPORT_NAME, result, render_markdown, command=command)
    return result


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`ExplainBenchConfig`'s."""
    d = ExplainBenchConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--questions", type=int_at_least(1), default=d.questions, metavar="N",
                   help="Held-out single-source questions whose reference answers are attributed.")
    p.add_argument("--images", type=int_at_least(0), default=d.images, metavar="N",
                   help="Stamps whose saliency maps are made (0: skip images).")
    p.add_argument("--seed", type=int, default=d.seed, help="Sampling seed.")
    p.add_argument("--test-path", type=Path, default=d.test_path, help="Held-out questions JSONL.")
    p.add_argument("--out", type=Path, default=d.out, help="Where explain.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench explain`` / ``python -m ray_app.benchmarks.explain``: run, write the report, print the result."""
    return run_job(build_parser(prog or PROG), argv, lambda args: bench_explain(ExplainBenchConfig(**args)))


if __name__ == "__main__":
    main()
