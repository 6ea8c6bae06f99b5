"""Readiness and retry-safe asks on the real Serve app (issue 19): /readyz asks every deployment and the database,
uncached; an ask retried with the same Idempotency-Key returns the first answer without a second pair of audit
records or a second token charge. (Replica kills and a database restart: tests/serving/test_chaos.py, slow.)"""

import json
import uuid

import httpx
import psycopg

from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)


def test_readyz_checks_every_deployment_and_the_database(prism_app):
    r = httpx.get(prism_app.url + "/readyz", timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"vision", "rag", "fusion", "audit", "database"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["rag"]["database"] == "ok" and body["checks"]["fusion"]["engine"]
    live = httpx.get(prism_app.url + "/healthz", timeout=30).json()
    assert live["status"] == "ok" and live["replica"]


def _tokens_used(database_url: str, key_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT coalesce(sum(used), 0) FROM api_key_usage WHERE key_id = %s AND kind = 'tokens'",
                           (key_id,)).fetchone()
    return int(row[0])


def _records(database_url: str, ask_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT record->>'event' FROM audit_log WHERE record->>'ask_id' = %s OR audit_id = %s"
                            " ORDER BY seq", (ask_id, ask_id)).fetchall()
    return [r[0] for r in rows]


def test_an_ask_retried_with_its_idempotency_key_is_answered_once(prism_app):
    from ray_app.auth.keys import create_key
    from ray_app.store import Store

    with Store(prism_app.database_url, migrate=False) as store:
        row, key = create_key(store, "idempotency", rpm=1000, tokens_per_day=10**9)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
    body = {"question": "Where do frogs live?", "k": 3, "max_new_tokens": 12}
    first = httpx.post(prism_app.url + "/v1/ask", json=body, headers=headers, timeout=300)
    assert first.status_code == 200, first.text
    answer = first.json()
    charged = _tokens_used(prism_app.database_url, row.id)
    assert charged == answer["usage"]["total_tokens"] > 0
    assert _records(prism_app.database_url, answer["id"]) == ["started", "completed"]

    again = httpx.post(prism_app.url + "/v1/ask", json=body, headers=headers, timeout=300)
    assert again.status_code == 200 and again.json() == answer
    streamed = httpx.post(prism_app.url + "/v1/ask", json=body | {"stream": True}, headers=headers, timeout=300)
    events = [line[7:] for line in streamed.text.splitlines() if line.startswith("event: ")]
    done = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
    assert events[0] == "meta" and events[-1] == "done"
    assert {k: done[k] for k in ("id", "answer", "citations", "usage")} == \
        {k: answer[k] for k in ("id", "answer", "citations", "usage")}
    assert _tokens_used(prism_app.database_url, row.id) == charged  # no second charge
    assert _records(prism_app.database_url, answer["id"]) == ["started", "completed"]  # no second ask
    with psycopg.connect(prism_app.database_url) as conn:
        asks = conn.execute("SELECT count(DISTINCT record->>'ask_id') FROM audit_log WHERE record->>'caller' = %s",
                            (row.id,)).fetchone()[0]
    assert asks == 1

    other = httpx.post(prism_app.url + "/v1/ask", json=body | {"question": "What is the Moon?"}, headers=headers,
                       timeout=300)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    bad = httpx.post(prism_app.url + "/v1/ask", json=body, headers=headers | {"Idempotency-Key": "has space"},
                     timeout=60)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
