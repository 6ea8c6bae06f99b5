"""The image encoder Prism uses by default: PRISM_IMAGE_ENCODER, else the trained one under PRISM_HOME."""

from __future__ import annotations

from pathlib import Path

from ray_app.models.image import ImageEncoder
from ray_app.settings import get_settings

_encoder: ImageEncoder | None = None


def default_image_encoder_dir() -> Path:
    """Where `prism train clip` (demo preset) leaves its final checkpoint, unless PRISM_IMAGE_ENCODER is set."""
    settings = get_settings()
    return settings.image_encoder or settings.checkpoints_dir / "clip-demo" / "final"


def get_image_encoder() -> ImageEncoder:
    global _encoder
    if _encoder is None:
        _encoder = ImageEncoder(default_image_encoder_dir())
    return _encoder
