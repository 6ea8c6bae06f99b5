"""The HTTP ingress: FastAPI routes over the vision, rag, fusion and audit deployments.

Routes (DESIGN.md): ``GET /healthz``, ``/openapi.json``, ``/docs``, ``POST /v1/search``,
``POST /v1/ask`` (JSON or multipart; ``stream: true`` gives server-sent events),
``POST /v1/chat/completions`` (OpenAI-compatible, image parts as data URLs, streaming),
``GET /v1/documents/{id}``, ``GET /v1/images/{id}`` (+ ``/file``), ``GET /`` the web page.
Bad input gets a 4xx ``{"error": {"code", "message"}}``, never a 500.
"""


import base64
import binascii
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_app.ask.admission import AdmissionGate
from ray_app.ask.service import AskEvent, AskOptions, AskService
from ray_app.errors import InputError, NotFound, PrismError
from ray_app.settings import get_settings
from ray_app.vision.analyzer import ImageRejected
from serving.schemas import (
    AskRequest,
    AskResponse,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatResponseMessage,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from serving.stages import ServeAudit, ServeGenerate, ServeRetrieve, ServeVision

UI_PAGE = Path(__file__).parent / "ui" / "index.html"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422, 503)}

api = FastAPI(title="Prism", version="0.1.0",
              description="Multimodal learning assistant: cited answers about images and questions, audited.")


class ApiError(Exception):
    """An error for the client: HTTP ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_json(status: int, code: str, message: str, retry_after_s: float | None = None) -> JSONResponse:
    """The error body of every failure; a 503 says when to come back (``Retry-After``, whole seconds)."""
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_json(exc.status, exc.code, exc.message)


# Prism's own errors by type; an image is refused with the status that says why.
IMAGE_STATUS = {"image_too_large": 413, "image_too_many_pixels": 413, "unsupported_media_type": 415}


def status_for(exc: PrismError) -> int:
    """The HTTP status of one of Prism's errors (the service below never raises HTTP errors)."""
    if isinstance(exc, ImageRejected):
        return IMAGE_STATUS.get(exc.code, 422)
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InputError):
        return 422
    return 503  # Unavailable and other service-side conditions: try again later


@api.exception_handler(PrismError)
async def _prism_error(_: Request, exc: PrismError) -> JSONResponse:
    status = status_for(exc)
    retry = getattr(exc, "retry_after_s", get_settings().retry_after_s) if status == 503 else None
    return error_json(status, exc.code, str(exc).splitlines()[0], retry)


@api.exception_handler(BackPressureError)
async def _backpressure(_: Request, exc: BackPressureError) -> JSONResponse:
    """A deployment's queue (``max_queued_requests``) is full: overloaded, not broken."""
    return error_json(503, "overloaded", "the service is at capacity", get_settings().retry_after_s)


@api.exception_handler(RayActorError)
async def _replica_died(_: Request, exc: RayActorError) -> JSONResponse:
    return error_json(503, "unavailable", "a replica failed; try again", get_settings().retry_after_s)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_response(exc.errors())


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_json(exc.status_code, code, str(exc.detail))


@api.exception_handler(Exception)
async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
    return error_json(500, "internal_error", f"{type(exc).__name__}: the server failed to answer")


def validation_response(errors) -> JSONResponse:
    """422 for invalid fields; 400 for a body that is not JSON at all."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_json(400, "malformed_json", f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return error_json(422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}")


def decode_image(value: str) -> bytes:
    """Bytes of a base64 string or ``data:image/...;base64,`` URL (400 when neither)."""
    if value.startswith("data:"):
        header, _, value = value.partition(",")
        if ";base64" not in header:
            raise ApiError(400, "invalid_image_url", "image data URLs must be base64-encoded (data:image/png;base64,...)")
    elif value.startswith(("http://", "https://")):
        raise ApiError(400, "invalid_image_url", "remote image URLs are not fetched; send the image as a data URL")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"the image is not valid base64: {exc}") from exc


async def parse_ask(request: Request) -> tuple[AskRequest, bytes | None]:
    """An :class:`AskRequest` from a JSON body or a multipart form (``image`` as a file part)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("image")
        image = await upload.read() if hasattr(upload, "read") else None
        fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        body = _validate(AskRequest, fields)
        return body, image
    try:
        raw = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    body = _validate(AskRequest, raw)
    return body, decode_image(body.image) if body.image else None


