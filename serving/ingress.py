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
import time
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_app.answer import check_question, new_ask_id
from ray_app.prompting import NOT_IN_SOURCES
from ray_app.settings import get_settings
from serving.schemas import (
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)

UI_PAGE = Path(__file__).parent / "ui" / "index.html"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}
ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 413: {"model": ErrorResponse},
          415: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}

api = FastAPI(title="Prism", version="0.1.0",
              description="Multimodal learning assistant: cited answers about images and questions, audited.")


class ApiError(Exception):
    """An error for the client: HTTP ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_json(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_json(exc.status, exc.code, exc.message)


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
    """Orchestrates one request: vision -> rag -> fusion (streamed) -> audit."""

    def __init__(self, vision, rag, fusion, audit):
        self.vision, self.rag, self.fusion, self.audit = vision, rag, fusion, audit
        self.settings = get_settings()
        self._versions: dict | None = None

    async def versions(self) -> dict:
        if self._versions is None:
            versions = await self.fusion.versions.remote()
            versions["image_encoder"] = await self.vision.version.remote()
            self._versions = versions
        return self._versions

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(UI_PAGE.read_text())

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "versions": await self.versions()}

    @api.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(self, body: SearchRequest) -> dict:
        start = time.perf_counter()
        results = await self.rag.search.remote(body.query, body.k, body.mode, body.sources)
        return {"results": results, "timings_ms": {"total_ms": _ms(start)}}

    @api.post("/v1/ask", response_model=AskResponse, responses=ERRORS,
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": AskRequest.model_json_schema()}}}})
    async def ask(self, request: Request):
        body, image = await parse_ask(request)
        prepared = await self.prepare(body.question, image, body.k)
        limit = body.max_new_tokens or self.settings.max_new_tokens
        if body.stream:
            return StreamingResponse(self.ask_events(prepared, limit), media_type="text/event-stream")
        response = None
        async for event, data in self.run_answer(prepared, limit):
            if event == "done":
                response = data
        return response

    async def prepare(self, question: str, image: bytes | None, k: int) -> dict:
        """Validate, then run vision and retrieval (errors surface here, before any streaming)."""
        try:
            question = check_question(question)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from exc
        start = time.perf_counter()
        timings: dict[str, float] = {}
        vision = None
        if image is not None:
            out = await self.vision.analyze.remote(image)
            if "error" in out:
                err = out["error"]
                raise ApiError(err["status"], err["code"], err["message"])
            vision = out["vision"]
            timings["vision_ms"] = _ms(start)
        t1 = time.perf_counter()
        found = await self.rag.retrieve.remote(question, vision, k)
        timings["retrieval_ms"] = _ms(t1)
        return {"id": new_ask_id(), "question": question, "vision": vision, "k": k, "start": start,
                "query": found["query"], "passages": found["passages"], "timings": timings}

    async def run_answer(self, prepared: dict, max_new_tokens: int) -> AsyncIterator[tuple[str, dict]]:
        """Yield ``("meta", ...)``, ``("token", {"text"})``..., ``("done", response)``."""
        yield "meta", {"id": prepared["id"], "vision": prepared["vision"], "passages": prepared["passages"]}
        timings, answer, t2 = prepared["timings"], "", time.perf_counter()
        if prepared["passages"]:
            stream = self.fusion.options(stream=True).generate.remote(
                prepared["question"], prepared["passages"], prepared["vision"], max_new_tokens
            )
            async for piece in stream:
                if not answer:
                    timings["ttft_ms"] = _ms(prepared["start"])
                answer += piece
                yield "token", {"text": piece}
        else:
            answer = NOT_IN_SOURCES
            timings["ttft_ms"] = _ms(prepared["start"])
            yield "token", {"text": answer}
        timings["generation_ms"] = _ms(t2)
        timings["total_ms"] = _ms(prepared["start"])
        response = await self.audit.record.remote(
            ask_id=prepared["id"], question=prepared["question"], answer=answer.strip(), query=prepared["query"],
            passages=prepared["passages"], vision=prepared["vision"], k=prepared["k"],
            versions=await self.versions(), timings_ms=timings,
        )
        yield "done", response

    async def ask_events(self, prepared: dict, max_new_tokens: int) -> AsyncIterator[str]:
        try:
            async for event, data in self.run_answer(prepared, max_new_tokens):
                yield sse(event, data)
        except Exception as exc:  # the stream has started: report in-band
            yield sse("error", {"error": {"code": "internal_error", "message": f"{type(exc).__name__}"}})

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
    async def chat_completions(self, body: ChatCompletionRequest):
        question, image = chat_question(body)
        prepared = await self.prepare(question, image, 5)
        limit = body.max_completion_tokens or body.max_tokens or self.settings.max_new_tokens
        model = body.model or "prism"
        if body.stream:
            return StreamingResponse(self.chat_events(prepared, limit, model), media_type="text/event-stream")
        response = None
        async for event, data in self.run_answer(prepared, limit):
            if event == "done":
                response = data
        return {
            "id": f"chatcmpl-{response['id']}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": response["answer"]},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            "prism": response,
        }

    async def chat_events(self, prepared: dict, max_new_tokens: int, model: str) -> AsyncIterator[str]:
        base = {"id": f"chatcmpl-{prepared['id']}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}
        first = True
        async for event, data in self.run_answer(prepared, max_new_tokens):
            if event == "token":
                delta = {"role": "assistant", "content": data["text"]} if first else {"content": data["text"]}
                first = False
                yield f"data: {json.dumps(base | {'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
            elif event == "done":
                final = base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "prism": data}
                yield f"data: {json.dumps(final, default=str)}\n\n"
        yield "data: [DONE]\n\n"

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

