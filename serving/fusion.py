"""The ``fusion`` deployment: the LLM writes a cited answer from numbered passages, streaming tokens.

The LLM runs in the engine that ``PRISM_LLM_ENGINE`` names (:mod:`ray_app.llm.engines`; default
``torch``: continuous batching, where a request joins the running batch at the next token step).
Up to ``PRISM_FUSION_MAX_BATCH_SIZE`` answers decode together; further requests wait in arrival
order for a slot. ``max_new_tokens`` is capped by ``PRISM_MAX_NEW_TOKENS``; ``PRISM_FUSION_THREADS``
sets the engine's CPU threads per replica and ``PRISM_FUSION_NICE`` their priority.
"""

from __future__ import annotations

import logging
import os

from ray import serve

from ray_app.ask.stages import BatchedGenerate
from ray_app.llm.prompting import Passage
from ray_app.settings import get_settings
from ray_app.telemetry import metrics
from ray_app.telemetry.logs import attach_to_serve
from ray_app.telemetry.tracing import stage_span

log = logging.getLogger(__name__)


def thread_nices() -> dict[int, int]:
    """Nice value by thread id, for this process's threads."""
    nices = {}
    for tid in map(int, os.listdir("/proc/self/task")):
        try:
            nices[tid] = os.getpriority(os.PRIO_PROCESS, tid)
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return nices


def lower_priority(nice: int) -> int:
    """Raise every thread of this process to at least ``nice`` (threads started later inherit it); returns how
    many threads were changed.

    On Linux ``nice`` is per thread, so the process's existing threads (the decode loop, torch's OpenMP pool,
    Ray's workers) are set one by one. At a lower priority decoding takes only what searches, the other stages
    and anything else on the machine leave (``PRISM_FUSION_NICE``, off by default: see its description).
    """
    changed = 0
    for tid, current in thread_nices().items():
        if current < nice:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:  # a thread that ended meanwhile
                continue
            changed += 1
    return changed


@serve.deployment(name="fusion", graceful_shutdown_timeout_s=130, graceful_shutdown_wait_loop_s=2)
class FusionDeployment:
    """One LLM engine (``PRISM_LLM_ENGINE``, model + ``PRISM_LLM_ADAPTER``) per replica."""

    def __init__(self, threads: int | None = None, max_batch_size: int | None = None):
        attach_to_serve()  # Prism's loggers write through Serve's (JSON, with the request id)
        import torch

        from ray_app.llm.engines import build_engine

        self.settings = get_settings()
        threads = threads or self.settings.fusion_threads
        torch.set_num_threads(threads)
        self.engine = build_engine(settings=self.settings, max_batch_size=max_batch_size, threads=threads)
        self.generator = BatchedGenerate(self.engine, self.settings)
        if self.settings.fusion_nice:
            changed = lower_priority(self.settings.fusion_nice)
            log.info("fusion: %d threads at nice %d", changed, self.settings.fusion_nice)

    async def versions(self) -> dict:
        """Model and adapter versions for the audit record."""
        return await self.generator.versions()

    def check_health(self) -> None:
        """Serve's health probe: a replica whose decode loop has stopped gets no traffic and is replaced."""
        if not self.engine.alive():
            raise RuntimeError(f"the {self.engine.name} decode loop is not running")

    def ready(self) -> dict:
        """``/readyz``: the model is loaded and its decode loop runs (fusion uses no database)."""
        self.check_health()
        return {"engine": self.engine.name, **{k: v for k, v in self.engine.versions().items() if k == "model"}}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Queue depth for the autoscaling policy (``serving/autoscaling.py``): rows decoding plus requests
        waiting for a batch slot, and the waiting ones alone."""
        stats = self.engine.stats()
        rows, waiting = float(stats["running"] + stats["waiting"]), float(stats["waiting"])
        metrics.set_decode_queue(rows, waiting)  # the same numbers for Prometheus (prism_decode_queue_depth)
        return {"decode_rows": rows, "decode_waiting": waiting}

    def stats(self) -> dict:
        """The engine's rows and queue (load, and whether a gone client's row was freed), and the lowest nice
        value among this replica's threads."""
        return {"engine": self.engine.name, **self.engine.stats(), "nice": min(thread_nices().values())}

    async def generate(self, question: str, passages: list[Passage], context: str | None, max_new_tokens: int,
                       traceparent: str | None = None):
        """Stream the answer's text pieces (use with ``handle.options(stream=True)``)."""
        limit = max(1, min(int(max_new_tokens), self.settings.max_new_tokens))
        with stage_span("fusion", traceparent, **{"prism.max_new_tokens": limit}) as span:
            pieces = 0
            async for piece in self.generator.generate(question, passages, context, limit):
                pieces += 1
                yield piece
            span.set_attribute("prism.pieces", pieces)

    async def attribute(self, question: str, passages: list[Passage], context: str | None, answer: str) -> dict:
        """Per answer sentence, the passages ranked by ablation on this replica's model (``explain: true``)."""
        return await self.generator.attribute(question, passages, context, answer)

    def __del__(self):
        if getattr(self, "engine", None) is not None:
            self.engine.close()
