"""Serve's structured logs on the real app (serving/config.yaml: logging_config encoding JSON): each replica's file
under the Ray session's logs/serve/ holds one JSON object per line, Prism's records among Serve's, with Serve's
request id (the X-Request-Id response header) in every deployment the request reached and Prism's ask id."""

import json
import time
from pathlib import Path

import httpx

from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)


def serve_log_records() -> list[dict]:
    """Every JSON record of the Prism app's replica log files in this Ray session (each complete line must parse;
    other apps' replicas, which other tests start in the same session, log as they are configured)."""
    import ray._private.worker as ray_worker  # the session's log folder (tests only)

    folder = Path(ray_worker._global_node.get_session_dir_path()) / "logs" / "serve"
    records = []
    for path in sorted(folder.glob("replica_prism_*.log")):
        text = path.read_text(errors="replace")
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # the last one may be mid-write
        for line in lines:
            if line.strip():
                records.append(json.loads(line) | {"_file": path.name})
    return records


def _wait_for(predicate, timeout_s: float = 30) -> list[dict]:
    """Serve's records once one satisfies ``predicate`` (files are written by other processes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = serve_log_records()
        if any(predicate(r) for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def test_an_ask_is_logged_as_json_with_its_request_and_ask_ids(prism_app):
    r = httpx.post(prism_app.url + "/v1/ask", json={"question": "Where do frogs live?", "max_new_tokens": 8},
                   headers=prism_app.headers, timeout=600)
    assert r.status_code == 200, r.text
    request_id, ask_id = r.headers["x-request-id"], r.json()["id"]
    records = _wait_for(lambda rec: rec.get("ask_id") == ask_id)
    ended = [rec for rec in records if rec.get("ask_id") == ask_id and rec.get("name") == "ray_app.ask.service"]
    assert len(ended) == 1, [rec for rec in records if rec.get("request_id") == request_id]
    rec = ended[0]
    assert rec["message"] == f"ask {ask_id} ended: done" and rec["outcome"] == "done"
    assert rec["request_id"] == request_id and rec["levelname"] == "INFO"
    assert rec["deployment"] == "prism_ingress" and rec["application"] == "prism" and rec["replica"]  # app_deployment
    assert {"asctime", "levelname", "name", "message"} <= set(rec)
    # Serve carries the request id into the deployments the ask called: their access lines carry it too
    reached = {r["deployment"] for r in records if r.get("request_id") == request_id}
    assert {f"prism_{name}" for name in ("ingress", "rag", "fusion", "audit")} <= reached, reached
