"""The edge runtime: Prism's ask pipeline on one device from a bundle, with no Ray, no Postgres, no network.

    prism edge ask "What is this animal?" --image frog.png --bundle ./bundle-int4 --json
    prism edge search "frogs" --bundle ./bundle-int4 --json

:class:`EdgeRuntime` loads a bundle (``prism export edge``) and runs the server's own
:class:`ray_app.ask.service.AskService` over edge stages: vision (the image tower, zero-shot labels,
similar images, OCR), retrieval (:func:`ray_app.ask.retrieval.retrieve_passages` on the SQLite index),
generation (the ONNX Runtime GenAI LLM with the server's prompt and a prompt budget) and the audit
checks (grounding, injection; :class:`ray_app.ask.stages.CheckOnlyAudit`), so ``prism edge ask --json``
prints the ``/v1/ask`` response. Every model's thread pool is bounded by ``threads``, and the asyncio
worker pool by ``threads + 1``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from edge.encoders import EdgeImageEncoder, EdgeTextEmbedder
from edge.index import INDEX_NAME, EdgeIndex
from edge.llm import EdgeGenerate, EdgeLLM
from ray_app.ask.retrieval import SEARCH_MODES, Retrieved, retrieve_passages
from ray_app.ask.service import AskEvent, AskOptions, AskService
from ray_app.ask.stages import CheckOnlyAudit
from ray_app.errors import InputError, NotFound
from ray_app.settings import Settings, get_settings
from ray_app.store.rows import SearchHit
from ray_app.vision.analyzer import LabelIndex, VisionAnalyzer, VisionResult, load_image
from ray_app.vision.labels import read_calibration


class BundleNotFound(NotFound):
    """The folder is not an edge bundle (no manifest.json)."""


def read_manifest(bundle: Path) -> dict:
    path = Path(bundle) / "manifest.json"
    if not path.exists():
        raise BundleNotFound(f"no edge bundle at {bundle} (manifest.json missing): run `prism export edge --out DIR`")
    return json.loads(path.read_text())


class EdgeVision:
    """The vision stage on the device: the server's :class:`ray_app.vision.analyzer.VisionAnalyzer` over the
    bundle's image tower (ONNX), index, label vocabulary and calibration, so labels, ``sure`` and similar
    images come from the server's code; a text-only bundle validates and OCRs only.

    Args:
        bundle: the bundle folder.
        index: the bundle's index (similar images, exact copies).
        settings: image limits (bytes, pixels, side).
        threads: the image tower's intra-op threads.
    """

    def __init__(self, bundle: Path, index: EdgeIndex, settings: Settings, threads: int | None):
        self.index, self.settings = index, settings
        folder = Path(bundle) / "image"
        self.encoder = EdgeImageEncoder(folder, threads) if (folder / "image.json").exists() else None
        self.analyzer = None
        if self.encoder is not None:
            self.analyzer = VisionAnalyzer(index, None, self.encoder, settings, labels=bundle_labels(folder),
                                           calibration=read_calibration(folder))

    def analyze_sync(self, data: bytes, k_labels: int = 5, k_similar: int = 4) -> dict:
        if self.analyzer is not None:
            return self.analyzer.analyze(data, k_labels, k_similar).public()
        image = load_image(data, self.settings)
        width, height = image.info.get("original_size", image.size)
        result = VisionResult(hashlib.sha256(data).hexdigest(), width, height)
        result.notes.append("text-only bundle (no image tower): labels and similar images are off")
        result.ocr_text = read_text(image, result.notes)
        return result.public()

    async def analyze(self, image: bytes) -> dict:
        return await asyncio.to_thread(self.analyze_sync, image)

    async def version(self) -> str | None:
        return None if self.encoder is None else self.encoder.version


def bundle_labels(folder: Path) -> LabelIndex:
    """The exported vocabulary (``labels.json``, ``label-vectors.npy`` and, since the server's vocabulary,
    ``label-categories.json``) as a :class:`LabelIndex`, without embedding anything."""
    labels = LabelIndex([], None)  # an empty vocabulary, filled with the exported vectors
    labels.labels = json.loads((folder / "labels.json").read_text())
    labels.vectors = np.load(folder / "label-vectors.npy")
    categories = folder / "label-categories.json"
    labels.categories = json.loads(categories.read_text()) if categories.exists() else [None] * len(labels.labels)
    return labels


def read_text(image, notes: list[str]) -> str:
    """Tesseract's text, or ``""`` with a note when it is not installed or fails."""
    from ray_app.models.errors import ModelNotAvailable
    from ray_app.models.ocr import ocr_image

    try:
        return ocr_image(image)
    except ModelNotAvailable as exc:
        notes.append(str(exc))
    except RuntimeError as exc:
        notes.append(f"OCR failed: {exc}")
    return ""


