"""Prism's load mix (HTTP only): search 60 %, text ask 30 %, image ask 10 %, think time 1-5 s.

    locust -f loadtests/locustfile.py --headless -u 100 -r 10 -t 60s --host http://127.0.0.1:8000
    prism bench serve --users 100 --duration 60 --json      # runs this file and writes the report

Asks stream (``stream: true``); besides each request's total time the file reports, as extra
entries, time to first token (``<name>:ttft``, request type ``TTFT``) and the server's per-stage
timings from the final event (``<name>:<stage>``, request type ``STAGE``), so the report can show
where the time goes.

The queries and questions are ``load_mix.json`` next to this file; it speaks HTTP only and imports
nothing of Prism, so a load tester needs only Locust. Environment: ``PRISM_LOAD_MAX_NEW_TOKENS``
(answer length of the asks; default: the mix's ``max_new_tokens``), ``PRISM_LOAD_STAMPS`` (a folder
of PNG stamps for the image asks).
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from pathlib import Path

from locust import HttpUser, between, events, task

MIX = json.loads(Path(__file__).with_name("load_mix.json").read_text())
SEARCHES, QUESTIONS, IMAGE_QUESTIONS = MIX["searches"], MIX["questions"], MIX["image_questions"]
MAX_NEW_TOKENS = int(os.environ.get("PRISM_LOAD_MAX_NEW_TOKENS") or MIX["max_new_tokens"])
STAMPS = Path(os.environ.get("PRISM_LOAD_STAMPS", "/usr/share/tuxpaint/stamps"))


def _load_images(limit: int = 12) -> list[str]:
    """Base64 of a few stamp PNGs (small, real images)."""
    paths = sorted(STAMPS.glob("animals/**/*.png"))[:limit] + sorted(STAMPS.glob("space/*.png"))[:4]
    return [base64.b64encode(p.read_bytes()).decode() for p in paths if p.stat().st_size < 200_000]


IMAGES = _load_images()


def fire(request_type: str, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
    events.request.fire(request_type=request_type, name=name, response_time=ms, response_length=length,
                        exception=exc, context={})


class PrismUser(HttpUser):
    """One person using Prism: mostly searching, sometimes asking, occasionally about a picture."""

    wait_time = between(1, 5)

    @task(6)
    def search(self) -> None:
        body = {"query": random.choice(SEARCHES), "k": 5}
        with self.client.post("/v1/search", json=body, name="search", catch_response=True) as r:
            if r.status_code != 200 or "results" not in r.json():
                r.failure(f"status {r.status_code}")

    @task(3)
    def ask(self) -> None:
        self._ask("ask", {"question": random.choice(QUESTIONS)})

    @task(1)
    def ask_image(self) -> None:
        if not IMAGES:
            return self._ask("ask", {"question": random.choice(QUESTIONS)})
        self._ask("ask_image", {"question": random.choice(IMAGE_QUESTIONS), "image": random.choice(IMAGES)})

    def _ask(self, name: str, body: dict) -> None:
        body = body | {"stream": True, "max_new_tokens": MAX_NEW_TOKENS}
        start = time.perf_counter()
        first, done = None, None
        with self.client.post("/v1/ask", json=body, name=name, stream=True, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                return
            for event, data in _sse(r.iter_lines(decode_unicode=True)):
                if event == "token" and first is None:
                    first = (time.perf_counter() - start) * 1000
                elif event == "done":
                    done = data
                elif event == "error":
                    r.failure(f"stream error: {data}")
                    return
            if done is None:
                r.failure("stream ended without a done event")
                return
            r.success()
        fire("TTFT", f"{name}:ttft", first if first is not None else (time.perf_counter() - start) * 1000)
        for stage, ms in (done.get("timings_ms") or {}).items():
            fire("STAGE", f"{name}:{stage}", float(ms))


def _sse(lines):
    """(event, data) pairs from a server-sent-events line iterator."""
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])
            event = None
