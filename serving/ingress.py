"""The HTTP ingress: FastAPI routes over the vision, rag, fusion and audit deployments.

Routes (DESIGN.md): ``GET /healthz``, ``/openapi.json``, ``/docs``, ``POST /v1/search``,
``POST /v1/ask`` (JSON or multipart; ``stream: true`` gives server-sent events),
``POST /v1/chat/completions`` (OpenAI-compatible, image parts as data URLs, streaming, ``usage``),
``GET /v1/models`` (+ ``/{id}``), ``GET /v1/documents/{id}``, ``GET /v1/images/{id}`` (+ ``/file``),
``GET /`` the web page. Bad input gets a 4xx ``{"error": {"code", "message"}}`` (OpenAI's shape, with
``type`` and ``param``, on the OpenAI routes), never a 500. Every ``/v1/*`` route takes the
:func:`caller` dependency (an API key, its rate limits); :class:`serving.http_limits.RequestLimits`
checks host, content type and body size before any route parses the request.

Failures of the service (:mod:`serving.faults`): a full queue, a replica that died, a stage that did not
answer in time or a database that cannot be reached is a 503 with ``Retry-After`` while nothing has been
sent (a streamed answer is held back until its first token, so a failure up to there is still a 503), and
an in-band ``error`` event (``/v1/ask``) or an error chunk before ``[DONE]`` (chat) after. ``/healthz`` is
liveness (this replica answers); ``/readyz`` asks every deployment and the database, uncached
(:mod:`serving.health`). An ``Idempotency-Key`` header makes an ask retry-safe
(:mod:`ray_app.ask.idempotency`).
"""


import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import BackPressureError, RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from ray_app.ask.admission import AdmissionGate
from ray_app.ask.idempotency import Claim, IdempotencyConflict, IdempotencyStore, check_key, request_hash
from ray_app.ask.requests import InvalidImage, decode_image
from ray_app.ask.service import AskEvent, AskOptions, AskService
from ray_app.auth.guard import Admission, Guard, RateLimited
from ray_app.auth.keys import MissingKey, RevokedKey
from ray_app.errors import InputError, NotFound, PrismError
from ray_app.settings import get_settings
from ray_app.telemetry import metrics, tracing
from ray_app.telemetry.logs import attach_to_serve
from ray_app.vision.analyzer import ImageRejected
from serving import faults
from serving.health import readiness
from serving.http_limits import RequestLimits, error_body, route_path
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
    ModelCard,
    ModelList,
    SearchRequest,
    SearchResponse,
    Usage,
)
from serving.stages import ServeAudit, ServeGenerate, ServeRetrieve, ServeVision

log = logging.getLogger(__name__)
UI_PAGE = Path(__file__).parent / "ui" / "index.html"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)}
MODEL_ID = "prism"  # the one model /v1/models lists: the whole pipeline (retrieval, LLM, audit) behind the chat API

api = FastAPI(title="Prism", version="0.1.0",
              description="Multimodal learning assistant: cited answers about images and questions, audited. "
                          "Every /v1/* route needs `Authorization: Bearer KEY` (prism keys create NAME).")
api.add_middleware(RequestLimits, page=UI_PAGE)


class ApiError(Exception):
    """An error for the client: HTTP ``status`` with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def error_json(request: Request, status: int, code: str, message: str, retry_after_s: float | None = None,
               param: str | None = None, kind: str | None = None, headers: dict | None = None) -> JSONResponse:
    """The error body of every failure (:func:`serving.http_limits.error_body`); a 503 or 429 says when to come
    back (``Retry-After``, whole seconds)."""
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    metrics.record_refusal(status, code, kind)  # counted when it is a refusal (auth, 429, overload)
    return JSONResponse(error_body(route_path(request.scope), status, code, message, param, kind), status_code=status,
                        headers=headers or None)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_json(request, exc.status, exc.code, exc.message, param=exc.param)


# Prism's own errors by type; an image is refused with the status that says why.
IMAGE_STATUS = {"image_too_large": 413, "image_too_many_pixels": 413, "unsupported_media_type": 415}


def status_for(exc: PrismError) -> int:
    """The HTTP status of one of Prism's errors (the service below never raises HTTP errors)."""
    if isinstance(exc, InvalidImage):
        return 400
    if isinstance(exc, ImageRejected):
        return IMAGE_STATUS.get(exc.code, 422)
    if isinstance(exc, MissingKey):
        return 401
    if isinstance(exc, RevokedKey):
        return 403
    if isinstance(exc, RateLimited):
        return 429
    if isinstance(exc, IdempotencyConflict):
        return 409
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, InputError):
        return 422
    return 503  # Unavailable and other service-side conditions: try again later