class EdgeRetrieve:
    """Hybrid search over the bundle's index with the vision-expanded query (the server's retrieval)."""

    def __init__(self, index: EdgeIndex, embedder: EdgeTextEmbedder):
        self.index, self.embedder = index, embedder

    async def retrieve(self, question: str, vision: dict | None, options: AskOptions) -> Retrieved:
        return await asyncio.to_thread(retrieve_passages, question, vision, options.k, self.index, self.embedder,
                                       options.min_relevance)


class EdgeRuntime:
    """A loaded bundle: search and ask, in this process.

    Args:
        bundle: the bundle folder.
        threads: the cores to use (each model's intra-op pool and the worker pool are bounded by it).
        settings: limits; the bundle's prompt budget and answer length replace the server's.
    """

    def __init__(self, bundle: str | Path, threads: int = 2, settings: Settings | None = None):
        started = time.perf_counter()
        self.bundle = Path(bundle)
        self.manifest = read_manifest(self.bundle)
        runtime = self.manifest.get("runtime", {})
        self.settings = (settings or get_settings()).model_copy(update={
            "prompt_token_budget": runtime.get("prompt_token_budget", 256),
            "max_new_tokens": runtime.get("max_new_tokens", 64)})
        self.threads = threads
        self.index = EdgeIndex(self.bundle / INDEX_NAME)
        self.embedder = EdgeTextEmbedder(self.bundle / "embedder", threads)
        self.llm = EdgeLLM(self.bundle / "llm", threads)
        self.vision = EdgeVision(self.bundle, self.index, self.settings, threads)
        llm = self.manifest["llm"]
        versions = {"model": f"{llm['model']}@edge-{llm['variant']}", "adapter": llm.get("adapter")}
        self.service = AskService(vision=self.vision, retrieve=EdgeRetrieve(self.index, self.embedder),
                                  generate=EdgeGenerate(self.llm, self.settings.prompt_token_budget, versions),
                                  audit=CheckOnlyAudit(self.embedder), settings=self.settings)
        self.default_k = int(runtime.get("k", 3))
        self.load_s = time.perf_counter() - started

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The bounded worker pool for :func:`asyncio.to_thread` (install it as the loop's default)."""
        return concurrent.futures.ThreadPoolExecutor(max_workers=self.threads + 1, thread_name_prefix="prism-edge")

    def search(self, text: str, k: int = 5, mode: str = "hybrid", sources: list[str] | None = None,
               image: bytes | None = None) -> list[SearchHit]:
        """Chunks by ``mode`` (and, with ``image``, stored images by the image tower).

        Raises:
            InputError: empty text, an unknown mode, or an image query on a text-only bundle.
        """
        if mode not in SEARCH_MODES:
            raise InputError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        if not (text or "").strip():
            raise InputError("the search text is empty")
        if not 1 <= k <= 100:
            raise InputError(f"k must be between 1 and 100, got {k}")
        filters = _Sources(sources) if sources else None
        if mode == "text":
            hits = self.index.search_text(text, k, filters)
        else:
            vector = self.embedder.embed([text])[0]
            hits = (self.index.search_vector(vector, k, "chunk", filters) if mode == "vector"
                    else self.index.search_hybrid(text, vector, k, filters))
        if image is not None:
            if self.vision.encoder is None:
                raise InputError("this bundle is text-only: it has no image tower to search images with")
            vector = self.vision.encoder.embed([load_image(image, self.settings)])[0]
            hits += self.index.search_vector(vector, k, "image")
        return hits

    def options(self, k: int | None = None, max_new_tokens: int | None = None) -> AskOptions:
        return AskOptions(k=k or self.default_k, max_new_tokens=max_new_tokens)

    def stream(self, question: str, image: bytes | None = None, options: AskOptions | None = None):
        """The ask's events (``meta``, ``token``..., ``done``): :meth:`AskService.stream`."""
        return self.service.stream(question, image, options or self.options())

    def ask(self, question: str, image: bytes | None = None, options: AskOptions | None = None) -> dict:
        """Run one ask to the end on a private event loop with the bounded pool; the ``/v1/ask`` response."""
        async def run() -> dict:
            asyncio.get_running_loop().set_default_executor(pool)
            return await self.service.ask(question, image, options or self.options())

        with self.executor() as pool:
            return asyncio.run(run())


class _Sources:
    """A source filter with the shape the index reads (``.sources``)."""

    def __init__(self, sources: list[str]):
        self.sources = list(sources)


__all__ = ["AskEvent", "BundleNotFound", "EdgeRuntime", "read_manifest"]
