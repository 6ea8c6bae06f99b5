"""Anchor explanations (alibi's AnchorText) of the learned prompt-injection detector's decisions.

    make alibi-env                               # once: .prism-alibi, alibi + spaCy pinned, never in .venv
    prism rai anchors --n 12 --json              # also the `anchors` section of `prism rai report`
    python -m ray_app.rai.anchors --n 12 --json

alibi (BSL 1.1) pins numpy<2 and transformers<5, so it runs in its own virtual environment
(``PRISM_ALIBI_ENV``, default ``.prism-alibi``) as a child process (``anchors_child.py``). The detector
(:mod:`ray_app.audit.detector`) and MiniLM stay in this process: the child sends its perturbed samples over a
JSON-lines pipe and this process answers with the detector's decisions. An anchor is a set of words that, kept
in place while the other words are replaced by ``UNK``, keeps the decision with probability ``precision``;
``coverage`` is the share of perturbed samples the anchor applies to. The texts are a sample of the injection
suite's test split (``datasets/injection``), as the screening sees them, half flagged and half not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.errors import InputError, Unavailable

PROG = "python -m ray_app.rai.anchors"
CHILD = Path(__file__).with_name("anchors_child.py")
REQUIREMENTS = Path(__file__).with_name("alibi-requirements.txt")
LICENCE = ("Business Source License 1.1 (Seldon; alibi 0.9.5 and later): not an open-source licence; copying, "
           "modifying and non-production use are granted, production use needs a commercial licence until each "
           "version's change date (four years after its release), when it becomes Apache-2.0")
METHOD = ("alibi AnchorText, sampling_strategy 'unknown' (words outside the anchor replaced by UNK), "
          "spacy.blank('en') tokenizer; the decisions are the shipped detector's (ray_app/audit/detector.py)")


class AnchorBridgeError(Unavailable):
    """alibi's child process failed or broke the protocol; the message holds the end of its stderr."""

    code = "anchors_failed"


@dataclass
class AnchorConfig:
    """What the anchor explanations explain and how hard they look.

    Attributes:
        n: texts explained, half flagged by the detector and half not (as far as the sample has them).
        max_chars: longest text picked (the cost grows with the number of words).
        threshold: the anchor's precision target.
        sample_proba: probability that a word outside the anchor is replaced by ``UNK``.
        seed: the sample of texts and alibi's sampler.
        batch_size: perturbed samples per round trip to this process.
        timeout: seconds the child may run in all.
    """

    n: int = 12
    max_chars: int = 400
    threshold: float = 0.95
    sample_proba: float = 0.5
    seed: int = 0
    batch_size: int = 100
    timeout: float = 1800.0


def alibi_python(env: Path | None = None) -> Path:
    """The interpreter of alibi's environment.

    Raises:
        Unavailable: the environment, or alibi in it, is missing.
    """
    from ray_app.settings import get_settings

    folder = Path(env or get_settings().alibi_env).absolute()  # not resolve(): the venv's python is a link
    python = folder / "bin" / "python"
    if not python.exists() or not list((folder / "lib").glob("python3*/site-packages/alibi")):
        raise Unavailable(f"alibi is not installed in {folder}: run `make alibi-env` (or set PRISM_ALIBI_ENV to "
                          "such a virtual environment)")
    return python


