"""Access control and request limits over real HTTP on the real Serve app: 401 / 403 / 429 with their headers,
limits before parsing (413, 415, host), security headers, and the caller in the audit record."""

import json
import re
import select
import socket
from urllib.parse import urlparse

import httpx
import psycopg

from tests.serving.harness import prism_app_fixture  # noqa: F401  (registers `prism_app`)

ROUTES = [("GET", "/v1/models"), ("GET", "/v1/models/prism"), ("POST", "/v1/search"), ("POST", "/v1/ask"),
          ("POST", "/v1/chat/completions"), ("GET", "/v1/documents/x"), ("GET", "/v1/images/x"),
          ("GET", "/v1/images/x/file")]
BODIES = {"/v1/search": {"query": "frogs"}, "/v1/ask": {"question": "Where do frogs live?"},
          "/v1/chat/completions": {"messages": [{"role": "user", "content": "Where do frogs live?"}]}}


def _key(app, name: str, **limits) -> tuple[str, str]:
    """A new key straight in the app's database (what `prism keys create` does)."""
    from ray_app.auth.keys import create_key
    from ray_app.store import Store

    with Store(app.database_url, migrate=False) as store:
        row, key = create_key(store, name, limits.get("rpm", 1000), limits.get("tokens_per_day", 10**9))
    return row.id, key