@api.exception_handler(PrismError)
async def _prism_error(request: Request, exc: PrismError) -> JSONResponse:
    fault = faults.classify(exc, get_settings().retry_after_s)
    if fault is not None and not isinstance(exc, (InputError, RateLimited, IdempotencyConflict)):
        return fault_json(request, fault)
    status = status_for(exc)
    retry = getattr(exc, "retry_after_s", get_settings().retry_after_s) if status in (409, 429, 503) else None
    return error_json(request, status, exc.code, str(exc).splitlines()[0], retry,
                      kind=getattr(exc, "kind", None), headers=getattr(exc, "headers", None))


def fault_json(request: Request, fault: faults.Fault) -> JSONResponse:
    return error_json(request, fault.status, fault.code, fault.message, fault.retry_after_s)


@api.exception_handler(BackPressureError)
async def _backpressure(request: Request, exc: BackPressureError) -> JSONResponse:
    """A deployment's queue (``max_queued_requests``) is full: overloaded, not broken."""
    return fault_json(request, faults.classify(exc, get_settings().retry_after_s))


@api.exception_handler(RayActorError)
async def _replica_died(request: Request, exc: RayActorError) -> JSONResponse:
    return fault_json(request, faults.classify(exc, get_settings().retry_after_s))


@api.exception_handler(RayError)
@api.exception_handler(RayServeException)
@api.exception_handler(psycopg.OperationalError)
async def _service_failure(request: Request, exc: Exception) -> JSONResponse:
    """Ray's and the database driver's errors, handled here rather than by the catch-all (which re-raises after
    answering): 503 for a failure of the service (also a replica's, inside ``RayTaskError``), 500 for a bug."""
    fault = faults.classify(exc, get_settings().retry_after_s)
    if fault is not None:
        return fault_json(request, fault)
    mine = next((c for c in faults.causes(exc) if isinstance(c, PrismError)), None)
    if mine is not None:  # a replica's input error, wrapped by Ray: its own status
        return await _prism_error(request, mine)
    return error_json(request, 500, "internal_error", f"{type(exc).__name__}: the server failed to answer")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_response(request, exc.errors())


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_json(request, exc.status_code, code, str(exc.detail))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A failure of the service (a replica, a timeout, the database, even wrapped by Ray) is a 503; a bug a 500."""
    fault = faults.classify(exc, get_settings().retry_after_s)
    if fault is not None:
        return fault_json(request, fault)
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_json(request, 500, "internal_error", f"{type(exc).__name__}: the server failed to answer")


def validation_response(request: Request, errors) -> JSONResponse:
    """422 for invalid fields; 400 for a body that is not JSON at all."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_json(request, 400, "malformed_json",
                          f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return error_json(request, 422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}",
                      param=where if where != "body" else None)


_guard: dict[str, Guard] = {}


def get_guard() -> Guard:
    """This replica's :class:`~ray_app.auth.guard.Guard` (its store only when auth is on)."""
    if "guard" not in _guard:
        settings = get_settings()
        store = None
        if settings.auth == "on":
            from ray_app.store import get_store

            store = get_store()
        _guard["guard"] = Guard(store, settings)
    return _guard["guard"]


async def admit(request: Request, uses_llm: bool) -> Admission:
    admission = await asyncio.to_thread(get_guard().admit, request.headers.get("authorization"), uses_llm)
    request.state.rate_headers = admission.headers  # RequestLimits adds them to the response
    metrics.record_request(admission.caller)
    return admission