def child_env() -> dict[str, str]:
    """The child's environment: offline, and nothing of Prism's interpreter (PYTHONPATH, VIRTUAL_ENV) leaking in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


# ---------------------------------------------------------------- the detector's side


class DetectorOracle:
    """The detector's decisions (1 flagged, 0 not) on alibi's samples; repeated samples are decided once."""

    def __init__(self, detector):
        self.detector, self.cache = detector, {}

    def __call__(self, texts: list[str]) -> list[int]:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, (int(f) for f in self.detector.flag(new)), strict=True))
        return [self.cache[t] for t in texts]


def run_child(python: Path, texts: list[dict], decide, config: AnchorConfig) -> tuple[list[dict], dict]:
    """Start alibi's child, answer its classification requests with ``decide`` and collect its anchors.

    Returns:
        The anchors (one per text, in order) and the child's package versions.

    Raises:
        AnchorBridgeError: the child exits early, times out or sends something outside the protocol.
    """
    options = {"texts": texts, "threshold": config.threshold, "sample_proba": config.sample_proba,
               "seed": config.seed, "batch_size": config.batch_size}
    with tempfile.TemporaryFile(mode="w+") as stderr, subprocess.Popen(
            [str(python), str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
            env=child_env(), cwd=tempfile.gettempdir()) as child:
        watchdog = threading.Timer(config.timeout, child.kill)  # a hung child closes its stdout and ends the loop
        watchdog.start()
        try:
            child.stdin.write(json.dumps(options) + "\n")
            child.stdin.flush()
            anchors = []
            for line in child.stdout:
                message = json.loads(line)
                if "predict" in message:
                    child.stdin.write(json.dumps({"labels": decide(message["predict"])}) + "\n")
                    child.stdin.flush()
                elif "anchor" in message:
                    anchors.append(message["anchor"])
                elif "done" in message:
                    return anchors, message["done"]["versions"]
            child.wait(timeout=30)
            stderr.seek(0)
            timed_out = "" if watchdog.is_alive() else f", killed after {config.timeout:.0f} s"
            raise AnchorBridgeError(f"alibi's child ended (exit {child.returncode}{timed_out}) before its anchors: "
                                    f"{stderr.read()[-800:].strip()}")
        except (BrokenPipeError, json.JSONDecodeError, KeyError) as exc:
            stderr.seek(0)
            raise AnchorBridgeError(f"alibi's child broke the protocol ({exc!r}): {stderr.read()[-800:].strip()}") \
                from None
        finally:
            watchdog.cancel()
            if child.poll() is None:
                child.kill()


# ---------------------------------------------------------------- the texts


def candidate_texts(max_chars: int) -> list[dict]:
    """The injection suite's test-split texts as the screening sees them (attack carriers and benign texts)."""
    from ray_app.evaluation.injection import detector_texts
    from ray_app.evaluation.injection_suite import load_suite

    out, seen = [], set()
    for case in load_suite(split="test"):
        carriers, _, benign = detector_texts([case])
        for attack, texts in ((True, carriers), (False, benign)):
            for text in texts:
                if text and len(text) <= max_chars and text not in seen:
                    seen.add(text)
                    out.append({"id": f"{case['id']}/{len(out)}", "category": case["category"] if attack else "benign",
                                "attack": attack, "text": text})
    return out


