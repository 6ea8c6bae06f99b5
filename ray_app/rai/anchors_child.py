"""alibi's AnchorText over a classifier that lives in another process: the child half of :mod:`ray_app.rai.anchors`.

    .prism-alibi/bin/python ray_app/rai/anchors_child.py     # started by ray_app.rai.anchors, never by hand

Runs in alibi's own virtual environment (``make alibi-env``: alibi pins numpy<2 and transformers<5), so it
imports nothing of Prism: only the standard library, numpy, spaCy and alibi. It perturbs with
``spacy.blank("en")`` (the tokenizer that ships inside the spaCy wheel, no model download) and
``sampling_strategy="unknown"`` (words outside the anchor replaced by ``UNK``), so it runs offline.

Protocol (JSON lines; stdin from the parent, stdout to it; everything else goes to stderr):

- parent -> child, first line: ``{"texts": [{"id", "text"}, ...], "threshold", "sample_proba", "seed", "batch_size"}``;
- child -> parent: ``{"predict": [text, ...]}``, answered by ``{"labels": [0 or 1, ...]}`` (the classifier's
  decisions on alibi's perturbed samples);
- child -> parent: ``{"anchor": {...}}`` per text as it is explained, then ``{"done": {"versions": {...}}}``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time

PACKAGES = ("alibi", "spacy", "spacy-lookups-data", "numpy")
EXAMPLES = 3  # perturbed samples kept per kind (anchor holds: same / other decision)


class PipeClassifier:
    """alibi's ``predictor``: sends a batch of texts to the parent and returns its labels."""

    def __init__(self, to_parent, from_parent):
        self.to_parent, self.from_parent, self.calls, self.texts = to_parent, from_parent, 0, 0

    def __call__(self, texts):
        import numpy as np

        batch = [str(t) for t in texts]
        send(self.to_parent, {"predict": batch})
        line = self.from_parent.readline()
        if not line:
            raise SystemExit("the parent closed the pipe")
        labels = json.loads(line)["labels"]
        if len(labels) != len(batch):
            raise SystemExit(f"the parent answered {len(labels)} labels for {len(batch)} texts")
        self.calls, self.texts = self.calls + 1, self.texts + len(batch)
        return np.asarray(labels, dtype=np.int64)


def send(stream, message: dict) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def examples(raw: dict, key: str) -> list[str]:
    """A few of the perturbed samples alibi kept for the final anchor (``covered_true`` / ``covered_false``)."""
    kept = raw.get("examples") or []
    if not kept:
        return []
    return [str(t) for t in list(kept[-1].get(key, []))[:EXAMPLES]]


def explain_one(explainer, item: dict, options: dict, classifier: PipeClassifier) -> dict:
    """One text's anchor: its words, precision, coverage, the decision explained and the cost."""
    import numpy as np

    np.random.seed(options.get("seed", 0))  # the sampler draws from numpy's global generator
    calls, texts = classifier.calls, classifier.texts
    started = time.perf_counter()
    explanation = explainer.explain(item["text"], threshold=options.get("threshold", 0.95),
                                    batch_size=options.get("batch_size", 100))
    raw = explanation.data["raw"]
    return {"id": item["id"], "anchor": [str(w) for w in explanation.anchor],
            "precision": float(np.asarray(explanation.precision).reshape(-1)[0]),
            "coverage": float(explanation.coverage), "prediction": int(np.asarray(raw["prediction"]).reshape(-1)[0]),
            "success": bool(raw.get("success", False)), "tokens": len(explainer.perturbation.words),
            "seconds": round(time.perf_counter() - started, 3), "classifier_calls": classifier.calls - calls,
            "samples_classified": classifier.texts - texts,
            "examples_anchor_holds_same": examples(raw, "covered_true"),
            "examples_anchor_holds_other": examples(raw, "covered_false")}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    to_parent = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything alibi, spaCy or tqdm prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    options = json.loads(sys.stdin.readline())
    import spacy
    from alibi.explainers import AnchorText

    classifier = PipeClassifier(to_parent, sys.stdin)
    explainer = AnchorText(predictor=classifier, sampling_strategy="unknown", nlp=spacy.blank("en"),
                           sample_proba=options.get("sample_proba", 0.5))
    for item in options["texts"]:
        send(to_parent, {"anchor": explain_one(explainer, item, options, classifier)})
    send(to_parent, {"done": {"versions": versions()}})


if __name__ == "__main__":
    main()