async def caller(request: Request) -> Admission:
    """Every ``/v1/*`` route's dependency: the API key's id and its requests-per-minute limit (401/403/429)."""
    return await admit(request, uses_llm=False)


async def llm_caller(request: Request) -> Admission:
    """:func:`caller` plus the key's LLM tokens per day (routes that write an answer)."""
    return await admit(request, uses_llm=True)


async def metered(events: AsyncIterator[AskEvent], admission: Admission) -> AsyncIterator[AskEvent]:
    """The ask's events; its ``done`` (or ``flagged``) charges the answer's tokens to the caller's day."""
    async for event in events:
        if event.kind in ("done", "flagged"):
            await asyncio.to_thread(get_guard().charge_tokens, admission.caller, event.data["usage"]["total_tokens"])
            metrics.record_answer(event.data, admission.caller)  # once per ask, never per token
        yield event


async def parse_ask(request: Request) -> tuple[AskRequest, bytes | None]:
    """An :class:`AskRequest` from a JSON body or a multipart form (``image`` as a file part)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        parts = get_settings().max_multipart_parts
        try:
            form = await request.form(max_files=1, max_fields=parts)
        except StarletteHTTPException as exc:
            if "too many" in str(exc.detail).lower():
                raise ApiError(413, "too_many_parts", f"{exc.detail} (at most one image and {parts} fields)") from exc
            raise ApiError(400, "malformed_multipart", f"the multipart body does not parse: {exc.detail}") from exc
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


async def start_stream(events: AsyncIterator[AskEvent]) -> list[AskEvent]:
    """The events up to the first token (``meta``, then ``token`` or ``done``): validation, vision, retrieval and
    a fusion replica that fails before its first token all raise here, before a response starts (a 4xx or 503)."""
    first = [await anext(events)]
    async for event in events:
        first.append(event)
        if event.kind in ("token", "done", "flagged"):
            break
    return first


async def chained(first: list[AskEvent], events: AsyncIterator[AskEvent]) -> AsyncIterator[AskEvent]:
    for event in first:
        yield event
    async for event in events:
        yield event


async def final_response(first: list[AskEvent], events: AsyncIterator[AskEvent]) -> dict:
    """Drain an ask's events and return its ``done`` response."""
    async for event in chained(first, events):
        if event.kind in ("done", "flagged"):  # flagged: the answer withheld, with why (``withheld: true``)
            return event.data
    raise RuntimeError("the ask pipeline ended without an answer")


def stream_error(exc: Exception) -> dict:
    """The in-band error of a stream that has started (its status is sent): code, message, when to retry."""
    fault = faults.classify(exc, get_settings().retry_after_s)
    if fault is None:  # a bug: the client sees its type only, the log keeps the traceback
        log.error("a started stream failed", exc_info=exc)
    message = fault.message if fault else type(exc).__name__
    error = {"code": faults.error_code(exc), "message": message}
    if fault is not None and fault.retry_after_s is not None:
        error["retry_after_s"] = fault.retry_after_s
    return error


async def ask_sse(first: list[AskEvent], events: AsyncIterator[AskEvent]) -> AsyncIterator[str]:
    """``/v1/ask`` with ``stream: true``: ``meta``, ``token``..., ``done``; a failure is an in-band ``error``."""
    try:
        async for event in chained(first, events):
            yield sse(event.kind, event.data)
    except Exception as exc:  # the stream has started: report in-band
        yield sse("error", {"error": stream_error(exc)})


async def replayed(response: dict) -> AsyncIterator[AskEvent]:
    """The events of an ask answered before (an ``Idempotency-Key`` retry): ``meta``, the whole answer, ``done``."""
    yield AskEvent("meta", {"id": response["id"], "vision": response.get("vision"), "passages": [],
                            "replayed": True})
    yield AskEvent("token", {"text": response["answer"]})
    yield AskEvent("done", response)


