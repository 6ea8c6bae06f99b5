"""Explanations served with answers (``explain: true`` on ``/v1/ask``, ``prism ask --explain``).

Two parts, each computed where its model lives, and returned as data with their method and cost:

- ``passages``: per answer sentence, the passages ranked by ablation (:mod:`ray_app.llm.attribution`; the
  generate stage runs it on the LLM that wrote the answer: the fusion deployment in Serve);
- ``image_saliency``: when an image was sent, an occlusion saliency map of the image encoder for the top label,
  or for the nearest candidate when vision is not sure (:mod:`ray_app.vision.saliency`; the vision stage runs
  it, started as soon as vision has answered so that it overlaps the answer's generation).

``ms`` is the time the explanation added after the answer was written (``timings_ms.explain_ms``); ``cost`` has
each part's own time. A part that cannot be computed (no image encoder, an LLM engine without a torch model, a
failure) is empty and ``notes`` says why: the answer itself is never lost to its explanation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray_app.ask.retrieval import image_context, unidentified_image_reply
from ray_app.llm.prompting import Passage

log = logging.getLogger(__name__)


def explained_label(vision: dict | None) -> str | None:
    """The label a saliency map explains: the top label, or the nearest candidate when vision is not sure."""
    if not vision:
        return None
    if vision.get("sure") is False and vision.get("candidates"):
        return vision["candidates"][0]
    labels = vision.get("labels") or []
    return labels[0]["label"] if labels else None


async def _timed(work) -> tuple[Any, float]:
    start = time.perf_counter()
    result = await work
    return result, round((time.perf_counter() - start) * 1000, 1)


def start_saliency(stage, image: bytes | None, vision: dict | None) -> asyncio.Task | None:
    """Start the vision stage's saliency map of ``image`` (None without an image or a stage that makes maps)."""
    label = explained_label(vision)
    if image is None or label is None or not hasattr(stage, "saliency"):
        return None
    task = asyncio.ensure_future(_timed(stage.saliency(image, label)))
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # an ask that ended early never awaits it
    return task


async def explain_answer(generator, question: str, passages: list[Passage], vision: dict | None, answer: str,
                         saliency: asyncio.Task | None, image_sent: bool) -> dict:
    """The ``explanation`` of one answer: passage attribution (now) and the saliency map (awaited).

    Args:
        generator: the generate stage (its optional ``attribute(question, passages, context, answer)``).
        saliency: the task :func:`start_saliency` started, or None.
        image_sent: whether the ask had an image (a missing map is then explained in ``notes``).
    """
    start = time.perf_counter()
    notes: list[str] = []
    attribution: dict = {"sentences": []}
    cost: dict[str, Any] = {}
    llm_wrote = bool(passages) and bool(answer) and unidentified_image_reply(question, vision) is None
    if not llm_wrote:
        notes.append("no passage attribution: the answer was not written by the LLM from passages")
    elif not hasattr(generator, "attribute"):
        notes.append("no passage attribution: this generate stage cannot score passages")
    else:
        try:
            attribution, cost["passages_ms"] = await _timed(
                generator.attribute(question, passages, image_context(vision), answer))
        except Exception as exc:  # noqa: BLE001 - the answer stands without its explanation
            log.exception("passage attribution failed")
            notes.append(f"passage attribution failed: {type(exc).__name__}")
    if attribution.get("note"):
        notes.append(attribution["note"])
    image: dict = {}
    if saliency is not None:
        try:
            image, cost["image_saliency_ms"] = await saliency
        except Exception as exc:  # noqa: BLE001
            log.exception("image saliency failed")
            notes.append(f"image saliency failed: {type(exc).__name__}")
    elif image_sent:
        notes.append("no image saliency: vision gave no label to explain")
    if image.get("note"):
        notes.append(image["note"])
    cost |= {k: attribution[k] for k in ("forward_passes", "passages_scored", "sentences_total") if k in attribution}
    if "evaluations" in image:
        cost["image_evaluations"] = image["evaluations"]
    method = {"passages": attribution.get("method"), "image_saliency": image.get("method")}
    return {"passages": attribution["sentences"], "image_saliency": image.get("image_saliency"),
            "image_label": image.get("label"), "ms": round((time.perf_counter() - start) * 1000, 1),
            "cost": cost, "method": {k: v for k, v in method.items() if v}, "notes": notes}
