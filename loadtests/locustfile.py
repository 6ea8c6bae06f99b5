"""Prism's load mix (HTTP only): search 60 %, text ask 30 %, image ask 10 %, think time 1-5 s.

    locust -f loadtests/locustfile.py --headless -u 100 -r 10 -t 60s --host http://127.0.0.1:8000
    prism bench serve --users 100 --duration 60 --json      # runs this file and writes the report
    prism bench serve --capacity --json                     # runs it at 10, 25, 50, 100, 150 users

Asks stream (``stream: true``); besides each request's total time the file reports, as extra
entries, time to first token (``<name>:ttft``, request type ``TTFT``) and the server's per-stage
timings from the final event (``<name>:<stage>``, request type ``STAGE``), so the report can show
where the time goes.

Every request also ends in exactly one outcome, reported as an entry ``<name>:<outcome>`` of request
type ``OUTCOME`` (its time: until that outcome): ``ok`` (200, and for an ask the stream's ``done``
event), ``shed`` (refused for overload: 503 with ``Retry-After``, the body Prism's ``overloaded``
error or Serve's own queue refusal), ``4xx``, ``5xx`` (any other 5xx, e.g. a 503 ``unavailable``),
``timeout`` (no response headers, or no next stream event, within ``PRISM_LOAD_TIMEOUT_S``) or
``error`` (an in-band ``error`` event, a stream without ``done``, a broken connection). A shed is not a
failure: its request is reported under ``<name>:shed``, so ``search`` and ``ask`` keep the latencies
of the requests that were let in. An admitted ask that times out before its first token reports its
wait as a lower bound of its time to first token. An answered ask also reports whether the LLM wrote
it (``<name>:llm``, request type ``ANSWER``: its ``meta`` event listed passages) or the service said
that the sources do not say without calling the LLM (``<name>:no_sources``).

The queries and questions are ``load_mix.json`` next to this file; it speaks HTTP only and imports
nothing of Prism, so a load tester needs only Locust. Environment: ``PRISM_LOAD_MAX_NEW_TOKENS``
(answer length of the asks; default: the mix's ``max_new_tokens``), ``PRISM_LOAD_STAMPS`` (a folder
of PNG stamps for the image asks), ``PRISM_LOAD_TIMEOUT_S`` (the client's timeout, default 30 s),
``PRISM_LOAD_THINK_S`` (think time ``MIN,MAX`` in seconds, default ``1,5``), ``PRISM_API_KEY`` (sent as
``Authorization: Bearer``; create one with limits above the load, e.g. ``prism keys create load --rpm 1000000
--tokens-per-day 1000000000``).
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from pathlib import Path

import requests
from locust import HttpUser, between, events, task
from urllib3.exceptions import ReadTimeoutError

MIX = json.loads(Path(__file__).with_name("load_mix.json").read_text())
SEARCHES, QUESTIONS, IMAGE_QUESTIONS = MIX["searches"], MIX["questions"], MIX["image_questions"]
MAX_NEW_TOKENS = int(os.environ.get("PRISM_LOAD_MAX_NEW_TOKENS") or MIX["max_new_tokens"])
STAMPS = Path(os.environ.get("PRISM_LOAD_STAMPS", "/usr/share/tuxpaint/stamps"))
TIMEOUT_S = float(os.environ.get("PRISM_LOAD_TIMEOUT_S") or 30)
THINK_S = [float(x) for x in (os.environ.get("PRISM_LOAD_THINK_S") or "1,5").split(",")]
API_KEY = os.environ.get("PRISM_API_KEY", "")


def _load_images(limit: int = 12) -> list[str]:
    """Base64 of a few stamp PNGs (small, real images)."""
    paths = sorted(STAMPS.glob("animals/**/*.png"))[:limit] + sorted(STAMPS.glob("space/*.png"))[:4]
    return [base64.b64encode(p.read_bytes()).decode() for p in paths if p.stat().st_size < 200_000]


IMAGES = _load_images()


def fire(request_type: str, name: str, ms: float, length: int = 0, exc: Exception | None = None) -> None:
    events.request.fire(request_type=request_type, name=name, response_time=ms, response_length=length,
                        exception=exc, context={})


def since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def refusal_outcome(r) -> str:
    """The outcome of a request that got no 200: ``shed``, ``4xx``, ``5xx``, ``timeout`` or ``error``."""
    if r.status_code == 0:  # no response: requests raised before the headers came
        return "timeout" if isinstance(r.error, requests.Timeout) else "error"
    if r.status_code == 503 and r.headers.get("Retry-After") and error_code(r) in (None, "overloaded"):
        return "shed"  # Prism's admission gate or a full deployment queue; None: Serve's proxy refused it
    if 400 <= r.status_code < 500:
        return "4xx"
    return "5xx" if r.status_code >= 500 else "error"


def error_code(r) -> str | None:
    """Prism's ``{"error": {"code"}}`` of a response, or None when the body is not Prism's error JSON."""
    try:
        body = r.json()
    except ValueError:
        return None
    return (body.get("error") or {}).get("code") if isinstance(body, dict) else None


def is_timeout(exc: Exception) -> bool:
    """A timeout, also when requests wraps a read timeout during a stream as a ConnectionError."""
    return isinstance(exc, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in exc.args)


def settle_refusal(r, name: str) -> str:
    """Record a request that got no 200 in Locust's stats (a shed as a success under ``NAME:shed``)."""
    outcome = refusal_outcome(r)
    if outcome == "shed":
        r.request_meta["name"] = f"{name}:shed"
        r.success()
    elif r.status_code == 0:
        r.failure(f"client timeout after {TIMEOUT_S:g} s" if outcome == "timeout" else f"no response: {r.error!r}")
    else:
        r.failure(f"status {r.status_code}: {r.text[:200]}")
    return outcome