async def recorded(events: AsyncIterator[AskEvent], claim: Claim, store: IdempotencyStore) -> AsyncIterator[AskEvent]:
    """The ask's events; its ``done`` response is kept for retries with the same key, and an ask that ends
    without one gives the key back."""
    done = False
    try:
        async for event in events:
            if event.kind == "done":
                try:
                    await asyncio.to_thread(store.complete, claim, event.data)
                    done = True
                except Exception:  # noqa: BLE001 - the answer stands; a retry will run the ask again
                    log.warning("could not keep the answer of ask %s for its Idempotency-Key", event.data["id"])
            yield event
    finally:
        if not done:
            try:
                await asyncio.shield(asyncio.to_thread(store.release, claim))
            except Exception:  # noqa: BLE001 - the claim expires by itself (PRISM_ASK_TIMEOUT_S)
                log.warning("could not release an Idempotency-Key claim")


def _ping_database() -> None:
    from ray_app.store import get_store

    get_store().ping()


def chat_chunk(ask_id: str, model: str, created: int, delta: ChatDelta | None, finish: str | None = None,
               prism: dict | None = None, usage: dict | None = None) -> str:
    choices = [] if delta is None else [ChatChunkChoice(delta=delta, finish_reason=finish)]
    chunk = ChatCompletionChunk(id=f"chatcmpl-{ask_id}", created=created, model=model, prism=prism,
                                choices=choices, usage=Usage(**usage) if usage else None)
    return f"data: {chunk.model_dump_json(exclude_none=True)}\n\n"


def finish_reason(response: dict, max_new_tokens: int) -> str:
    """``content_filter`` when the injection defences withheld the answer, ``length`` when it used its whole token
    allowance, else ``stop``."""
    if response.get("withheld"):
        return "content_filter"
    return "length" if response["usage"]["completion_tokens"] >= max_new_tokens else "stop"


async def chat_sse(first: list[AskEvent], events: AsyncIterator[AskEvent], model: str, max_new_tokens: int,
                   include_usage: bool) -> AsyncIterator[str]:
    """OpenAI-style chunks: the answer's pieces, a final chunk with ``finish_reason`` and ``prism``, with
    ``stream_options.include_usage`` one more chunk (no choices) with ``usage``, then ``[DONE]``."""
    ask_id, created, role = first[0].data["id"], int(time.time()), "assistant"
    try:
        async for event in chained(first[1:], events):
            if event.kind == "token":
                yield chat_chunk(ask_id, model, created, ChatDelta(role=role, content=event.data["text"]))
                role = None
            elif event.kind in ("done", "flagged"):  # flagged: finish_reason content_filter, prism.answer says why
                yield chat_chunk(ask_id, model, created, ChatDelta(), finish_reason(event.data, max_new_tokens),
                                 event.data)
                if include_usage:
                    yield chat_chunk(ask_id, model, created, None, usage=event.data["usage"])
    except Exception as exc:  # the stream has started: an error chunk, then the end marker clients wait for
        error = stream_error(exc) | {"type": "server_error", "param": None}
        yield f"data: {json.dumps({'error': error})}\n\n"
    yield "data: [DONE]\n\n"


def chat_response(response: dict, model: str, max_new_tokens: int) -> ChatCompletionResponse:
    choice = ChatChoice(message=ChatResponseMessage(content=response["answer"]),
                        finish_reason=finish_reason(response, max_new_tokens))
    return ChatCompletionResponse(id=f"chatcmpl-{response['id']}", created=int(time.time()), model=model,
                                  choices=[choice], usage=Usage(**response["usage"]), prism=response)


def chat_question(body: ChatCompletionRequest) -> tuple[str, bytes | None]:
    """The last user message's text and its first image part (a data URL)."""
    limit = get_settings().max_chat_messages
    if len(body.messages) > limit:
        raise ApiError(413, "too_many_messages", f"messages: {len(body.messages)} messages; the limit is {limit} "
                                                 "(PRISM_MAX_CHAT_MESSAGES)", param="messages")
    users = [m for m in body.messages if m.role == "user"]
    if not users:
        raise ApiError(422, "invalid_request", "messages: needs at least one user message", param="messages")
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


def traced(request: Request, name: str, events: AsyncIterator[AskEvent]) -> AsyncIterator[AskEvent]:
    """The ask's events under the request's root span (its trace id in ``X-Trace-Id``; the stages pass it on)."""
    span = tracing.start_request(name, request.headers.get("traceparent"))
    request.state.trace_headers = tracing.response_headers(span)  # RequestLimits adds them to the response
    return tracing.traced(events, span)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)

