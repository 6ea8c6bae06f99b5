"""Offline model loading: MiniLM text embedder, SmolLM2 LLM, open_clip image encoders, Tesseract OCR."""

from ray_app.models.errors import ModelNotAvailable

__all__ = ["ModelNotAvailable"]
