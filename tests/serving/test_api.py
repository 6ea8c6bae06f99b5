"""The HTTP API on the real Serve app: routes, 4xx JSON errors for each bad input, SSE, config."""

import base64
import json

import httpx
import pytest

from serving.app import CONFIG_PATH, load_config
from tests.serving.harness import FROG_PNG, png_bytes, prism_app_fixture  # noqa: F401  (registers `prism_app`)


def _post(app, path, **kwargs) -> httpx.Response:
    return httpx.post(app.url + path, timeout=600, headers=app.headers | kwargs.pop("headers", {}), **kwargs)


def _get(app, path, **kwargs) -> httpx.Response:
    return httpx.get(app.url + path, timeout=600, headers=app.headers, **kwargs)


def _assert_error(r: httpx.Response, status: int, code: str | None = None, openai: bool = False) -> dict:
    """Prism's error shape, or OpenAI's (``type`` and ``param`` too) on the OpenAI-compatible routes."""
    assert r.status_code == status, r.text
    body = r.json()
    keys = {"code", "message", "type", "param"} if openai else {"code", "message"}
    assert set(body) == {"error"} and set(body["error"]) == keys and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_config_is_valid_serve_build_format():
    config = load_config(CONFIG_PATH)
    deployments = {d.name: d for d in config.applications[0].deployments}
    assert set(deployments) == {"ingress", "vision", "rag", "fusion", "audit"}
    for dep in deployments.values():
        assert dep.autoscaling_config["max_replicas"] >= dep.autoscaling_config["min_replicas"] >= 1
        assert dep.max_ongoing_requests > 0 and dep.ray_actor_options.num_cpus > 0


def test_health_docs_page(prism_app):
    health = httpx.get(prism_app.url + "/healthz").json()
    assert health["status"] == "ok" and health["versions"]["model"].startswith("smollm2-135m-instruct@")
    paths = httpx.get(prism_app.url + "/openapi.json").json()["paths"]
    assert {"/v1/search", "/v1/ask", "/v1/chat/completions", "/v1/documents/{doc_id}", "/v1/images/{image_id}"} <= set(paths)
    assert "swagger" in httpx.get(prism_app.url + "/docs").text.lower()
    page = httpx.get(prism_app.url + "/")
    assert page.status_code == 200 and "<title>Prism</title>" in page.text


def test_search_documents_images(prism_app):
    r = _post(prism_app, "/v1/search", json={"query": "where do frogs live", "k": 3})
    assert r.status_code == 200
    results = r.json()["results"]
    assert results[0]["title"] == "Frog" and len(results) == 3
    doc = _get(prism_app, f"/v1/documents/{results[0]['doc_id']}").json()
    assert doc["title"] == "Frog" and doc["chunks"][0]["text"].startswith("Frog: ")
    frog_image = prism_app.ids["images"]["frog"]
    meta = _get(prism_app, f"/v1/images/{frog_image}").json()
    assert meta["caption"] == "A frog." and "path" not in meta and "/usr/share" not in json.dumps(meta)
    raw = _get(prism_app, f"/v1/images/{frog_image}/file")
    assert raw.headers["content-type"] == "image/png" and raw.content == FROG_PNG.read_bytes()
    _assert_error(_get(prism_app, "/v1/documents/nope"), 404, "not_found")


def test_bad_inputs_get_their_4xx(prism_app):
    question = "What is this?"
    frog = FROG_PNG.read_bytes()
    cases = [
        ({"json": {"k": 3}}, 422, "invalid_request"),  # no question
        ({"json": {"question": "   "}}, 422, "invalid_request"),
        ({"json": {"question": question, "image": base64.b64encode(b"plain text, not an image").decode()}},
         415, "unsupported_media_type"),
        ({"json": {"question": question, "image": base64.b64encode(frog[:1500]).decode()}}, 422, "invalid_image"),
        ({"json": {"question": question, "image": "%%%not-base64%%%"}}, 400, "invalid_base64"),
        ({"json": {"question": question, "k": 0}}, 422, "invalid_request"),
        ({"json": {"question": question, "k": 500}}, 422, "invalid_request"),
        ({"content": b'{"question": "What is', "headers": {"content-type": "application/json"}}, 400, "malformed_json"),
        ({"files": {"image": ("x.png", b"GIF89a-but-broken", "image/gif")}, "data": {"question": question}},
         422, "invalid_image"),
    ]
    for kwargs, status, code in cases:
        _assert_error(_post(prism_app, "/v1/ask", **kwargs), status, code)
    _assert_error(_post(prism_app, "/v1/search", json={"query": "frogs", "k": 0}), 422)
    _assert_error(_post(prism_app, "/v1/search", content=b"{", headers={"content-type": "application/json"}), 400)
    error = _assert_error(_post(prism_app, "/v1/chat/completions", json={"messages": []}), 422, openai=True)
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG with its IHDR rewritten to claim ``width x height`` (CRC fixed, so it parses)."""
    import struct
    import zlib

    data = bytearray(png_bytes((8, 8)))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_image_over_the_pixel_limit(prism_app):
    # A decompression bomb: a small PNG whose header says 9000 x 5000 = 45 M pixels (> the 16 M default).
    big = bomb_png(9000, 5000)
    r = _post(prism_app, "/v1/ask", json={"question": "What is this?", "image": base64.b64encode(big).decode()})
    _assert_error(r, 413, "image_too_many_pixels")


def test_not_in_sources_without_llm(prism_app):
    r = _post(prism_app, "/v1/ask", json={"question": "How do I configure a Kubernetes ingress controller for TLS?"})
    body = r.json()
    assert r.status_code == 200 and body["answer"] == "The sources do not say."
    assert body["citations"] == [] and "not_in_sources" in body["audit"]["flags"] and body["audit"]["grounded"]


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_ask_stream_sse(prism_app):
    with httpx.stream("POST", prism_app.url + "/v1/ask", timeout=600, headers=prism_app.headers,
                      json={"question": "Where do frogs live?", "stream": True, "max_new_tokens": 12}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = parse_sse(text)
    kinds = [e for e, _ in events]
    assert kinds[0] == "meta" and kinds[-1] == "done" and kinds.count("token") >= 1
    assert set(kinds) == {"meta", "token", "done"}
    done = events[-1][1]
    assert "".join(d["text"] for e, d in events if e == "token").strip() == done["answer"]
    assert events[0][1]["passages"][0]["title"] == "Frog"
    assert set(done) == {"id", "answer", "citations", "vision", "audit", "timings_ms", "usage"}
    usage = done["usage"]
    assert usage["prompt_tokens"] > 50 and 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert done["timings_ms"]["ttft_ms"] <= done["timings_ms"]["total_ms"]


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/search"])
def test_wrong_method_is_json(prism_app, path):
    _assert_error(_get(prism_app, path), 405, "method_not_allowed")
