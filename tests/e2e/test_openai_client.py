"""The official `openai` SDK against the ingress: a chat completion with an image part, streamed and not, with
real token counts; the model list; errors as the SDK's typed exceptions (OpenAI's error shape)."""

import base64

import openai
import pytest
from openai import OpenAI

from tests.serving.harness import FROG_PNG, prism_app_fixture  # noqa: F401  (registers `prism_app`)


def _messages() -> list[dict]:
    url = "data:image/png;base64," + base64.b64encode(FROG_PNG.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": "What is this animal and where does it live?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def _client(app, api_key: str | None = None) -> OpenAI:
    return OpenAI(base_url=app.url + "/v1", api_key=api_key or app.key, timeout=600, max_retries=0)


def test_chat_completion_not_streamed(prism_app):
    completion = _client(prism_app).chat.completions.create(model="prism", messages=_messages(), max_tokens=12)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.role == "assistant" and completion.choices[0].message.content
    prism = completion.model_extra["prism"]
    assert prism["answer"] == completion.choices[0].message.content
    assert prism["vision"]["similar_images"][0]["id"] == prism_app.ids["images"]["frog"]
    usage = completion.usage
    assert usage.prompt_tokens > 50 and 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert prism["usage"] == usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    assert completion.choices[0].finish_reason == ("length" if usage.completion_tokens == 12 else "stop")


def test_chat_completion_streamed_with_usage(prism_app):
    stream = _client(prism_app).chat.completions.create(model="prism", messages=_messages(), max_tokens=12,
                                                        stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, chunks = [], None, None, []
    for chunk in stream:
        chunks.append(chunk)
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            pieces.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert finish in {"stop", "length"} and "".join(pieces).strip()
    assert chunks[-1].usage is usage  # the usage chunk is the last one before [DONE]
    assert usage.prompt_tokens > 50 and 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streamed_without_include_usage_has_no_usage_chunk(prism_app):
    stream = _client(prism_app).chat.completions.create(
        model="prism", messages=[{"role": "user", "content": "Where do frogs live?"}], max_tokens=4, stream=True)
    chunks = list(stream)
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)


def test_models_list_and_retrieve(prism_app):
    client = _client(prism_app)
    models = client.models.list()
    assert [m.id for m in models.data] == ["prism"] and models.data[0].object == "model"
    assert client.models.retrieve("prism").owned_by == "prism"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-4o")
    assert caught.value.body["type"] == "invalid_request_error" and caught.value.body["code"] == "model_not_found"


def test_errors_are_openai_shaped(prism_app):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        _client(prism_app).chat.completions.create(model="prism", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=0)
    error = caught.value.body
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
    with pytest.raises(openai.AuthenticationError) as caught:
        _client(prism_app, api_key="prism_000000000000_" + "0" * 64).models.list()
    assert caught.value.body["type"] == "authentication_error" and caught.value.body["code"] == "invalid_api_key"
