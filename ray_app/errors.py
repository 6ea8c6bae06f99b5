"""Prism's own error types: what a user or client did wrong, as opposed to a bug.

The CLI prints a :class:`PrismError` as one line and exits 2; any other exception is a bug and
keeps its traceback. The HTTP ingress maps each type to a status code (``serving/ingress.py``);
code below the ingress never raises HTTP errors. ``code`` is the stable machine-readable name
that the API returns in ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations


class PrismError(Exception):
    """Base of every error Prism raises on purpose; the message is meant for the user."""

    code = "prism_error"


class InputError(PrismError, ValueError):
    """Input a user can fix: a bad question, option, file or config value."""

    code = "invalid_request"


class NotFound(InputError, FileNotFoundError):
    """Something the user named does not exist (a file, a folder, a document id)."""

    code = "not_found"


class Unavailable(PrismError):
    """The service cannot answer now (a model or dependency is missing or down); try again later."""

    code = "unavailable"
