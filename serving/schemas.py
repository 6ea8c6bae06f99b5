"""Request and response types of the HTTP API (the DESIGN.md contracts), as pydantic models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ray_app.ask.requests import AskRequest, SearchRequest, strict_bool  # noqa: F401  (the API's request bodies)


class ErrorBody(BaseModel):
    code: str
    message: str
    type: str | None = Field(None, description="OpenAI's error type (only on /v1/chat/completions and /v1/models).")
    param: str | None = Field(None, description="The request field at fault (OpenAI routes only).")


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"code", "message"}}`` with a 4xx status for bad input; the OpenAI-compatible
    routes add ``type`` and ``param`` (OpenAI's shape)."""

    error: ErrorBody


class SearchResult(BaseModel):
    kind: str
    id: str
    doc_id: str | None
    title: str | None
    text: str | None
    score: float
    source: str | None = None
    category: str | None = None


class SearchResponse(BaseModel):
    results: list[SearchResult]
    timings_ms: dict[str, float]


class Label(BaseModel):
    label: str = Field(description="A concrete name: a stored title made short ('A frog.' -> 'frog').")
    score: float = Field(description="Calibrated probability that the label is right (see docs/reports/image-encoder.md).")
    category: str | None = Field(None, description="The labelled document's category (e.g. 'animals').")
    cosine: float | None = None
    source: str | None = Field(None, description="'same_image' (a stored exact copy), 'similar_images' (the nearest "
                                                 "stored images' titles) or 'zero_shot' (image vs title vectors).")


class SimilarImage(BaseModel):
    id: str
    doc_id: str | None
    caption: str | None
    title: str | None
    score: float
    url: str


class VisionOut(BaseModel):
    image_sha256: str
    width: int
    height: int
    labels: list[Label]
    ocr_text: str
    similar_images: list[SimilarImage]
    notes: list[str] = []
    sure: bool | None = Field(None, description="False when the top label scores below the calibrated threshold: the "
                                                "picture was not identified; None without an image encoder.")
    candidates: list[str] = Field(default_factory=list, description="When not sure: the nearest names to ask about.")


class Citation(BaseModel):
    n: int
    doc_id: str | None
    chunk_id: str | None
    title: str
    snippet: str
    score: float
    attributed: bool = Field(False, description="True when the model did not cite it and grounding attributed it.")


class AuditOut(BaseModel):
    audit_id: str
    grounded: bool
    flags: list[str]


class Usage(BaseModel):
    """LLM tokens of one answer, counted with the LLM's tokenizer (zeros when the LLM was not called)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class PassageAttribution(BaseModel):
    n: int = Field(description="The passage's citation number.")
    chunk_id: str | None
    score: float = Field(description="Drop in the sentence's log-probability (nats) when the passage is removed.")


class SentenceAttribution(BaseModel):
    sentence: str
    passages: list[PassageAttribution] = Field(description="Ranked by score, highest first.")


class Explanation(BaseModel):
    """``explain: true``: what each answer sentence depends on, and where in the image the label was seen."""

    passages: list[SentenceAttribution] = Field(description="Per answer sentence (at most 6; at most 8 passages "
                                                            "scored), the passages ranked by ablation.")
    image_saliency: str | None = Field(None, description="When an image was sent: a PNG data URL, an RGBA heatmap "
                                                         "with the image's aspect ratio to lay over it.")
    image_label: str | None = Field(None, description="The label the map explains (the top one, or the nearest "
                                                      "candidate when vision is not sure).")
    ms: float = Field(description="Milliseconds the explanation added after the answer was written.")
    cost: dict[str, float] = Field(default_factory=dict, description="Each part's ms, forward passes, evaluations.")
    method: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list, description="Why a part is missing, when one is.")


class AskResponse(BaseModel):
    id: str
    answer: str
    citations: list[Citation]
    vision: VisionOut | None
    audit: AuditOut
    timings_ms: dict[str, float]
    usage: Usage = Field(default_factory=Usage)
    withheld: bool = Field(default=False, description="True when the injection defences stopped the answer: "
                                                      "`answer` then says why and `audit.flags` name the checks.")
    explanation: Explanation | None = Field(None, description="Only with `explain: true`.")


class ImageUrl(BaseModel):
    url: str


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Send a last chunk (no choices) with the request's usage.")


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions request; sampling fields are accepted and ignored (greedy)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=2048)
    max_completion_tokens: int | None = Field(None, ge=1, le=2048)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = Field(None, ge=1, le=1)
    user: str | None = None
    explain: bool = Field(False, description="Prism's extension: `prism.explanation` as on /v1/ask.")

    _explain = field_validator("explain", mode="before")(strict_bool)

    model_config = {"extra": "allow"}


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length", "content_filter"] = "stop"


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage = Field(default_factory=Usage)
    prism: AskResponse | None = Field(None, description="Prism's citations, vision and audit for this answer.")


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "error", "content_filter"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; the last carries ``prism``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    prism: AskResponse | None = None


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "prism"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
