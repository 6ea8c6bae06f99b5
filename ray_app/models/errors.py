"""Errors raised when a model cannot be loaded offline."""


class ModelNotAvailable(RuntimeError):
    """A model is not installed locally; the message says what to install or where to point."""