# Helpers above are defined before the class on purpose: @serve.ingress pickles the routes when the
# class is created, so anything they call must already exist.

@serve.deployment(name="ingress", graceful_shutdown_timeout_s=130, graceful_shutdown_wait_loop_s=2)
@serve.ingress(api)
class Ingress:
    """Maps HTTP to the ask service (whose stages call vision, rag, fusion and audit) and back."""

    def __init__(self, vision, rag, fusion, audit):
        attach_to_serve()  # Prism's loggers write through Serve's (JSON, with the request id)
        self.rag = rag
        self.handles = {"vision": vision, "rag": rag, "fusion": fusion, "audit": audit}
        self._versions: dict | None = None
        self.settings = get_settings()
        self.created = int(time.time())
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.guard = get_guard()
        self.gate = AdmissionGate(self.settings.ask_max_active, self.settings.ask_max_waiting, self.settings.ask_wait_s,
                                  self.settings.retry_after_s, self.settings.ask_ttft_target_s)
        generate = ServeGenerate(fusion)
        generate.counter.tokenizer()  # loaded here, not by the first asks of a burst (usage counts)
        self.service = AskService(ServeVision(vision), ServeRetrieve(rag), generate, ServeAudit(audit),
                                  self.settings, self.gate)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(UI_PAGE.read_text())

    def check_health(self) -> None:
        """Serve's probe: this replica's event loop answers (a database that is down is /readyz's business)."""

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: this ingress replica answers. Versions are the last ones read (at most a short wait, once)."""
        return {"status": "ok", "versions": await self.known_versions(), "admission": self.gate.stats(),
                "auth": self.settings.auth, "replica": self.replica}

    async def known_versions(self) -> dict | None:
        if self._versions is None:
            try:
                self._versions = await asyncio.wait_for(self.service.versions(with_image=True), 5)
            except Exception:  # noqa: BLE001 - liveness does not depend on the other deployments
                return None
        return self._versions

    @api.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz(self, request: Request):
        """Readiness, uncached: every deployment's ``ready`` (models loaded, decode loop running, the database
        reachable from each replica asked) and the database from this replica; 503 + Retry-After when any fails."""
        ready, checks = await readiness(self.handles, min(self.settings.handle_timeout_s, 10.0))
        checks["database"] = await self.database_check()
        ready = ready and checks["database"]["ok"]
        body = {"status": "ready" if ready else "not_ready", "checks": checks, "replica": self.replica}
        if ready:
            self._versions = None  # the next /healthz reads them again (a redeploy may have changed them)
            return body
        headers = {"Retry-After": str(max(1, math.ceil(self.settings.retry_after_s)))}
        return JSONResponse(body, status_code=503, headers=headers)

    async def database_check(self) -> dict:
        start = time.perf_counter()
        try:
            await asyncio.to_thread(_ping_database)
        except Exception as exc:  # noqa: BLE001 - not ready, with the reason
            return {"ok": False, "error": faults.error_code(exc), "message": str(exc).splitlines()[0][:300]}
        return {"ok": True, "ms": _ms(start)}

    def idempotency(self) -> IdempotencyStore:
        from ray_app.store import get_store

        return IdempotencyStore(get_store(), self.settings)

    @api.get("/v1/models", response_model=ModelList, responses=ERRORS)
    async def models(self, _: Admission = Depends(caller)) -> ModelList:
        """The served model, as OpenAI clients list it."""
        return ModelList(data=[self.model_card()])

    @api.get("/v1/models/{model_id}", response_model=ModelCard, responses=ERRORS)
    async def model(self, model_id: str, _: Admission = Depends(caller)) -> ModelCard:
        if model_id != MODEL_ID:
            raise ApiError(404, "model_not_found", f"the model {model_id!r} does not exist; this server serves "
                                                   f"{MODEL_ID!r}", param="model")
        return self.model_card()

    def model_card(self) -> ModelCard:
        return ModelCard(id=MODEL_ID, created=self.created)

    @api.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(self, body: SearchRequest, _: Admission = Depends(caller)) -> dict:
        start = time.perf_counter()
        results = await faults.call(lambda: self.rag.search.remote(body.query, body.k, body.mode, body.sources,
                                                                   body.fair_exposure),
                                    self.settings.handle_timeout_s, "rag")
        return {"results": results, "timings_ms": {"total_ms": _ms(start)}}

    @api.post("/v1/ask", response_model=AskResponse, responses=ERRORS,
              openapi_extra={"requestBody": {"content": {"application/json": {"schema": AskRequest.model_json_schema()}}}})
    async def ask(self, request: Request, admission: Admission = Depends(llm_caller)):
        """An ask; with an ``Idempotency-Key`` header a retry gets the first answer back (no second ask)."""
        body, image = await parse_ask(request)
        options = AskOptions(k=body.k, max_new_tokens=body.max_new_tokens, explain=body.explain,
                             fair_exposure=body.fair_exposure)
        key = request.headers.get("idempotency-key")
        claim = None
        if key is not None:
            fields = body.model_dump(exclude={"image", "stream"})
            claim = await asyncio.to_thread(self.idempotency().claim, admission.caller, check_key(key),
                                            request_hash(fields, image))
        if claim is not None and claim.response is not None:
            events = replayed(claim.response)
        else:
            events = metered(self.service.stream(body.question, image, options, caller=admission.caller), admission)
            if claim is not None:
                events = recorded(events, claim, self.idempotency())
        events = traced(request, "POST /v1/ask", events)
        first = await start_stream(events)
        if body.stream:
            return StreamingResponse(ask_sse(first, events), media_type="text/event-stream")
        return await final_response(first, events)

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS)
    async def chat_completions(self, request: Request, body: ChatCompletionRequest,
                               admission: Admission = Depends(llm_caller)):
        question, image = chat_question(body)
        options = AskOptions(max_new_tokens=body.max_completion_tokens or body.max_tokens, explain=body.explain)
        limit = min(options.max_new_tokens or self.settings.max_new_tokens, self.settings.max_new_tokens)
        events = metered(self.service.stream(question, image, options, caller=admission.caller), admission)
        events = traced(request, "POST /v1/chat/completions", events)
        first = await start_stream(events)
        model = body.model or MODEL_ID
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(chat_sse(first, events, model, limit, include_usage),
                                     media_type="text/event-stream")
        return chat_response(await final_response(first, events), model, limit)

    @api.get("/v1/documents/{doc_id}", responses=ERRORS)
    async def document(self, doc_id: str, _: Admission = Depends(caller)) -> dict:
        doc = await faults.call(lambda: self.rag.get_document.remote(doc_id), self.settings.handle_timeout_s, "rag")
        if doc is None:
            raise ApiError(404, "not_found", f"no document {doc_id!r}")
        return doc

    @api.get("/v1/images/{image_id}", responses=ERRORS)
    async def image(self, image_id: str, _: Admission = Depends(caller)) -> dict:
        row = await faults.call(lambda: self.rag.get_image.remote(image_id), self.settings.handle_timeout_s, "rag")
        if row is None:
            raise ApiError(404, "not_found", f"no image {image_id!r}")
        public = {k: v for k, v in row.items() if k != "path"}  # never a server path
        return public | {"file_url": f"/v1/images/{image_id}/file"}

    @api.get("/v1/images/{image_id}/file", responses=ERRORS)
    async def image_file(self, image_id: str, _: Admission = Depends(caller)):
        row = await faults.call(lambda: self.rag.get_image.remote(image_id), self.settings.handle_timeout_s, "rag")
        path = Path(row["path"]) if row and row.get("path") else None
        if path is None or not path.is_file() or path.suffix.lower() not in IMAGE_TYPES:
            raise ApiError(404, "not_found", f"no image file for {image_id!r}")
        suffix = path.suffix.lower()
        # SVG can carry script: a download, never rendered inline from this origin.
        headers = {"Content-Disposition": f'attachment; filename="{image_id}.svg"'} if suffix == ".svg" else None
        return FileResponse(path, media_type=IMAGE_TYPES[suffix], headers=headers)
