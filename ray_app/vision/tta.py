"""Test-time views: embed a user's picture as the mean of a few deterministic views of it.

A picture's vector is the normalised mean of the image-encoder vectors of fixed views (``identity``,
``flip``: mirrored left-right, ``crop90`` / ``crop80``: the centre 90 % / 80 % of each side, and the
mirrored crops ``flip_crop90`` / ``flip_crop80``). Averaging over views the tower was trained to treat
alike (it was trained with flips, scales and crops) steadies the vector of a mirrored, rescaled or
cropped picture. Which views serve is part of the checkpoint's label calibration
(``LabelCalibration.views``, chosen by ``prism eval image-encoder`` on training stamps' views), so the
vision step embeds pictures exactly as the calibration saw them; stored images keep their single
vector from ingestion.
"""

from __future__ import annotations

import numpy as np

from ray_app.errors import InputError
from ray_app.models.image import to_rgb

TTA_VIEWS: tuple[str, ...] = ("identity", "flip", "crop90", "crop80", "flip_crop90", "flip_crop80")
NO_VIEWS: tuple[str, ...] = ("identity",)
TTA_CANDIDATES: tuple[tuple[str, ...], ...] = (  # what ``prism eval image-encoder --views auto`` chooses among
    NO_VIEWS,
    ("identity", "flip"),
    ("identity", "crop90"),
    ("identity", "crop90", "crop80"),
    ("identity", "flip", "crop90", "flip_crop90"),
    TTA_VIEWS,
)


def check_views(views) -> tuple[str, ...]:
    """``views`` as a tuple of known view names.

    Raises:
        InputError: empty, or a name not in :data:`TTA_VIEWS` (a ``ValueError``).
    """
    views = tuple(views or ())
    unknown = [v for v in views if v not in TTA_VIEWS]
    if not views or unknown:
        raise InputError(f"test-time views must be a non-empty subset of {', '.join(TTA_VIEWS)}; got {list(views)}")
    return views


def picture_view(image, view: str):
    """One deterministic view (see :data:`TTA_VIEWS`) of a PIL image, as RGB.

    Raises:
        ValueError: an unknown ``view``.
    """
    from PIL import ImageOps

    check_views([view])
    image = to_rgb(image)
    if view.startswith("flip"):
        image = ImageOps.mirror(image)
    if view.endswith(("crop90", "crop80")):
        keep = 0.9 if view.endswith("crop90") else 0.8
        w, h = image.size
        cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
        left, top = (w - cw) // 2, (h - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    return image


def embed_each_view(encoder, images: list, views=TTA_VIEWS) -> np.ndarray:
    """``(n, len(views), d)`` encoder vectors of every view of every PIL image (combine them with :func:`mean_vector`).

    Raises:
        ValueError: unknown or no views.
    """
    views = check_views(views)
    flat = encoder.embed([picture_view(im, v) for im in images for v in views])
    return flat.reshape(len(images), len(views), -1)


def mean_vector(view_vectors: np.ndarray) -> np.ndarray:
    """``(n, d)`` unit vectors: the normalised mean over the views axis of ``(n, views, d)`` vectors."""
    mean = np.asarray(view_vectors, dtype=np.float32).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def embed_pictures(encoder, images: list, views=NO_VIEWS) -> np.ndarray:
    """``(n, d)`` unit vectors: for each PIL image the normalised mean of its ``views``' encoder vectors.

    Raises:
        ValueError: unknown or no views.
    """
    if check_views(views) == NO_VIEWS:
        return encoder.embed(list(images))
    return mean_vector(embed_each_view(encoder, images, views))