class PrismUser(HttpUser):
    """One person using Prism: mostly searching, sometimes asking, occasionally about a picture."""

    wait_time = between(*THINK_S)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    @task(6)
    def search(self) -> None:
        body = {"query": random.choice(SEARCHES), "k": 5}
        start = time.perf_counter()
        with self.client.post("/v1/search", json=body, name="search", catch_response=True, timeout=TIMEOUT_S) as r:
            if r.status_code != 200:
                outcome = settle_refusal(r, "search")
            elif _has_results(r):
                outcome = "ok"
                r.success()
            else:
                outcome = "error"
                r.failure("200 without results")
        fire("OUTCOME", f"search:{outcome}", since(start))

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
        first, done, passages = None, None, 0
        with self.client.post("/v1/ask", json=body, name=name, stream=True, catch_response=True,
                              timeout=TIMEOUT_S) as r:
            if r.status_code != 200:
                outcome = settle_refusal(r, name)
            else:
                try:
                    outcome, first, done, passages = read_answer(r, start)
                finally:
                    r.close()  # a client that gives up hangs up: the server frees the answer's place
        fire("OUTCOME", f"{name}:{outcome}", since(start))
        if done is not None:
            fire("ANSWER", f"{name}:{'llm' if passages else 'no_sources'}", since(start))
        if first is not None:
            fire("TTFT", f"{name}:ttft", first)
        for stage, ms in ((done or {}).get("timings_ms") or {}).items():
            fire("STAGE", f"{name}:{stage}", float(ms))


def read_answer(r, start: float) -> tuple[str, float | None, dict | None, int]:
    """Read an admitted ask's event stream; mark it in Locust's stats.

    Returns:
        The outcome, the time to first token in ms (a lower bound when the client timed out before
        it; None when the stream failed before it), the ``done`` event's data, and how many passages
        the ``meta`` event listed (none: the answer did not need the LLM).
    """
    first, done, passages = None, None, 0
    try:
        for event, data in _sse(r.iter_lines(decode_unicode=True)):
            if event == "meta":
                passages = len(data.get("passages") or [])
            elif event == "token" and first is None:
                first = since(start)
            elif event in ("done", "flagged"):  # flagged: an answer the injection defences withheld
                done = data
            elif event == "error":
                r.failure(f"stream error: {data}")
                return "error", first, None, passages
    except (requests.RequestException, ValueError) as exc:
        if isinstance(exc, requests.RequestException) and is_timeout(exc):
            r.failure(f"client timeout after {TIMEOUT_S:g} s")
            return "timeout", first if first is not None else since(start), None, passages
        r.failure(f"stream broken: {type(exc).__name__}")
        return "error", first, None, passages
    if done is None:
        r.failure("stream ended without a done event")
        return "error", first, None, passages
    r.success()
    return "ok", first if first is not None else since(start), done, passages


def _has_results(r) -> bool:
    try:
        return "results" in r.json()
    except ValueError:
        return False


def _sse(lines):
    """(event, data) pairs from a server-sent-events line iterator."""
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])
            event = None
