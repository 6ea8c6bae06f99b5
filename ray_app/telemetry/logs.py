"""Prism's logs: one JSON object per line, or readable text, with the request and ask ids where they are known.

    PRISM_LOG_FORMAT=json prism ingest DIR      # the job's driver and its Ray workers log JSON lines on stderr
    PRISM_LOG_FORMAT=text prism serve up        # Serve's replica logs as text instead of JSON

The CLI logs text by default; Serve logs JSON by default (``logging_config: {encoding: JSON}`` in
``serving/config.yaml``). Under Serve, Ray Serve writes each replica's log file
(``logs/serve/replica_<app>_<deployment>_<id>.log`` in the Ray session folder) and adds ``request_id``
(Serve's, also in the ``X-Request-Id`` response header), ``route``, ``application``, ``deployment``,
``replica`` and ``component_*`` to every record of its ``ray.serve`` logger; :func:`attach_to_serve`
sends Prism's own loggers through the same handlers, so one file holds both, in one format.

One JSON line has the keys of Ray's JSON logs: ``asctime`` (time), ``levelname`` (level), ``name``
(logger), ``message``, ``filename``, ``lineno``, ``process``, ``exc_text`` on errors; then ``request_id``,
``ask_id``, ``deployment``, ``replica`` and ``application`` when they are known. :data:`ASK_ID` and
:data:`REQUEST_ID` are context variables: code that knows an id binds it (:func:`bind`) and every record
logged in that context carries it.

No personal data: Prism logs ids, counts, statuses and timings, never a question, an answer, a passage,
an API key or an e-mail address (the canary test, ``tests/serving/test_privacy.py``, searches every log).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TextIO

from ray_app.errors import InputError

FORMAT_ENV = "PRISM_LOG_FORMAT"
FORMATS = ("json", "text")
PRISM_LOGGERS = ("ray_app", "serving", "training", "edge")  # the packages whose loggers are Prism's
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SERVE_LOGGER = "ray.serve"  # Serve's component logger: its handlers write the replica's log file

REQUEST_ID: ContextVar[str | None] = ContextVar("prism_request_id", default=None)
ASK_ID: ContextVar[str | None] = ContextVar("prism_ask_id", default=None)
_CONTEXT = {"request_id": REQUEST_ID, "ask_id": ASK_ID}
# A LogRecord's own attributes; anything else on a record is context (``extra=...``, Serve's, ours).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def log_format(default: str = "text") -> str:
    """``PRISM_LOG_FORMAT`` (``json`` or ``text``), or ``default`` when unset.

    Raises:
        InputError: any other value.
    """
    value = os.environ.get(FORMAT_ENV, "").strip().lower() or default
    if value not in FORMATS:
        raise InputError(f"{FORMAT_ENV} must be json or text, not {value!r}")
    return value


@contextlib.contextmanager
def bind(**ids: str | None) -> Iterator[None]:
    """Within the block, every record logged in this context carries the ids (``ask_id=``, ``request_id=``)."""
    tokens = [(_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Adds the bound ids (:data:`REQUEST_ID`, :data:`ASK_ID`) to each record that does not carry its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT.items():
            value = var.get()
            if value is not None and getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the keys Ray's JSON logs use (so CLI, job and Serve logs read alike)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"asctime": self.formatTime(record), "levelname": record.levelname, "name": record.name,
               "message": record.getMessage(), "filename": record.filename, "lineno": record.lineno,
               "process": record.process, "timestamp_ns": int(record.created * 1e9)}
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            out["exc_text"] = record.exc_text
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        return json.dumps(out, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` (``json`` or ``text``)."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def setup_logging(verbose: bool = False, fmt: str | None = None, stream: TextIO | None = None) -> str:
    """Log to stderr (or ``stream``) in ``fmt`` (default ``PRISM_LOG_FORMAT``, else text); returns the format.

    Replaces the handler an earlier call installed, so calling it twice does not double every line.
    """
    fmt = fmt or log_format()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "prism", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.prism = True
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    return fmt


def ray_logging_config():
    """``ray.LoggingConfig`` for a job's driver and workers in JSON mode (Ray's JSON keys, the logger's
    ``name`` added); None in text mode (Ray's default). Read by :func:`ray_app.raystart.init_ray`."""
    if log_format() != "json":
        return None
    import ray

    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return ray.LoggingConfig(encoding="JSON", log_level=level, additional_log_standard_attrs=["name"])


def keep_own_handler(before: list[logging.Handler]) -> None:
    """After ``ray.init(logging_config=...)``: drop the root handler Ray added when :func:`setup_logging` has
    one already, so the driver prints each line once (Ray's stays on its own ``ray`` logger)."""
    root = logging.getLogger()
    if any(getattr(h, "prism", False) for h in root.handlers):
        for added in [h for h in root.handlers if h not in before]:
            root.removeHandler(added)


class _ToServe(logging.Handler):
    """Hands Prism's records to the handlers of Serve's logger as they are now (Serve replaces them when a
    new ``logging_config`` is deployed): same file, same encoding, Serve's request context added."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger(SERVE_LOGGER).handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def attach_to_serve() -> None:
    """In a Serve replica: Prism's loggers write through Serve's handlers at Serve's level (once per process).

    Called from each deployment's constructor; a no-op outside Serve (Serve's logger has no handler).
    """
    serve_logger = logging.getLogger(SERVE_LOGGER)
    if not serve_logger.handlers:
        return
    for name in PRISM_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToServe) for h in logger.handlers):
            handler = _ToServe()
            handler.addFilter(ContextFilter())
            logger.addHandler(handler)
        logger.setLevel(serve_logger.level)
        logger.propagate = False  # Serve's handlers already write the worker's stderr when it is on
