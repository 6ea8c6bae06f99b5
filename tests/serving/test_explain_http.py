"""``explain: true`` through the real Serve app (issue 22 item 1): the explanation's contract on /v1/ask (JSON and the
streamed ``done`` event) and on chat completions, none without it, and a 422 for a non-boolean ``explain``."""

from __future__ import annotations

import base64
import io

import httpx
import pytest

from tests.serving.harness import FROG_PNG, prism_app_fixture  # noqa: F401  (registers `prism_app`)
from tests.serving.test_api import parse_sse


def _post(app, path: str, **kwargs) -> httpx.Response:
    return httpx.post(app.url + path, timeout=600, headers=app.headers, **kwargs)


def check_explanation(explanation: dict, passage_numbers: set[int], image: bool) -> None:
    """The contract: per sentence the passages ranked by score, a PNG data URL when an image was sent, the cost."""
    from PIL import Image

    assert explanation["passages"], explanation["notes"]
    for sentence in explanation["passages"]:
        assert sentence["sentence"].strip()
        ranked = sentence["passages"]
        assert {p["n"] for p in ranked} <= passage_numbers and len(ranked) == len({p["n"] for p in ranked})
        assert all(set(p) == {"n", "chunk_id", "score"} and p["chunk_id"] for p in ranked)
        assert [p["score"] for p in ranked] == sorted((p["score"] for p in ranked), reverse=True)
    assert explanation["ms"] >= 0 and explanation["cost"]["passages_ms"] > 0
    if image:
        url = explanation["image_saliency"]
        assert url.startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert png.mode == "RGBA" and max(png.size) <= 96
        assert explanation["image_label"] and explanation["cost"]["image_saliency_ms"] > 0
    else:
        assert explanation["image_saliency"] is None


def test_streamed_ask_with_an_image_explains_in_done(prism_app):
    image = "data:image/png;base64," + base64.b64encode(FROG_PNG.read_bytes()).decode()
    body = {"question": "Where do frogs live?", "image": image, "stream": True, "explain": True, "max_new_tokens": 16}
    with httpx.stream("POST", prism_app.url + "/v1/ask", timeout=600, headers=prism_app.headers, json=body) as r:
        assert r.status_code == 200
        events = parse_sse("".join(r.iter_text()))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "meta" and kinds[-1] == "done"
    numbers = {p["n"] for p in events[0][1]["passages"]}
    done = events[-1][1]
    check_explanation(done["explanation"], numbers, image=True)
    assert done["timings_ms"]["explain_ms"] == done["explanation"]["ms"]


def test_ask_without_explain_has_no_explanation_and_chat_explains(prism_app):
    plain = _post(prism_app, "/v1/ask", json={"question": "Where do frogs live?", "max_new_tokens": 8})
    assert plain.status_code == 200
    assert plain.json().get("explanation") is None and "explain_ms" not in plain.json()["timings_ms"]
    chat = _post(prism_app, "/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "Where do frogs live?"}], "max_tokens": 12, "explain": True})
    assert chat.status_code == 200, chat.text
    prism = chat.json()["prism"]
    check_explanation(prism["explanation"], set(range(1, 21)), image=False)


@pytest.mark.parametrize("value", ["maybe", 1, [], {"on": True}])
def test_a_non_boolean_explain_is_a_422(prism_app, value):
    r = _post(prism_app, "/v1/ask", json={"question": "Where do frogs live?", "explain": value})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "explain" in r.json()["error"]["message"]
    chat = _post(prism_app, "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Frogs?"}],
                                                          "explain": value})
    assert chat.status_code == 422 and chat.json()["error"]["param"] == "explain"