def _validate(model, data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise ApiError(422, "invalid_request", f"{where}: {first['msg']}") from exc


def sse(event: str, data: dict | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, default=str)
    return f"event: {event}\ndata: {payload}\n\n"


async def start_stream(events: AsyncIterator[AskEvent]) -> AskEvent:
    """The first event (``meta``): validation, vision and retrieval errors raise here, before a response starts."""
    return await anext(events)


async def final_response(first: AskEvent, events: AsyncIterator[AskEvent]) -> dict:
    """Drain an ask's events and return its ``done`` response."""
    async for event in events:
        if event.kind == "done":
            return event.data
    raise RuntimeError("the ask pipeline ended without an answer")


async def ask_sse(first: AskEvent, events: AsyncIterator[AskEvent]) -> AsyncIterator[str]:
    """``/v1/ask`` with ``stream: true``: ``meta``, ``token``..., ``done``; a failure is an in-band ``error``."""
    yield sse(first.kind, first.data)
    try:
        async for event in events:
            yield sse(event.kind, event.data)
    except Exception as exc:  # the stream has started: report in-band
        code = exc.code if isinstance(exc, PrismError) else "internal_error"
        yield sse("error", {"error": {"code": code, "message": type(exc).__name__}})


def chat_chunk(ask_id: str, model: str, created: int, delta: ChatDelta, finish: str | None = None,
               prism: dict | None = None) -> str:
    chunk = ChatCompletionChunk(id=f"chatcmpl-{ask_id}", created=created, model=model, prism=prism,
                                choices=[ChatChunkChoice(delta=delta, finish_reason=finish)])
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


async def chat_sse(first: AskEvent, events: AsyncIterator[AskEvent], model: str) -> AsyncIterator[str]:
    """OpenAI-style chunks: the answer's pieces, a final chunk with ``finish_reason`` and ``prism``, ``[DONE]``."""
    ask_id, created, role = first.data["id"], int(time.time()), "assistant"
    try:
        async for event in events:
            if event.kind == "token":
                yield chat_chunk(ask_id, model, created, ChatDelta(role=role, content=event.data["text"]))
                role = None
            elif event.kind == "done":
                yield chat_chunk(ask_id, model, created, ChatDelta(), "stop", event.data)
    except Exception as exc:  # the stream has started: an error chunk, then the end marker clients wait for
        code = exc.code if isinstance(exc, PrismError) else "internal_error"
        yield f"data: {json.dumps({'error': {'code': code, 'message': type(exc).__name__}})}\n\n"
    yield "data: [DONE]\n\n"


def chat_response(response: dict, model: str) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=f"chatcmpl-{response['id']}", created=int(time.time()), model=model,
        choices=[ChatChoice(message=ChatResponseMessage(content=response["answer"]))], prism=response)


def chat_question(body: ChatCompletionRequest) -> tuple[str, bytes | None]:
    """The last user message's text and its first image part (a data URL)."""
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(422, "invalid_request", "messages: needs at least one user message")
    content = users[-1].content
    if isinstance(content, str) or content is None:
        return content or "", None
    texts, image = [], None
    for part in content:
        if part.type == "text" and part.text:
            texts.append(part.text)
        elif part.type == "image_url" and part.image_url and image is None:
            image = decode_image(part.image_url.url)
    return " ".join(texts), image


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)

# Helpers above are defined before the class on purpose: @serve.ingress pickles the routes when the
# class is created, so anything they call must already exist.

@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    """Maps HTTP to the ask service (whose stages call vision, rag, fusion and audit) and back."""

    def __init__(self, vision, rag, fusion, audit):
        self.rag = rag
        self.settings = get_settings()
        self.gate = AdmissionGate(self.settings.ask_max_active, self.settings.ask_max_waiting, self.settings.ask_wait_s,
                             self.settings.retry_after_s)
        self.service = AskService(ServeVision(vision), ServeRetrieve(rag), ServeGenerate(fusion), ServeAudit(audit),
                                  self.settings, self.gate)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(UI_PAGE.read_text())

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "versions": await self.service.versions(with_image=True),
                "admission": self.gate.stats()}

    @api.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(self, body: SearchRequest) -> dict:
        start = time.perf_counter()
        results = await self.rag.search.remote(body.query, body.k, body.mode, body.sources)
        return {"results": results, "timings_ms": {"total_ms": _ms(start)}}

    @api.post("/v1/ask", response_model=AskResponse, responses=ERRORS,
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": AskRequest.model_json_schema()}}}})
    async def ask(self, request: Request):
        body, image = await parse_ask(request)
        events = self.service.stream(body.question, image, AskOptions(k=body.k, max_new_tokens=body.max_new_tokens))
        first = await start_stream(events)
        if body.stream:
            return StreamingResponse(ask_sse(first, events), media_type="text/event-stream")
        return await final_response(first, events)

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest):
        question, image = chat_question(body)
        options = AskOptions(max_new_tokens=body.max_completion_tokens or body.max_tokens)
        events = self.service.stream(question, image, options)
        first = await start_stream(events)
        model = body.model or "prism"
        if body.stream:
            return StreamingResponse(chat_sse(first, events, model), media_type="text/event-stream")
        return chat_response(await final_response(first, events), model)

    @api.get("/v1/documents/{doc_id}", responses=ERRORS)
    async def document(self, doc_id: str) -> dict:
        doc = await self.rag.get_document.remote(doc_id)
        if doc is None:
            raise ApiError(404, "not_found", f"no document {doc_id!r}")
        return doc

    @api.get("/v1/images/{image_id}", responses=ERRORS)
    async def image(self, image_id: str) -> dict:
        row = await self.rag.get_image.remote(image_id)
        if row is None:
            raise ApiError(404, "not_found", f"no image {image_id!r}")
        return row | {"file_url": f"/v1/images/{image_id}/file"}

    @api.get("/v1/images/{image_id}/file", responses=ERRORS)
    async def image_file(self, image_id: str):
        row = await self.rag.get_image.remote(image_id)
        path = Path(row["path"]) if row and row.get("path") else None
        if path is None or not path.is_file() or path.suffix.lower() not in IMAGE_TYPES:
            raise ApiError(404, "not_found", f"no image file for {image_id!r}")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()])
