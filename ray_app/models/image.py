"""open_clip image encoders loaded from a checkpoint folder (config JSON + safetensors).

A checkpoint folder holds ``open_clip_config.json`` (open_clip's ``{"model_cfg", "preprocess_cfg"}``
layout, plus a ``"prism"`` section naming the text embedder the image tower was aligned to) and
``open_clip_model.safetensors``. Only the image tower (``visual.*`` keys) is loaded: Prism's text
side is the MiniLM embedder, so one 384-d text vector searches both chunks and images. A whole
open_clip CLIP checkpoint works too; its text tower is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.models.errors import ModelNotAvailable


def to_rgb(image, background: tuple[int, int, int] = (255, 255, 255)):
    """A PIL image as RGB, its transparent parts laid on ``background`` (white, as training and the evaluation
    compose stamps, clip art and emoji). ``convert("RGB")`` alone would show whatever colours the transparent pixels
    happen to hold (the frog stamp's are olive), a background the encoder never saw."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


@dataclass
class ImageEncoderConfig:
    """What a checkpoint folder's JSON says about the encoder."""

    embed_dim: int
    vision_cfg: dict
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    text_model: str | None
    labels: list[str]

    @classmethod
    def read(cls, folder: Path) -> ImageEncoderConfig:
        path = folder / CONFIG_NAME
        if not path.exists():
            raise ModelNotAvailable(
                f"no image encoder at {folder} ({CONFIG_NAME} missing): train one with `prism train clip` "
                "or set PRISM_IMAGE_ENCODER"
            )
        raw = json.loads(path.read_text())
        model_cfg, pre = raw["model_cfg"], raw.get("preprocess_cfg", {})
        vision_cfg = dict(model_cfg["vision_cfg"])
        size = pre.get("size", vision_cfg.get("image_size", 224))
        size = size[0] if isinstance(size, list | tuple) else size
        prism = raw.get("prism", {})
        return cls(
            embed_dim=int(model_cfg["embed_dim"]),
            vision_cfg=vision_cfg,
            image_size=int(size),
            mean=tuple(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(pre.get("std", (0.26862954, 0.26130258, 0.27577711))),
            text_model=prism.get("text_model"),
            labels=list(prism.get("labels", [])),
        )


def build_vision_tower(embed_dim: int, vision_cfg: dict):
    """Build an (untrained) open_clip image tower from a vision config dict."""
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(embed_dim, vision_cfg)


def write_config(folder: Path, embed_dim: int, vision_cfg: dict, image_size: int, text_model: str, labels: list[str],
                 mean=None, std=None, extra: dict | None = None) -> Path:
    """Write ``open_clip_config.json`` for an image tower aligned to ``text_model``."""
    folder.mkdir(parents=True, exist_ok=True)
    pre = {"size": image_size}
    if mean is not None:
        pre |= {"mean": list(mean), "std": list(std)}
    raw = {
        "model_cfg": {"embed_dim": embed_dim, "vision_cfg": vision_cfg},
        "preprocess_cfg": pre,
        "prism": {"text_model": text_model, "labels": labels, **(extra or {})},
    }
    path = folder / CONFIG_NAME
    path.write_text(json.dumps(raw, indent=2))
    return path


class ImageEncoder:
    """Embed PIL images into normalised vectors with a trained open_clip image tower.

    Args:
        folder: checkpoint folder (config JSON + safetensors).
        threads: torch intra-op threads (None: default).

    Raises:
        ModelNotAvailable: the folder, config or weights are missing.
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        import torch
        from open_clip.transform import image_transform
        from safetensors.torch import load_file

        self.folder = Path(folder)
        self.config = ImageEncoderConfig.read(self.folder)
        weights = self.folder / WEIGHTS_NAME
        if not weights.exists():
            raise ModelNotAvailable(f"image encoder weights missing: {weights}")
        if threads:
            torch.set_num_threads(threads)
        self.model = build_vision_tower(self.config.embed_dim, self.config.vision_cfg)
        state = load_file(str(weights))
        visual = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
        self.model.load_state_dict(visual or state, strict=True)
        self.model.eval()
        self.preprocess = image_transform(self.config.image_size, is_train=False, mean=self.config.mean, std=self.config.std)

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    def embed(self, images: list, batch_size: int = 32) -> np.ndarray:
        """Return an (n, dim) float32 array of unit vectors for PIL images (:func:`to_rgb`: transparency on white)."""
        import torch

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(to_rgb(im)) for im in images[start : start + batch_size]])
            with torch.inference_mode():
                feats = torch.nn.functional.normalize(self.model(batch), dim=-1)
            out[start : start + len(batch)] = feats.numpy()
        return out
