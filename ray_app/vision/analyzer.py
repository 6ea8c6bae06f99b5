"""Vision: validate an uploaded image, then label it, read its text and find similar images.

Validation happens before any decoder runs on the pixels: a byte limit, a format allow-list by
magic bytes (PNG, JPEG, GIF, WebP), a pixel limit read from the header (decompression bombs),
and a full decode that rejects truncated files. Labels are concrete names (document titles made
short: "A frog." -> "frog", ``ray_app.vision.labels.concrete_name``) with the document's category
as a secondary field, from two places, each marked by ``source``: ``same_image`` labels name stored
images with the same file bytes (sha256; score 1.0); the others are one probability over the
corpus's titles that mixes the titles of the nearest stored images (``similar_images``: a mirrored
or rescaled copy of a stored picture is named after it) with a zero-shot softmax of the
image-encoder vector against MiniLM vectors of the titles (``zero_shot``; the image tower was
aligned to MiniLM's text space). Its temperatures come from ``prism eval image-encoder``, fitted on
held-out images (``calibration.json`` beside the checkpoint), so a score reads as the chance that
the label is right. Below the calibrated threshold, or where few stored images lie near the picture
(the calibrated neighbourhood gate: noise, plain colours, stripes), the result says ``sure: false`` and
offers its nearest ``candidates`` instead of one name. The picture's vector is the mean of the
test-time views its calibration names (``ray_app.vision.tta``: e.g. mirrored and centre-cropped). Used by
the Serve ``vision`` deployment and by ``prism ask --image``.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from ray_app.errors import InputError
from ray_app.models.errors import ModelNotAvailable
from ray_app.models.image import to_rgb
from ray_app.settings import Settings, get_settings
from ray_app.vision.labels import (
    DEFAULT_TEMPERATURE,
    LabelCalibration,
    concrete_name,
    label_entries,
    label_probabilities,
    neighbour_weights,
    read_calibration,
    sure_score,
)
from ray_app.vision.tta import embed_pictures

log = logging.getLogger(__name__)
MAGIC_BYTES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
}
MAX_TITLE_LABELS = 20_000
K_CANDIDATES = 3


class ImageRejected(InputError):
    """An uploaded image failed validation; ``code`` says how (``image_too_large``, ``invalid_image``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class VisionResult:
    """What the vision step found in one image."""

    image_sha256: str
    width: int
    height: int
    labels: list[dict] = field(default_factory=list)
    ocr_text: str = ""
    similar_images: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sure: bool | None = None
    candidates: list[str] = field(default_factory=list)
    embedding: list[float] | None = None

    def public(self) -> dict:
        """The JSON the API returns (without the raw embedding)."""
        out = asdict(self)
        out.pop("embedding")
        return out


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes, or None when not on the allow-list."""
    for magic, name in MAGIC_BYTES.items():
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def load_image(data: bytes, settings: Settings | None = None):
    """Validate and fully decode uploaded bytes into an RGB PIL image.

    Raises:
        ImageRejected: empty, too many bytes (413), not an allowed format (415), too many pixels
            (413), or corrupt/truncated (422).
    """
    from PIL import Image, UnidentifiedImageError

    settings = settings or get_settings()
    if not data:
        raise ImageRejected("empty_image", "the image is empty")
    if len(data) > settings.max_image_bytes:
        raise ImageRejected(
            "image_too_large", f"the image has {len(data):,} bytes; the limit is {settings.max_image_bytes:,}")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("unsupported_media_type", "not an image: accepted formats are PNG, JPEG, GIF and WebP")
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        pixels = image.width * image.height
        if pixels > settings.max_image_pixels:
            raise ImageRejected(
                "image_too_many_pixels",
                f"the image is {image.width}x{image.height} ({pixels:,} pixels); the limit is {settings.max_image_pixels:,}",
            )
        size = image.size
        side = settings.max_image_side
        if max(size) > side:
            image.draft("RGB", (side, side))  # JPEG: decode at a reduced scale instead of full size
        image.load()  # a truncated file fails here (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        image = to_rgb(image)  # transparency on white, as the encoder was trained
        image.thumbnail((side, side))  # OCR and the encoder see at most side x side; the result keeps `size`
        image.info["original_size"] = size
        return image
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image_too_many_pixels", str(exc).splitlines()[0]) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("invalid_image", f"the {fmt} image is corrupt or truncated: {exc}") from exc


class LabelIndex:
    """A label vocabulary embedded once with the text embedder; scores image vectors against it.

    Args:
        labels: label texts (case-insensitively de-duplicated, first spelling kept).
        embedder: the text embedder the image tower was aligned to.
        prompts: optional prompt texts per label; such a label's vector is the mean of its
            prompts' vectors (how the image encoder's category labels were trained).
        categories: optional category per label (same order as ``labels``), returned as a secondary field.
    """

    def __init__(self, labels: list[str], embedder, prompts: dict[str, tuple[str, ...]] | None = None,
                 categories: list[str | None] | None = None):
        seen: dict[str, tuple[str, str | None]] = {}
        for i, label in enumerate(labels):
            label = " ".join(str(label).split())
            if label:
                seen.setdefault(label.lower(), (label, categories[i] if categories else None))
        self.labels = [label for label, _ in seen.values()]
        self.categories = [category for _, category in seen.values()]
        prompts = prompts or {}
        texts = [list(prompts.get(label, (label,))) for label in self.labels]
        flat = embedder.embed([t for group in texts for t in group]) if self.labels else np.zeros((0, 384), np.float32)
        vectors, start = [], 0
        for group in texts:
            vectors.append(flat[start : start + len(group)].mean(axis=0))
            start += len(group)
        self.vectors = np.stack(vectors) if vectors else flat
        if len(self.vectors):
            self.vectors /= np.linalg.norm(self.vectors, axis=1, keepdims=True)

    def index_of(self, label: str) -> int | None:
        """Position of ``label`` (case-insensitive) in :attr:`labels`, or None."""
        if not hasattr(self, "_positions"):
            self._positions = {x.lower(): i for i, x in enumerate(self.labels)}
        return self._positions.get(" ".join(str(label).split()).lower())

    def top(self, vector: np.ndarray, k: int = 5, temperature: float = DEFAULT_TEMPERATURE) -> list[dict]:
        """The ``k`` best labels with softmax scores (at ``temperature``) over the whole vocabulary."""
        return self.rank(vector, k, LabelCalibration(temperature=temperature))

    def rank(self, vector: np.ndarray, k: int, calibration: LabelCalibration, neighbours=()) -> list[dict]:
        """The ``k`` most probable labels under ``calibration`` (:func:`ray_app.vision.labels.label_probabilities`).

        Args:
            neighbours: ``(title, cosine)`` of the stored images nearest to the picture; their titles'
                concrete names get a share of the probability (``source: similar_images`` where it dominates).
        """
        if not self.labels:
            return []
        sims = self.vectors @ np.asarray(vector, dtype=np.float32)
        nn = [(self.index_of(concrete_name(title)), cosine) for title, cosine in neighbours]
        nn_sims = np.array([[c for _, c in nn]], dtype=np.float64) if nn else None
        nn_labels = np.array([[-1 if i is None else i for i, _ in nn]]) if nn else None
        probs = label_probabilities(sims[None], nn_sims, nn_labels, calibration)[0]
        # The zero-shot part of each probability; the rest came from the stored neighbours' titles.
        text_part = label_probabilities(sims[None], None, None, calibration)[0]
        if nn_sims is not None and calibration.neighbour_temperature is not None:
            text_part *= neighbour_weights(nn_sims, calibration.neighbour_temperature, calibration.neighbour_floor)[1][0]
        order = np.argsort(-probs)[:k]
        categories = self.categories if len(self.categories) == len(self.labels) else [None] * len(self.labels)
        return [{"label": self.labels[i], "score": round(float(probs[i]), 4), "category": categories[i],
                 "cosine": round(float(sims[i]), 4),
                 "source": "similar_images" if probs[i] > 2 * text_part[i] else "zero_shot"} for i in order]


def same_image_labels(copies) -> list[dict]:
    """One label per stored copy of the upload: its title as a concrete name, with its category; case-insensitively unique."""
    labels: dict[str, dict] = {}
    for hit in copies:
        name = concrete_name(hit.title or "")
        if name:
            labels.setdefault(name.lower(), {"label": name, "score": 1.0, "category": hit.category, "cosine": None,
                                             "source": "same_image"})
    return list(labels.values())


def merge_labels(first: list[dict], then: list[dict], k: int) -> list[dict]:
    """``first`` then the labels of ``then`` not already present, ``k`` in all."""
    seen = {x["label"].lower() for x in first}
    return (first + [x for x in then if x["label"].lower() not in seen])[:k]


def corpus_titles(store, limit: int = MAX_TITLE_LABELS) -> list[tuple[str, str | None]]:
    """Distinct ``(title, category)`` pairs of the corpus's documents: the label vocabulary."""
    with store.pool.connection() as conn:
        rows = conn.execute(
            "SELECT title, min(category) FROM documents GROUP BY title ORDER BY title LIMIT %s", (limit,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def is_sure(labels: list[dict], calibration: LabelCalibration, nn_sims=()) -> bool:
    """Whether the top label is an exact stored copy, or scores at least the calibrated threshold among stored
    images close enough together (``nn_sims``: cosines of the nearest ones; :func:`ray_app.vision.labels.sure_score`)."""
    if not labels:
        return False
    if labels[0].get("source") == "same_image":
        return True
    nn = np.asarray(list(nn_sims)[: calibration.neighbours], dtype=np.float64)[None]
    return bool(sure_score(np.array([labels[0]["score"]]), nn, calibration.min_neighbourhood)[0] >= calibration.threshold)


class VisionAnalyzer:
    """Loads the image encoder, label index, OCR and store once; :meth:`analyze` runs per image.

    Args:
        store: the :class:`ray_app.store.Store` for titles and similar images.
        embedder: the MiniLM text embedder (label vectors).
        encoder: an :class:`ray_app.models.image.ImageEncoder`; None loads the default one, and
            when none is trained the analyzer still validates and OCRs, with a note.
        labels, calibration: an already embedded vocabulary and its calibration (the edge runtime's, from its
            bundle); None: the store's titles embedded here, and ``calibration.json`` beside the encoder.
    """

    def __init__(self, store, embedder, encoder=None, settings: Settings | None = None,
                 labels: LabelIndex | None = None, calibration: LabelCalibration | None = None):
        self.settings = settings or get_settings()
        self.store, self.embedder = store, embedder
        self.encoder = encoder if encoder is not None else _try_default_encoder()
        self.labels = labels
        self.calibration = calibration if calibration is not None else read_calibration(
            self.encoder.folder if self.encoder is not None else None)
        if self.encoder is not None and labels is None:
            names, categories = label_entries(corpus_titles(store))
            self.labels = LabelIndex(names, embedder, categories=categories)

    @property
    def encoder_version(self) -> str | None:
        return None if self.encoder is None else encoder_version(self.encoder)

    def analyze(self, data: bytes, k_labels: int = 5, k_similar: int = 4, ocr: bool = True) -> VisionResult:
        """Validate ``data`` and describe the image.

        Raises:
            ImageRejected: the bytes are not an acceptable image.
        """
        image = load_image(data, self.settings)
        width, height = image.info.get("original_size", image.size)
        result = VisionResult(hashlib.sha256(data).hexdigest(), width, height)
        if self.encoder is not None:
            vector = embed_pictures(self.encoder, [image], self.calibration.views)[0]  # the views it was calibrated with
            result.embedding = vector.tolist()
            hits = self.store.search_vector(vector, max(k_similar, self.calibration.neighbours), "image")
            result.similar_images = [_similar(h) for h in hits[:k_similar]]
            copies = self.store.images_with_sha256(result.image_sha256)
            ranked = self.labels.rank(vector, k_labels, self.calibration, [(h.title, h.score) for h in hits])
            result.labels = merge_labels(same_image_labels(copies), ranked, k_labels)
            result.sure = is_sure(result.labels, self.calibration, [h.score for h in hits])
            if not result.sure:
                result.candidates = [x["label"] for x in result.labels[:K_CANDIDATES]]
                result.notes.append("not sure what the picture shows (top label score below "
                                    f"{self.calibration.threshold:.2f}, or few stored images like it); it might be: "
                                    f"{', '.join(result.candidates)}")
        else:
            result.notes.append("no image encoder trained yet: labels and similar images are off")
        if ocr:
            result.ocr_text = _read_text(image, result.notes)
        return result


    def saliency(self, data: bytes, label: str) -> dict:
        """Where in the image the encoder's match with ``label`` lies (:func:`ray_app.vision.saliency.explain_image`):
        ``{"image_saliency": PNG data URL, "label", "cosine", "method", "evaluations"}``; without an image encoder
        ``image_saliency`` is None and ``note`` says why.

        Raises:
            ImageRejected: the bytes are not an acceptable image.
        """
        from ray_app.vision.saliency import explain_image

        image = load_image(data, self.settings)
        if self.encoder is None:
            return {"image_saliency": None, "label": label, "note": "no image encoder trained yet: no saliency map"}
        i = self.labels.index_of(label)
        vector = self.labels.vectors[i] if i is not None else self.embedder.embed([label])[0]
        return explain_image(self.encoder, image, vector, label)


def category_prompts() -> dict[str, tuple[str, ...]]:
    """The prompts the image encoder's category labels were trained with (``ray_app.vision.data``)."""
    try:
        from ray_app.vision.data import LABEL_PROMPTS
    except ImportError:
        return {}
    return dict(LABEL_PROMPTS)


def _try_default_encoder():
    from ray_app.models.image_default import get_image_encoder

    try:
        return get_image_encoder()
    except ModelNotAvailable as exc:
        log.warning("vision without an image encoder: %s", exc)
        return None


def encoder_version(encoder) -> str:
    """``<folder name>@<sha256 of config + weights size>`` — enough to tell checkpoints apart."""
    from ray_app.models.image import CONFIG_NAME, WEIGHTS_NAME

    folder = encoder.folder
    digest = hashlib.sha256((folder / CONFIG_NAME).read_bytes())
    digest.update(str((folder / WEIGHTS_NAME).stat().st_size).encode())
    return f"{folder.parent.name}/{folder.name}@{digest.hexdigest()[:12]}"


def _similar(hit) -> dict:
    return {"id": hit.id, "doc_id": hit.doc_id, "caption": hit.text, "title": hit.title,
            "score": round(hit.score, 4), "url": f"/v1/images/{hit.id}"}


def _read_text(image, notes: list[str]) -> str:
    from ray_app.models.ocr import ocr_image

    try:
        return ocr_image(image)
    except ModelNotAvailable as exc:
        notes.append(str(exc))
    except RuntimeError as exc:  # pytesseract timeout
        notes.append(f"OCR failed: {exc}")
    return ""
