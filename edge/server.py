"""The edge HTTP API: ``/v1/search`` and ``/v1/ask`` (JSON or server-sent events) over one :class:`EdgeRuntime`.

    prism edge serve --bundle ./bundle-int4 [--port 8080]

A single-user device: the server binds to 127.0.0.1 and needs no key unless ``PRISM_EDGE_KEY`` is set
(then ``Authorization: Bearer KEY`` on ``/v1/*``). The request and response shapes are the server's
(docs/api.md); errors are ``{"error": {"code", "message"}}`` with a 4xx status for bad input. One ask
decodes at a time; the others wait their turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from edge.runtime import EdgeRuntime
from ray_app.ask.requests import AskRequest, SearchRequest, decode_image
from ray_app.ask.service import AskEvent, AskOptions
from ray_app.errors import InputError, NotFound, PrismError, Unavailable


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


def error_response(exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, NotFound) else 503 if isinstance(exc, Unavailable) else 400
    code = getattr(exc, "code", None) or ("not_found" if status == 404 else "invalid_input")
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": {"code": code, "message": str(exc)}}, status_code=status, headers=headers)


def refuse_fair_exposure(attribute: str | None) -> None:
    """The bundle has no biography annotations, so the exposure re-ranking is refused rather than ignored."""
    if attribute is not None:
        raise InputError("fair_exposure is not available on the edge server (its bundle has no biography "
                         "annotations); ask the Serve app")


def build_app(runtime: EdgeRuntime, key: str | None = None) -> FastAPI:
    """The FastAPI app over ``runtime``; ``key`` (default ``PRISM_EDGE_KEY``) guards ``/v1/*`` when set.
    The runtime's bounded pool becomes the event loop's default executor while the app runs."""
    key = key if key is not None else os.environ.get("PRISM_EDGE_KEY") or None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        with runtime.executor() as pool:
            asyncio.get_running_loop().set_default_executor(pool)
            yield

    app = FastAPI(title="Prism edge", version=str(runtime.manifest.get("format")), lifespan=lifespan)

    def caller(request: Request) -> None:
        if key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise KeyRefused()

    @app.exception_handler(PrismError)
    async def prism_error(request: Request, exc: PrismError):
        if isinstance(exc, KeyRefused):
            return JSONResponse({"error": {"code": "unauthorized", "message": "a valid API key is required"}},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError):  # as the Serve app answers it
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return JSONResponse({"error": {"code": "invalid_request", "message": f"{where}: {first['msg']}"}},
                            status_code=422)

    @app.exception_handler(Exception)
    async def other_error(request: Request, exc: Exception):
        return JSONResponse({"error": {"code": "internal", "message": type(exc).__name__}}, status_code=500)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok", "variant": runtime.manifest["variant"], "text_only": runtime.manifest["text_only"],
                "auth": key is not None, "load_s": round(runtime.load_s, 2)}

    @app.post("/v1/search", dependencies=[Depends(caller)])
    async def search(body: SearchRequest) -> dict:
        refuse_fair_exposure(body.fair_exposure)
        hits = await asyncio.to_thread(runtime.search, body.query, body.k, body.mode, body.sources)
        return {"results": [h.to_dict() for h in hits]}

    @app.post("/v1/ask", dependencies=[Depends(caller)])
    async def ask(body: AskRequest):
        refuse_fair_exposure(body.fair_exposure)
        image = decode_image(body.image) if body.image else None
        events = runtime.stream(body.question, image, AskOptions(k=body.k, max_new_tokens=body.max_new_tokens))
        first = await anext(events)  # input errors are raised here, before any byte is sent
        if body.stream:
            return StreamingResponse(ask_sse(first, events), media_type="text/event-stream")
        async for event in events:
            if event.kind in ("done", "flagged"):  # flagged: withheld by the injection defences
                return event.data
        raise RuntimeError("the ask pipeline ended without an answer")

    return app


class KeyRefused(PrismError):
    code = "unauthorized"


async def ask_sse(first: AskEvent, events: AsyncIterator[AskEvent]) -> AsyncIterator[str]:
    """``meta``, ``token``..., ``done`` as server-sent events; a failure mid-stream is an ``error`` event."""
    yield sse(first.kind, first.data)
    try:
        async for event in events:
            yield sse(event.kind, event.data)
    except PrismError as exc:
        yield sse("error", {"error": {"code": getattr(exc, "code", "error"), "message": str(exc)}})
    except Exception as exc:
        yield sse("error", {"error": {"code": "internal", "message": type(exc).__name__}})


def serve(runtime: EdgeRuntime, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the app with uvicorn in this process."""
    import uvicorn

    uvicorn.run(build_app(runtime), host=host, port=port, log_level="warning")