def pick_texts(candidates: list[dict], flags: list[bool], n: int, seed: int) -> list[dict]:
    """``n`` texts, half flagged and half not, spread over categories (round-robin after a seeded shuffle)."""
    rng = random.Random(seed)
    picked = []
    for flagged, want in ((True, (n + 1) // 2), (False, n // 2)):
        by_category: dict[str, list[dict]] = {}
        for item, flag in zip(candidates, flags, strict=True):
            if flag == flagged:
                by_category.setdefault(item["category"], []).append(item | {"flagged": flagged})
        for items in by_category.values():
            rng.shuffle(items)
        queues = [by_category[c] for c in sorted(by_category)]
        while len([p for p in picked if p["flagged"] == flagged]) < want and any(queues):
            for queue in queues:
                if queue and len([p for p in picked if p["flagged"] == flagged]) < want:
                    picked.append(queue.pop())
    return picked


# ---------------------------------------------------------------- the section


def explain_detector(config: AnchorConfig, env: Path | None = None, texts: list[str] | None = None) -> dict:
    """Anchors of the shipped detector's decisions on a sample of the suite (or on ``texts``), with their cost.

    Raises:
        Unavailable: no alibi environment, or no shipped detector.
        AnchorBridgeError: the child failed.
    """
    from ray_app.audit.detector import load_detector

    python = alibi_python(env)
    detector = load_detector()
    if detector is None:
        raise Unavailable("no shipped injection detector (run prism eval injection --write-detector)")
    if texts is not None:
        candidates = [{"id": f"text-{i}", "category": None, "attack": None, "text": t} for i, t in enumerate(texts)]
        chosen = [c | {"flagged": f} for c, f in zip(candidates, detector.flag(texts), strict=True)]
    else:
        candidates = candidate_texts(config.max_chars)
        chosen = pick_texts(candidates, detector.flag([c["text"] for c in candidates]), config.n, config.seed)
    scores = detector.scores([c["text"] for c in chosen])
    oracle = DetectorOracle(detector)
    started = time.perf_counter()
    anchors, versions = run_child(python, [{"id": c["id"], "text": c["text"]} for c in chosen], oracle, config)
    rows = [c | {"score": round(s, 4)} | a for c, s, a in zip(chosen, scores, anchors, strict=True)]
    seconds = [r["seconds"] for r in rows]
    return {"available": True, "method": METHOD, "licence": LICENCE, "versions": versions,
            "environment": str(python.parent.parent), "detector": {"method": detector.method,
                                                                   "threshold": detector.params.threshold},
            "options": {k: getattr(config, k) for k in ("threshold", "sample_proba", "seed", "batch_size",
                                                        "max_chars")},
            "candidates": len(candidates), "n_flagged": sum(r["flagged"] for r in rows),
            "n_unflagged": sum(not r["flagged"] for r in rows),
            "mismatched_decisions": sum(r["prediction"] != int(r["flagged"]) for r in rows),
            "seconds_per_explanation": {"mean": round(sum(seconds) / len(seconds), 2) if seconds else None,
                                        "max": max(seconds, default=None)},
            "detector_samples_decided": len(oracle.cache), "wall_s": round(time.perf_counter() - started, 1),
            "texts": rows}


def anchors_section(config: AnchorConfig) -> dict:
    """The RAI report's ``anchors``: the explanations, or why they are absent (no alibi environment)."""
    if config.n == 0:
        return {"available": False, "why": "not run (--anchors 0)"}
    try:
        return explain_detector(config)
    except Unavailable as exc:
        if isinstance(exc, AnchorBridgeError):
            raise
        return {"available": False, "why": str(exc), "licence": LICENCE}


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    d = AnchorConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--n", type=int_at_least(1, 200), default=d.n, help="Texts explained (half flagged, half not).")
    p.add_argument("--max-chars", type=int_at_least(20), default=d.max_chars, help="Longest text picked.")
    p.add_argument("--threshold", type=float, default=d.threshold, help="The anchors' precision target (0.5-1).")
    p.add_argument("--sample-proba", type=float, default=d.sample_proba,
                   help="Probability that a word outside the anchor is replaced by UNK (0-1).")
    p.add_argument("--seed", type=int, default=d.seed, help="The sample of texts and alibi's sampler.")
    p.add_argument("--text", action="append", dest="texts", default=None,
                   help="Explain this text instead of the suite's sample (repeatable).")
    p.add_argument("--alibi-env", type=Path, default=None, help="alibi's virtual environment (default PRISM_ALIBI_ENV).")
    return p


def run(args: dict) -> dict:
    """``prism rai anchors``: validate the options, then explain."""
    if not 0.5 <= args["threshold"] <= 1.0:
        raise InputError(f"--threshold must be in 0.5..1, got {args['threshold']}")
    if not 0.0 < args["sample_proba"] < 1.0:
        raise InputError(f"--sample-proba must be between 0 and 1, got {args['sample_proba']}")
    env, texts = args.pop("alibi_env"), args.pop("texts")
    if texts is not None and not all(t.strip() for t in texts):
        raise InputError("--text must not be empty")
    return explain_detector(AnchorConfig(**args), env, texts)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    return run_job(build_parser(prog or PROG), argv, run)


if __name__ == "__main__":
    main()
