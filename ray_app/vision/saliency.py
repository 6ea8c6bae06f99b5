"""Image saliency: which regions of a picture the image encoder's match with a label depends on.

Occlusion (captum's :class:`~captum.attr.Occlusion`): square windows of the encoder's input are painted
over with the picture's background (the median colour of its border, :func:`background`), and each window's
score is how much the cosine between the image vector and the label's text vector drops. Windows are a quarter of the input's
side, sliding by an eighth: 7 x 7 = 49 occluded copies, run in batches, whatever the encoder's size.

The map covers what the encoder sees (the centre square of the picture, :func:`open_clip`'s eval
transform: shortest side resized, centre crop); :func:`heatmap_png` places it back on the whole
picture's aspect ratio (outside the crop: transparent), as a small RGBA PNG to lay over the image.
"""

from __future__ import annotations

import base64
import io

import numpy as np

from ray_app.models.image import to_rgb

WINDOW_DIV = 4  # window side = input side / WINDOW_DIV
STRIDE_DIV = 8  # stride = input side / STRIDE_DIV
PER_EVAL = 25  # occluded copies per forward pass
MAX_SIDE = 96  # the heatmap PNG's longest side


def occlusion_map(encoder, image, text_vector: np.ndarray, window_div: int = WINDOW_DIV,
                  stride_div: int = STRIDE_DIV) -> tuple[np.ndarray, float, int]:
    """Occlusion attribution of ``cos(encoder(image), text_vector)`` over the encoder's input pixels.

    Args:
        encoder: an :class:`ray_app.models.image.ImageEncoder` (``model``, ``preprocess``).
        image: a PIL image.
        text_vector: the label's unit text vector (the space the image tower was aligned to).

    Returns:
        ``(map, cosine, evaluations)``: the (side, side) attribution (drop in cosine, summed over channels;
        positive where hiding the region lowers the match), the unoccluded cosine, and the occluded copies run.
    """
    import torch
    from captum.attr import Occlusion

    target = torch.as_tensor(np.asarray(text_vector, dtype=np.float32))
    target = target / target.norm()

    def cosine(batch: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(encoder.model(batch), dim=-1) @ target

    x = encoder.preprocess(to_rgb(image)).unsqueeze(0)
    side = x.shape[-1]
    baseline = background(x)
    window, stride = max(side // window_div, 1), max(side // stride_div, 1)
    with torch.inference_mode():
        base = float(cosine(x)[0])
    with torch.no_grad():
        attribution = Occlusion(cosine).attribute(x, sliding_window_shapes=(3, window, window),
                                                  strides=(3, stride, stride), baselines=baseline,
                                                  perturbations_per_eval=PER_EVAL)
    steps = ((side - window) // stride + 1) ** 2
    return attribution[0].sum(0).numpy(), base, steps


def background(x):
    """The picture's own background, to paint over a region: the per-channel median of the input's border pixels
    (normalised), broadcast to the input's shape. Clip art on white is hidden with white, a photo with its edges'
    colour; a grey patch on white would itself look like an object."""
    import torch

    border = torch.cat([x[0, :, 0, :], x[0, :, -1, :], x[0, :, :, 0], x[0, :, :, -1]], dim=1)
    return border.median(dim=1).values.view(1, -1, 1, 1).expand_as(x).contiguous()


def heatmap_png(attribution: np.ndarray, size: tuple[int, int], max_side: int = MAX_SIDE) -> bytes:
    """An RGBA PNG of the positive part of ``attribution`` (the encoder's centre crop) on a picture of ``size``
    (width, height): opaque hot colours where the match depends most, transparent elsewhere and outside the crop."""
    from PIL import Image

    width, height = size
    scale = max_side / max(width, height)
    out_w, out_h = max(round(width * scale), 1), max(round(height * scale), 1)
    crop = max(round(min(width, height) * scale), 1)
    positive = np.clip(attribution, 0, None)
    peak = float(positive.max())
    level = positive / peak if peak > 0 else positive
    level = np.asarray(Image.fromarray(level.astype(np.float32), mode="F").resize((crop, crop), Image.BILINEAR))
    level = np.clip(level, 0, 1)
    rgba = np.zeros((out_h, out_w, 4), dtype=np.uint8)
    top, left = (out_h - crop) // 2, (out_w - crop) // 2
    patch = rgba[top : top + crop, left : left + crop]
    patch[..., 0] = 255
    patch[..., 1] = (level * 220).astype(np.uint8)  # red (weak) to yellow (strong)
    patch[..., 3] = (level * 190).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def explain_image(encoder, image, text_vector: np.ndarray, label: str) -> dict:
    """The saliency of ``label`` in ``image`` as the API returns it: ``{"image_saliency" (PNG data URL), "label",
    "cosine", "method", "evaluations"}``."""
    attribution, cosine, steps = occlusion_map(encoder, image, text_vector)
    return {"image_saliency": data_url(heatmap_png(attribution, image.size)), "label": label,
            "cosine": round(cosine, 4), "evaluations": steps,
            "method": f"occlusion (captum): drop in cos(image, '{label}') when a 1/{WINDOW_DIV}-side square "
                      "painted in the picture's border colour "
                      f"hides each region, stride 1/{STRIDE_DIV}"}
