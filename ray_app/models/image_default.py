"""The image encoder Prism uses by default: PRISM_IMAGE_ENCODER, else the newest trained one under PRISM_HOME."""

from __future__ import annotations

from pathlib import Path

from ray_app.models.image import CONFIG_NAME, WEIGHTS_NAME, ImageEncoder
from ray_app.settings import get_settings

_encoder: ImageEncoder | None = None
DEMO_RUN = "clip-demo"


def resolve_image_encoder() -> tuple[Path, str]:
    """The image-encoder checkpoint folder and where that choice came from.

    ``PRISM_IMAGE_ENCODER`` when set; otherwise the newest finished ``prism train clip`` run under
    ``$PRISM_HOME/checkpoints`` (``<run>/final`` with its weights; e.g. ``clip-full`` trained after
    ``clip-demo``); otherwise where the demo preset leaves its checkpoint (``clip-demo/final``, not there yet).

    Returns:
        ``(folder, source)``; source is ``"PRISM_IMAGE_ENCODER"``, ``"newest under <dir>"`` or ``"none found"``.
    """
    from ray_app.models.trained import finished_runs

    settings = get_settings()
    if settings.image_encoder is not None:
        return settings.image_encoder, "PRISM_IMAGE_ENCODER"
    runs = [f for f in finished_runs(settings.checkpoints_dir, WEIGHTS_NAME) if (f / CONFIG_NAME).is_file()]
    if runs:
        return runs[0], f"newest under {settings.checkpoints_dir}"
    return settings.checkpoints_dir / DEMO_RUN / "final", f"none found under {settings.checkpoints_dir}"


def default_image_encoder_dir() -> Path:
    """The checkpoint folder :func:`resolve_image_encoder` picks."""
    return resolve_image_encoder()[0]


def get_image_encoder() -> ImageEncoder:
    global _encoder
    if _encoder is None:
        _encoder = ImageEncoder(default_image_encoder_dir())
    return _encoder
