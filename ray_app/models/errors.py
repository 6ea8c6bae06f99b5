"""Errors raised when a model cannot be loaded offline."""

from ray_app.errors import Unavailable


class ModelNotAvailable(Unavailable, RuntimeError):
    """A model is not installed locally; the message says what to install or where to point."""

    code = "model_not_available"
