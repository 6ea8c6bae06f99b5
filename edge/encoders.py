"""The edge encoders: MiniLM as INT8 ONNX and the trained image tower as ONNX, on ONNX Runtime only.

Both mirror their server counterparts (:class:`ray_app.models.text.TextEmbedder`,
:class:`ray_app.models.image.ImageEncoder`) without transformers, torch or open_clip: the text side
tokenises with ``tokenizers`` and pools as sentence-transformers does; the image side preprocesses
with PIL and numpy exactly as open_clip's eval transform (bicubic resize of the short side,
centre crop, normalise).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ray_app.models.image import to_rgb
from ray_app.models.text import mean_pool_normalise
from ray_app.settings import EMBED_DIM


def ort_session(path: Path, threads: int | None):
    """A CPU inference session with bounded thread pools (``threads`` intra-op, 1 inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    # Idle workers must not spin: the LLM and the encoders share a device's few cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class EdgeTextEmbedder:
    """Normalised 384-d vectors from the bundle's ``embedder/`` folder (``model.onnx`` + ``tokenizer.json``).

    Args:
        folder: the bundle's embedder folder.
        threads: intra-op threads.
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        config = json.loads((self.folder / "embedder.json").read_text())
        self.max_tokens = int(config["max_tokens"])
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_tokens)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_id", 0)), pad_token=config.get("pad_token", "[PAD]"))
        self.session = ort_session(self.folder / config["file"], threads)
        self.inputs = [i.name for i in self.session.get_inputs()]

    @property
    def dim(self) -> int:
        return EMBED_DIM

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """An (n, 384) float32 array of unit vectors."""
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            encodings = self.tokenizer.encode_batch(list(texts[start:start + batch_size]))
            feeds = {
                "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64),
            }
            hidden = self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})[0]
            out[start:start + len(encodings)] = mean_pool_normalise(hidden, feeds["attention_mask"].astype(np.float32))
        return out


class EdgeImageConfig:
    """What the vision stage reads from an image encoder's config: its labels."""

    def __init__(self, labels: list[str]):
        self.labels = labels


class EdgeImageEncoder:
    """The image tower from the bundle's ``image/`` folder (``image-tower.onnx`` + ``image.json``).

    Args:
        folder: the bundle's image folder.
        threads: intra-op threads.
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        self.folder = Path(folder)
        self.info = json.loads((self.folder / "image.json").read_text())
        self.size = int(self.info["image_size"])
        self.mean = np.asarray(self.info["mean"], dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(self.info["std"], dtype=np.float32).reshape(3, 1, 1)
        self.config = EdgeImageConfig(list(self.info.get("labels", [])))
        self.version = self.info.get("version")
        self.session = ort_session(self.folder / self.info["file"], threads)

    @property
    def dim(self) -> int:
        return int(self.info["embed_dim"])

    def preprocess(self, image) -> np.ndarray:
        """open_clip's eval transform: bicubic resize of the short side to ``size``, centre crop, normalise."""
        from PIL import Image

        image = to_rgb(image)  # transparency on white, as the server embeds it
        scale = self.size / min(image.size)
        width, height = max(self.size, round(image.width * scale)), max(self.size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = int(round((width - self.size) / 2.0)), int(round((height - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        return (array - self.mean) / self.std

    def embed(self, images: list, batch_size: int = 16) -> np.ndarray:
        """An (n, dim) float32 array of unit vectors for PIL images."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), batch_size):
            batch = np.stack([self.preprocess(im) for im in images[start:start + batch_size]])
            feats = self.session.run(None, {self.session.get_inputs()[0].name: batch})[0]
            out[start:start + len(batch)] = feats / np.clip(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12, None)
        return out
