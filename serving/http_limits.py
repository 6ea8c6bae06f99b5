"""What the ingress checks before any route parses a request, and the headers every response carries.

:class:`RequestLimits` is a plain ASGI middleware: trusted ``Host`` names (400), no
``x-request-disconnect-disabled`` (400: a client cannot keep its answer running after it left), strict
``Content-Type`` on ``/v1/*`` bodies (415: JSON, or multipart on ``/v1/ask`` only), the body size
(413 from ``Content-Length`` before reading, or as soon as a streamed body passes the limit), then
``nosniff``, a Content-Security-Policy and the caller's ``X-RateLimit-*`` headers on the way out.
:func:`error_body` is the one error shape: ``{"error": {"code", "message"}}``, plus OpenAI's
``type`` and ``param`` on the OpenAI-compatible routes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ray_app.settings import get_settings

OPENAI_PATHS = ("/v1/chat/", "/v1/models")
BODY_METHODS = {"POST", "PUT", "PATCH"}
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
COMMON_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
# Ray's proxy reads this client header and then keeps an answer running after its client has gone (holding an
# admission place and a batch row); Prism refuses it. (x-request-timeout-seconds, the other, cannot lift an ask
# past PRISM_ASK_TIMEOUT_S, which the ask service enforces itself.)
DISCONNECT_DISABLED = "x-request-disconnect-disabled"


def error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a status."""
    return OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(path: str, status: int, code: str, message: str, param: str | None = None,
               kind: str | None = None) -> dict:
    """``{"error": {"code", "message"}}``; on the OpenAI routes also ``type`` (``kind`` overrides it) and ``param``."""
    error = {"code": code, "message": message}
    if path.startswith(OPENAI_PATHS):
        error |= {"type": kind or error_type(status), "param": param}
    return {"error": error}


def page_csp(page: Path) -> str:
    """The web page's policy: its own inline script and style by hash, images from itself, data: and blob:."""
    html = page.read_text()

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join("'sha256-" + _b64_sha256(b) + "'" for b in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def _b64_sha256(text: str) -> str:
    import base64

    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def route_path(scope) -> str:
    """The path the app routes on: without the application's ``root_path`` (a Serve ``route_prefix``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def host_allowed(host: str | None, allowed: list[str]) -> bool:
    """``Host`` without its port (``[::1]:8000`` -> ``::1``) is one of ``allowed``, or ``allowed`` has ``*``."""
    if "*" in allowed:
        return True
    host = (host or "").strip().lower()
    name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return name in {a.lower() for a in allowed}


class BodyTooLarge(Exception):
    """Raised into the app when a streamed body passes the limit (the middleware answers 413)."""


class RequestLimits:
    """ASGI middleware: host, content type and body size before the app; security headers after.

    Args:
        app: the ASGI app.
        page: the web page served at ``/`` (its CSP allows exactly its inline script and style).
    """

    def __init__(self, app, page: Path | None = None):
        settings = get_settings()
        self.app, self.max_body = app, settings.max_body_bytes
        self.allowed_hosts = list(settings.allowed_hosts)
        self.page_csp = page_csp(page) if page is not None and page.exists() else JSON_CSP

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await self.respond(scope, send, *refusal)
        state = {"received": 0, "too_large": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    state["too_large"] = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message):
            if state["too_large"]:
                return  # whatever the app made of the cut body; the 413 below replaces it
            if message["type"] == "http.response.start":
                state["started"] = True
                message = dict(message, headers=list(message.get("headers", [])) + self.extra_headers(scope))
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not state["too_large"]:
                raise
        if state["too_large"] and not state["started"]:
            await self.respond(scope, send, 413, "body_too_large", self.too_large_message())

    def refusal(self, scope) -> tuple[int, str, str] | None:
        """The status, code and message for a request refused on its headers alone, else None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, method = route_path(scope), scope.get("method", "GET")
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            return 400, "invalid_host", "this Host is not served (PRISM_ALLOWED_HOSTS)"
        if path.startswith("/v1/") and DISCONNECT_DISABLED in headers:
            return 400, "header_not_allowed", (f"{DISCONNECT_DISABLED} is not accepted: an ask whose client goes away "
                                               "gives its place back (the server's limits are its own settings)")
        if method in BODY_METHODS and path.startswith("/v1/"):
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            allowed = ("application/json", "multipart/form-data") if path == "/v1/ask" else ("application/json",)
            if media not in allowed:
                return 415, "unsupported_media_type", f"Content-Type must be {' or '.join(allowed)}, not {media or 'empty'}"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return 413, "body_too_large", self.too_large_message()
        return None

    def too_large_message(self) -> str:
        return f"the request body is larger than {self.max_body:,} bytes (PRISM_MAX_BODY_BYTES)"

    def extra_headers(self, scope) -> list[tuple[bytes, bytes]]:
        """Security headers for this path plus the rate-limit headers the auth dependency left in the scope."""
        path = route_path(scope)
        headers = dict(COMMON_HEADERS)
        if path == "/":
            headers["content-security-policy"] = self.page_csp
        elif not path.startswith(("/docs", "/redoc")):  # Swagger UI loads its own scripts
            headers["content-security-policy"] = JSON_CSP
        state = scope.get("state") or {}
        headers |= state.get("rate_headers", {}) | state.get("trace_headers", {})
        return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def respond(self, scope, send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(route_path(scope), status, code, message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + self.extra_headers(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class ProxyBodyLimit:
    """The body limit again, in front of Serve's HTTP proxy: the proxy reads a request body from the client
    as fast as it comes and queues it for the replica, so without this a 100 MB body sits in the proxy's
    memory even though the ingress refuses it after 16 MB. Here the proxy stops reading at the limit (its
    receive sees the client gone) and the client gets the same 413.

    Installed by :func:`proxy_middlewares` through Serve's ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``
    (``serving.cli.start_ray`` sets it for every Ray that Prism starts).
    """

    def __init__(self, app):
        self.app, self.max_body = app, get_settings().max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_body:
            return await self.respond(scope, send)
        state = {"received": 0, "too_large": False, "started": False}

        async def limited_receive():
            if state["too_large"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    state["too_large"] = True
                    return {"type": "http.disconnect"}  # the proxy stops reading and cancels the request
            return message

        async def guarded_send(message):
            if state["too_large"] and not state["started"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if state["too_large"] and not state["started"]:
            await self.respond(scope, send)

    async def respond(self, scope, send) -> None:
        message = f"the request body is larger than {self.max_body:,} bytes (PRISM_MAX_BODY_BYTES)"
        body = json.dumps(error_body(route_path(scope), 413, "body_too_large", message)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + [(k.encode(), v.encode()) for k, v in COMMON_HEADERS.items()]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list:
    """Serve's HTTP proxy callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serving.http_limits:proxy_middlewares``)."""
    from starlette.middleware import Middleware

    return [Middleware(ProxyBodyLimit)]