def _call(app, method: str, path: str, key: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if method == "POST":
        kwargs.setdefault("json", BODIES.get(path, {}))
    return httpx.request(method, app.url + path, headers=headers | kwargs.pop("headers", {}), timeout=600, **kwargs)


def test_every_v1_route_needs_a_key(prism_app):
    health = httpx.get(prism_app.url + "/healthz").json()
    assert health["auth"] == "on"
    for method, path in ROUTES:
        for key in (None, "prism_000000000000_" + "0" * 64, "sk-something-else"):
            r = _call(prism_app, method, path, key)
            assert r.status_code == 401, (method, path, key, r.text)
            assert r.json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_gets_403_at_once(prism_app):
    key_id, key = _key(prism_app, "to-revoke")
    assert _call(prism_app, "POST", "/v1/search", key).status_code == 200
    with psycopg.connect(prism_app.database_url, autocommit=True) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
    for method, path in ROUTES:
        r = _call(prism_app, method, path, key)
        assert r.status_code == 403 and r.json()["error"]["code"] == "revoked_api_key", (path, r.text)


def test_requests_per_minute_get_429_with_headers(prism_app):
    _, key = _key(prism_app, "rpm-3", rpm=3)
    ok = [_call(prism_app, "POST", "/v1/search", key) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
    assert ok[0].headers["x-ratelimit-limit-requests"] == "3" and int(ok[0].headers["x-ratelimit-reset-requests"]) <= 60
    refused = _call(prism_app, "GET", "/v1/models", key)
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"  # OpenAI's shape on /v1/models


def test_tokens_per_day_get_429_and_usage_is_charged(prism_app):
    key_id, key = _key(prism_app, "tokens-1", tokens_per_day=1)
    first = _call(prism_app, "POST", "/v1/ask", key, json={"question": "Where do frogs live?", "max_new_tokens": 4})
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-remaining-tokens"] == "1"
    used = first.json()["usage"]["total_tokens"]
    with psycopg.connect(prism_app.database_url, autocommit=True) as conn:
        (charged,) = conn.execute("SELECT used FROM api_key_usage WHERE key_id = %s AND kind = 'tokens'",
                                  (key_id,)).fetchone()
        (record,) = conn.execute("SELECT record FROM audit_log WHERE audit_id = %s ORDER BY seq DESC LIMIT 1",
                                 (first.json()["audit"]["audit_id"],)).fetchone()
    assert charged == used > 0
    assert record["caller"] == key_id and key not in json.dumps(record)  # the key id, never the key
    second = _call(prism_app, "POST", "/v1/chat/completions", key)
    assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"
    assert int(second.headers["retry-after"]) >= 1 and second.headers["x-ratelimit-remaining-tokens"] == "0"
    assert _call(prism_app, "POST", "/v1/search", key).status_code == 200  # search spends no LLM tokens


def test_strict_content_type(prism_app):
    for path, content_type in [("/v1/search", "text/plain"), ("/v1/ask", "application/x-www-form-urlencoded"),
                               ("/v1/chat/completions", "multipart/form-data; boundary=x"), ("/v1/search", None)]:
        headers = {"Authorization": f"Bearer {prism_app.key}"}
        if content_type:
            headers["Content-Type"] = content_type
        r = httpx.post(prism_app.url + path, content=b'{"query": "frogs"}', headers=headers, timeout=60)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", (path, r.text)


def _raw_request(app, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Status and body of one request written on a socket (a Content-Length the client never sends in full)."""
    url = urlparse(app.url)
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        data = _read_response(sock)
    return int(data.split(b" ", 2)[1]), data


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length body, read from the socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return data
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return head + b"\r\n\r\n" + body


def test_body_size_from_content_length_before_reading(prism_app):
    """A request that announces 100 MB is refused before one byte of its body is read."""
    head = (f"POST /v1/ask HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {prism_app.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {100 * 1024 * 1024}\r\n")
    status, data = _raw_request(prism_app, head)
    assert status == 413 and b"body_too_large" in data


def _chunked_request(app, path: str, content_type: str, megabytes: int, prefix: bytes = b"") -> tuple[int, bytes, int]:
    """Send up to ``megabytes`` of a chunked body (no Content-Length) until the server answers; returns its
    status, the response and how many megabytes went out."""
    url = urlparse(app.url)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {app.key}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (1024 * 1024) + b" " * (1024 * 1024) + b"\r\n"
    sent = 0
    with socket.create_connection((url.hostname, url.port), timeout=60) as sock:
        sock.sendall(head.encode() + (b"%x\r\n" % len(prefix) + prefix + b"\r\n" if prefix else b""))
        try:
            for _ in range(megabytes):
                if select.select([sock], [], [], 0)[0]:
                    break  # the server has answered
                sock.sendall(chunk)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_response(sock)
    return int(data.split(b" ", 2)[1]), data, sent


def test_body_size_while_streaming(prism_app):
    """A chunked body (no Content-Length) is refused with 413 once it passes 16 MB. (How much of the rest the client
    manages to write first depends on socket buffers and Serve's proxy; on loopback it may be all of it.)"""
    image_part = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                  b"Content-Type: image/png\r\n\r\n")
    for path, content_type, prefix in [("/v1/search", "application/json", b""),
                                       ("/v1/ask", "multipart/form-data; boundary=x", image_part)]:
        status, data, sent = _chunked_request(prism_app, path, content_type, megabytes=100, prefix=prefix)
        assert status == 413 and b"body_too_large" in data, (path, sent, data[:500])


def test_multipart_parts_and_chat_messages(prism_app):
    fields = {f"f{i}": "x" for i in range(1000)} | {"question": "What is this?"}
    r = httpx.post(prism_app.url + "/v1/ask", data=fields, files={"image": ("a.png", b"x", "image/png")},
                   headers=prism_app.headers, timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_parts", r.text
    messages = [{"role": "user", "content": "hi"}] * 10_000
    r = httpx.post(prism_app.url + "/v1/chat/completions", json={"messages": messages}, headers=prism_app.headers,
                   timeout=120)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_messages" and r.json()["error"]["type"]


def test_untrusted_host_names(prism_app):
    r = httpx.get(prism_app.url + "/healthz", headers={"Host": "attacker.example"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host"
    assert httpx.get(prism_app.url.replace("127.0.0.1", "localhost") + "/healthz").status_code == 200


def test_security_headers(prism_app):
    page = httpx.get(prism_app.url + "/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    api = _call(prism_app, "POST", "/v1/search", prism_app.key)
    assert api.headers["x-content-type-options"] == "nosniff"
    assert api.headers["content-security-policy"].startswith("default-src 'none'")
    assert "access-control-allow-origin" not in api.headers  # no CORS


def test_rate_limits_hold_across_two_ingress_replicas(prism_app):
    """A second application: two more ingress replicas over the same deployments, under /two. A key's requests
    per minute are counted once across both replicas (the count lives in Postgres), not once per replica."""
    from ray import serve

    from serving.ingress import Ingress

    handles = [serve.get_deployment_handle(name, app_name="prism") for name in ("vision", "rag", "fusion", "audit")]
    two = Ingress.options(name="ingress", num_replicas=2, autoscaling_config=None, ray_actor_options={"num_cpus": 0})
    serve.run(two.bind(*handles), name="prism-two", route_prefix="/two")
    try:
        replicas = {httpx.get(prism_app.url + "/two/healthz", timeout=60).json()["replica"] for _ in range(20)}
        assert len(replicas) == 2  # requests are spread over both
        _, key = _key(prism_app, "two-replicas", rpm=10)
        responses = [_call(prism_app, "GET", "/two/v1/models", key) for _ in range(30)]
        assert [r.status_code for r in responses].count(200) == 10, [r.status_code for r in responses]
        refused = [r for r in responses if r.status_code == 429]
        assert len(refused) == 20 and refused[0].json()["error"]["type"] == "requests"  # OpenAI shape under /two
    finally:
        serve.delete("prism-two")


def _serve_processes() -> list:
    """This session's Serve HTTP proxy and ingress replica processes (children of the Ray this process started)."""
    import os

    import psutil

    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if "ProxyActor" in title or "ServeReplica:prism:ingress" in title:
            found.append(proc)
    return found


def test_oversized_bodies_keep_server_memory_bounded(prism_app):
    """While a 100 MB body, 1,000 multipart parts and 10,000 chat messages are refused (413), the resident memory of
    Serve's proxy and the ingress replica grows by far less than the bodies: they are not buffered whole."""
    import threading
    import time

    processes = _serve_processes()
    assert processes, "no proxy or ingress process found"

    def rss() -> dict[int, int]:
        sizes = {}
        for proc in processes:
            try:
                sizes[proc.pid] = proc.memory_info().rss
            except Exception:  # a process that went away
                pass
        return sizes

    baseline, stop = rss(), threading.Event()
    peak = dict(baseline)

    def sample():
        while not stop.is_set():
            for pid, size in rss().items():
                peak[pid] = max(peak.get(pid, 0), size)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        image_part = (b'--x\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                      b"Content-Type: image/png\r\n\r\n")
        status, _, _ = _chunked_request(prism_app, "/v1/ask", "multipart/form-data; boundary=x", 100, image_part)
        assert status == 413
        status, _, _ = _chunked_request(prism_app, "/v1/search", "application/json", 100)
        assert status == 413
        test_multipart_parts_and_chat_messages(prism_app)
    finally:
        stop.set()
        sampler.join()
    growth_mb = {" ".join(p.cmdline())[:40]: round((peak[p.pid] - baseline.get(p.pid, 0)) / 2**20)
                 for p in processes if p.pid in peak}
    assert all(g < 48 for g in growth_mb.values()), f"peak growth (MB) while refusing the bodies: {growth_mb}"
