"""The official `openai` SDK against the ingress: a chat completion with an image part, streamed and not."""

import base64

from openai import OpenAI

from tests.serving.harness import FROG_PNG, prism_app_fixture  # noqa: F401  (registers `prism_app`)


def _messages() -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(FROG_PNG.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": "What is this animal and where does it live?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def test_chat_completion_not_streamed(prism_app):
    client = OpenAI(base_url=prism_app.url + "/v1", api_key="unused", timeout=600)
    completion = client.chat.completions.create(model="prism", messages=_messages(), max_tokens=12)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    prism = completion.model_extra["prism"]
    assert prism["answer"] == completion.choices[0].message.content
    assert prism["vision"]["similar_images"][0]["id"] == prism_app.ids["images"]["frog"]


def test_chat_completion_streamed(prism_app):
    client = OpenAI(base_url=prism_app.url + "/v1", api_key="unused", timeout=600)
    stream = client.chat.completions.create(model="prism", messages=_messages(), max_tokens=12, stream=True)
    pieces, finish = [], None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop" and "".join(pieces).strip()
