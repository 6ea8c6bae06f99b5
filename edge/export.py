"""Export an edge bundle: the LLM (ONNX Runtime GenAI), MiniLM (INT8 ONNX), the image tower (ONNX), the index.

    prism export edge --out ./bundle-int4 [--variant int4|int8|fp32] [--int4-recipe NAME] [--sources wiki ...] [--max-docs N]
    python -m edge.export --out ./bundle-int4

One self-contained folder that ``prism edge ask|search|serve --bundle DIR`` runs with no network, no Ray
and no Postgres::

    manifest.json         sha256 and size of every file, versions, sources, what was left out, memory budget
    llm/                  genai_config.json, model.onnx(.data), tokenizer.json, chat_template.jinja
    embedder/             model.onnx (MiniLM, INT8 weights), tokenizer.json, embedder.json
    image/                image-tower.onnx, image.json, calibration.json, labels.json, label-categories.json,
                          label-vectors.npy (only with a trained encoder; the server's vocabulary and calibration)
    index.sqlite          documents, chunks (text + vector, FTS5), images (caption, sha256, vector), licences

It exports what exists and says what it left out: the LLM the server would serve (the adapter in
``PRISM_LLM_ADAPTER``, else the newest trained under ``$PRISM_HOME/checkpoints``, merged into the base; the base
model when there is none or ``PRISM_LLM_ADAPTER=none``), a text-only bundle when no image encoder has been trained. The LLM builds
(``python -m onnxruntime_genai.models.builder``, offline from the local folder) are cached under
``$PRISM_HOME/engines/edge-<variant>-<source hash>``; bundles belong under ``$PRISM_HOME`` or a temporary
folder, never in the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge.index import INDEX_NAME, write_index
from ray_app.errors import InputError, PrismError
from ray_app.models.errors import ModelNotAvailable
from ray_app.settings import Settings, get_settings

log = logging.getLogger(__name__)
VARIANTS = ("int4", "int8", "fp32")
BUNDLE_FORMAT = 1
# How the int4 variant is quantized: onnxruntime-genai builder extra options per named recipe. The default was
# chosen on 30 wiki RAG prompts of the served SmolLM2 + demo adapter (teacher-forced top-1 agreement with torch
# fp32: kquant-mixed 0.976, fp32-head 0.961 on 743 tokens); `prism bench edge` compares every recipe on its own
# prompts (docs/reports/edge.md, "int4 recipes").
INT4_RECIPES: dict[str, dict[str, str]] = {
    # k-quant int4 body; the LM head and llama.cpp's sensitive projections (qkv, v, down of the first and last
    # eighth of the layers and every third one) in int8; LM head only on the last prompt token in prefill.
    "kquant-mixed": {"algo_config": "k_quant", "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8",
                     "prune_lm_head": "true"},
    # The earlier default: RTN int4 everywhere but the LM head, kept in fp32 (+113 MB, read at every token).
    "fp32-head": {"nodes_to_exclude": "/lm_head/MatMul"},
    # The builder's own int4 defaults (RTN, symmetric, block 32, LM head and embeddings int4).
    "builder-default": {},
}
DEFAULT_INT4_RECIPE = "kquant-mixed"
# The builder's extra options per variant. Every variant computes the LM head on the last prompt token only
# in prefill (the runtime reads no other logits): int8's 255-token prefill fell from 400 to 309 ms on 2 cores.
LLM_OPTIONS: dict[str, dict[str, str]] = {"int4": INT4_RECIPES[DEFAULT_INT4_RECIPE],
                                          "int8": {"prune_lm_head": "true"}, "fp32": {"prune_lm_head": "true"}}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class ExportError(PrismError):
    """A part of the bundle could not be built (the builder failed, the store is empty)."""

    code = "export_failed"


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog or "prism export edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Bundle folder (default: $PRISM_HOME/edge/bundle-<variant>).")
    parser.add_argument("--variant", choices=VARIANTS, default="int4", help="LLM weight precision (default int4).")
    parser.add_argument("--sources", nargs="*", default=None, help="Only documents from these corpus sources.")
    parser.add_argument("--max-docs", type=int, default=None, help="At most this many documents (by id order).")
    parser.add_argument("--prompt-budget", type=int, default=256, help="Prompt tokens the runtime keeps to (passages trimmed).")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="The runtime's answer length limit.")
    parser.add_argument("--int4-recipe", choices=sorted(INT4_RECIPES), default=DEFAULT_INT4_RECIPE,
                        help=f"How --variant int4 is quantized (default {DEFAULT_INT4_RECIPE}): " + "; ".join(
                            f"{name} = {' '.join(f'{k}={v}' for k, v in opts.items()) or 'the builder defaults'}"
                            for name, opts in INT4_RECIPES.items()) + ". See docs/deploy-edge.md for the measurements.")
    parser.add_argument("--llm-option", action="append", default=[], metavar="KEY=VALUE",
                        help="An onnxruntime-genai builder extra option (e.g. accuracy_level=1, block_size=16); repeatable. "
                             "Given, these replace the variant's defaults and the int4 recipe.")
    parser.add_argument("--json", action="store_true", help="Print the manifest's summary as one JSON object.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    args = parse_args(argv, prog)
    settings = get_settings()
    out = args.out or settings.home / "edge" / f"bundle-{args.variant}"
    options = llm_options_from_args(args)
    manifest = export_bundle(out, args.variant, args.sources, args.max_docs, settings,
                             prompt_budget=args.prompt_budget, max_new_tokens=args.max_new_tokens, llm_options=options)
    summary = {"bundle": str(out), "variant": args.variant, "bundle_mb": manifest["bundle_mb"],
               "left_out": manifest["left_out"], "index": manifest["index"]}
    if args.json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        print(f"bundle {out}: {manifest['bundle_mb']} MB; left out: {', '.join(manifest['left_out']) or 'nothing'}",
              file=sys.stderr)
    return summary


def llm_options_from_args(args: argparse.Namespace) -> dict[str, str] | None:
    """The builder options the command line asks for: ``--llm-option`` pairs, else the int4 recipe, else None
    (the variant's defaults).

    Raises:
        InputError: an ``--llm-option`` without ``=``.
    """
    if args.llm_option:
        bad = [o for o in args.llm_option if "=" not in o]
        if bad:
            raise InputError(f"--llm-option takes KEY=VALUE, got {bad[0]!r}")
        return dict(o.split("=", 1) for o in args.llm_option)
    return dict(INT4_RECIPES[args.int4_recipe]) if args.variant == "int4" else None


def export_bundle(out: Path, variant: str = "int4", sources: list[str] | None = None, max_docs: int | None = None,
                  settings: Settings | None = None, store=None, prompt_budget: int = 256,
                  max_new_tokens: int = 64, llm_options: dict[str, str] | None = None) -> dict:
    """Write the bundle into ``out`` (replaced when it exists) and return its manifest.

    Args:
        out: the bundle folder.
        variant: ``int4``, ``int8`` or ``fp32`` LLM weights.
        sources, max_docs: which documents go into the index.
        store: the :class:`ray_app.store.Store` to read (default: the configured one).
        prompt_budget, max_new_tokens: the runtime's defaults, written into the manifest.
        llm_options: extra options for the onnxruntime-genai builder (default: :data:`LLM_OPTIONS` of the variant).

    Raises:
        InputError: an unknown variant.
        ExportError: the LLM build failed or the store holds no chunks.
    """
    if variant not in VARIANTS:
        raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    settings = settings or get_settings()
    started = time.perf_counter()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    left_out: list[str] = []
    llm = export_llm(tmp / "llm", variant, settings, llm_options)
    export_text_embedder(tmp / "embedder", settings)
    index = export_index(tmp / INDEX_NAME, settings, sources, max_docs, store, left_out)
    image = export_image_tower(tmp / "image", settings, left_out, title_rows=index.pop("title_rows"))
    manifest = write_manifest(tmp, variant=variant, llm=llm, image=image, index=index, left_out=left_out,
                              settings=settings, prompt_budget=prompt_budget, max_new_tokens=max_new_tokens,
                              seconds=time.perf_counter() - started)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return manifest


# ------------------------------------------------------------------ the LLM
def llm_source(settings: Settings) -> tuple[Path, str | None]:
    """The LLM folder to convert and the adapter merged into it: the one the server would serve
    (``PRISM_LLM_ADAPTER``, else the newest trained under ``$PRISM_HOME/checkpoints``; None for the base model)."""
    from ray_app.models.llm import resolve_adapter, resolve_llm

    adapter = resolve_adapter(settings)[0]
    if adapter and not Path(adapter, "adapter_config.json").exists():
        raise ModelNotAvailable(f"adapter folder {adapter!r} has no adapter_config.json (set PRISM_LLM_ADAPTER)")
    return resolve_llm(settings.llm_model, settings), adapter


def source_key(folder: Path, adapter: str | None) -> str:
    """A short hash of the model's config, weight sizes and the adapter: the cache key of a build."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for part in [folder, *([Path(adapter)] if adapter else [])]:
        for f in sorted(part.glob("*.safetensors")) + sorted(part.glob("adapter_config.json")):
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def cached_llm_build(variant: str, settings: Settings, options: dict[str, str] | None = None) -> Path:
    """The ONNX Runtime GenAI build of the configured LLM (+ adapter) in ``variant`` with the builder's extra
    ``options`` (default: :data:`LLM_OPTIONS`), built once under ``$PRISM_HOME/engines``."""
    folder, adapter = llm_source(settings)
    options = LLM_OPTIONS.get(variant, {}) if options is None else options
    key = source_key(folder, adapter)
    suffix = "-" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:6] if options else ""
    build = settings.home / "engines" / f"edge-{variant}-{key}{suffix}"
    if not (build / "genai_config.json").exists():
        source = merged_llm_dir(folder, adapter, key, settings) if adapter else folder
        build_genai_model(source, build, variant, options)
    return build


def export_llm(out: Path, variant: str, settings: Settings, options: dict[str, str] | None = None) -> dict:
    """Copy the cached ONNX Runtime GenAI build of the LLM (building it first when missing) into ``out``."""
    folder, adapter = llm_source(settings)
    options = LLM_OPTIONS.get(variant, {}) if options is None else options
    build = cached_llm_build(variant, settings, options)
    shutil.copytree(build, out)
    recipe = next((name for name, opts in INT4_RECIPES.items() if opts == options), None) if variant == "int4" else None
    return {"model": settings.llm_model, "folder": str(folder), "adapter": adapter, "variant": variant,
            "int4_recipe": recipe, "builder_options": options, "build": build.name, "format": "onnxruntime-genai"}


def merged_llm_dir(folder: Path, adapter: str, key: str, settings: Settings) -> Path:
    """The adapter merged into the base weights (float32), saved once as a Hugging Face folder."""
    from ray_app.models.llm import load_llm

    merged = settings.home / "engines" / f"merged-{key}"
    if not (merged / "config.json").exists():
        llm = load_llm(settings.llm_model, adapter, settings, dtype="float32")
        tmp = merged.with_name(merged.name + f".tmp{os.getpid()}")
        llm.model.save_pretrained(tmp)
        llm.tokenizer.save_pretrained(tmp)
        os.replace(tmp, merged)
    return merged


def build_genai_model(source: Path, out: Path, variant: str, options: dict[str, str] | None = None) -> Path:
    """Run onnxruntime-genai's model builder (offline, from the local folder) into ``out``, atomically.

    Raises:
        ExportError: the builder failed (its last lines are in the message).
    """
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    cache = out.with_name(out.name + f".cache{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(tmp),
               "-p", variant, "-e", "cpu", "-c", str(cache)]
    if options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    log.info("building the %s ONNX Runtime GenAI model: %s", variant, " ".join(command))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0 or not (tmp / "genai_config.json").exists():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ExportError(f"the onnxruntime-genai builder failed for {source} ({variant}): {tail}")
    # The builder copies the tokenizer; the chat template may live only in tokenizer_config.json.
    for name in ("chat_template.jinja", "tokenizer_config.json", "tokenizer.json"):
        if not (tmp / name).exists() and (source / name).exists():
            shutil.copy2(source / name, tmp / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------ the encoders
def export_text_embedder(out: Path, settings: Settings) -> dict:
    """MiniLM's INT8 ONNX graph (``ray_app.models.text`` exports and quantises it once) and its tokenizer."""
    from ray_app.models.text import TextEmbedder

    embedder = TextEmbedder(backend="onnx-int8", settings=settings)
    out.mkdir(parents=True)
    shutil.copy2(embedder.onnx_path(int8=True), out / "model.onnx")
    for name in TOKENIZER_FILES:
        if (embedder.folder / name).exists():
            shutil.copy2(embedder.folder / name, out / name)
    pad = embedder.tokenizer.pad_token or "[PAD]"
    info = {"file": "model.onnx", "model": embedder.model_name, "quantisation": "int8 dynamic, per-channel weights",
            "max_tokens": embedder.max_tokens, "pad_token": pad, "pad_id": embedder.tokenizer.convert_tokens_to_ids(pad),
            "pooling": "mean, L2-normalised", "dim": embedder.dim}
    (out / "embedder.json").write_text(json.dumps(info, indent=2))
    return info


def export_image_tower(out: Path, settings: Settings, left_out: list[str],
                       title_rows: list[tuple[str, str | None]] = ()) -> dict | None:
    """The trained image tower as fp32 ONNX with its preprocessing, its label calibration (``calibration.json``)
    and the server's label vocabulary (the concrete names of the documents' titles, with their categories:
    ``ray_app.vision.analyzer.VisionAnalyzer``) embedded once here; None (and a note in ``left_out``) when no
    encoder has been trained.

    Args:
        title_rows: ``(title, category)`` of the bundle's documents (:func:`bundle_titles`).
    """
    from ray_app.models.image import ImageEncoder
    from ray_app.models.image_default import default_image_encoder_dir
    from ray_app.models.text import TextEmbedder
    from ray_app.vision.analyzer import LabelIndex, encoder_version
    from ray_app.vision.labels import CALIBRATION_NAME, label_entries, read_calibration

    folder = settings.image_encoder or default_image_encoder_dir()
    try:
        encoder = ImageEncoder(folder)
    except ModelNotAvailable as exc:
        left_out.append(f"image tower: {exc} (a text-only bundle: no labels or similar images; OCR still runs)")
        return None
    out.mkdir(parents=True)
    export_image_onnx(encoder, out / "image-tower.onnx")
    cfg = encoder.config
    info = {"file": "image-tower.onnx", "embed_dim": cfg.embed_dim, "image_size": cfg.image_size,
            "mean": list(cfg.mean), "std": list(cfg.std), "labels": list(cfg.labels),
            "checkpoint": str(folder), "version": encoder_version(encoder), "precision": "fp32",
            "int8": "not exported: dynamic INT8 of the conv/attention tower is not checked for accuracy yet"}
    names, categories = label_entries(title_rows)
    labels = LabelIndex(names, TextEmbedder(settings=settings), categories=categories)
    np.save(out / "label-vectors.npy", labels.vectors.astype(np.float32))
    (out / "labels.json").write_text(json.dumps(labels.labels))
    (out / "label-categories.json").write_text(json.dumps(labels.categories))
    calibration = read_calibration(folder)
    if (Path(folder) / CALIBRATION_NAME).is_file():
        shutil.copy2(Path(folder) / CALIBRATION_NAME, out / CALIBRATION_NAME)
    info["calibration"] = {"fitted": calibration.fitted, "method": calibration.method}
    (out / "image.json").write_text(json.dumps(info, indent=2))
    return info


def export_image_onnx(encoder, path: Path) -> Path:
    """Trace the open_clip image tower (pixels -> unnormalised features) to ONNX with a dynamic batch."""
    import torch

    size = encoder.config.image_size
    # Without grad, nn.MultiheadAttention takes a fused fast path that has no ONNX export; the plain path does.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(encoder.model, (torch.zeros(1, 3, size, size),), str(path), input_names=["pixels"],
                              output_names=["features"], dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                              opset_version=17, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


# ------------------------------------------------------------------ the index
def export_index(path: Path, settings: Settings, sources: list[str] | None, max_docs: int | None, store,
                 left_out: list[str]) -> dict:
    """Copy documents, chunks and images (with their vectors and licences) from the store into ``path``.

    Raises:
        ExportError: no chunk matched.
    """
    from ray_app.store import get_store

    store = store or get_store()
    documents, chunks, images = read_store(store, sources, max_docs)
    if not chunks:
        raise ExportError("the store has no chunks to export" + (f" from {sources}" if sources else "")
                          + ": ingest a corpus first (prism ingest)")
    if images and not any(i["embedding"] is not None for i in images):
        left_out.append("image vectors: the stored images have none (no image encoder at ingest)")
    counts = write_index(path, documents, chunks, images,
                         meta={"sources": json.dumps(sorted({d["source"] for d in documents})),
                               "embedder": settings.text_model})
    licences: dict[str, int] = {}
    for d in documents:
        licences[d.get("license") or "unknown"] = licences.get(d.get("license") or "unknown", 0) + 1
    return {"file": INDEX_NAME, **counts, "sources": sorted({d["source"] for d in documents}), "licences": licences,
            "search": "exact cosine over the float32 vectors (numpy) + FTS5 BM25, fused as the server fuses (fusion.json)",
            "title_rows": bundle_titles(store, [d["id"] for d in documents])}


def bundle_titles(store, doc_ids: list[str]) -> list[tuple[str, str | None]]:
    """Distinct ``(title, category)`` pairs of these documents, read as the server reads its label vocabulary
    (``ray_app.vision.analyzer.corpus_titles``: the smallest category per title, ordered by title, at most
    ``MAX_TITLE_LABELS``)."""
    from ray_app.vision.analyzer import MAX_TITLE_LABELS

    with store.pool.connection() as conn:
        rows = conn.execute("SELECT title, min(category) FROM documents WHERE id = ANY(%s) GROUP BY title"
                            " ORDER BY title LIMIT %s", (doc_ids, MAX_TITLE_LABELS)).fetchall()
    return [(r[0], r[1]) for r in rows]


def read_store(store, sources: list[str] | None, max_docs: int | None) -> tuple[list[dict], list[dict], list[dict]]:
    """Documents (by id, at most ``max_docs``), their chunks and images, from the store."""
    where, params = ("WHERE source = ANY(%s)", [list(sources)]) if sources else ("", [])
    limit = " LIMIT %s" if max_docs else ""
    params += [max_docs] if max_docs else []
    with store.pool.connection() as conn:
        docs = conn.execute(f"SELECT id, source, title, url, license, category FROM documents {where}"
                            f" ORDER BY id{limit}", params).fetchall()
        ids = [d[0] for d in docs]
        chunk_rows = conn.execute("SELECT id, doc_id, text, embedding FROM chunks WHERE doc_id = ANY(%s)"
                                  " ORDER BY doc_id, ord", (ids,)).fetchall()
        image_rows = conn.execute("SELECT id, doc_id, caption, sha256, embedding FROM images WHERE doc_id = ANY(%s)"
                                  " ORDER BY id", (ids,)).fetchall()
    documents = [dict(zip(("id", "source", "title", "url", "license", "category"), d, strict=True)) for d in docs]
    chunks = [{"id": r[0], "doc_id": r[1], "text": r[2], "embedding": _array(r[3])}
              for r in chunk_rows]
    images = [{"id": r[0], "doc_id": r[1], "caption": r[2], "sha256": r[3],
               "embedding": None if r[4] is None else _array(r[4])} for r in image_rows]
    return documents, chunks, images


def _array(vector) -> np.ndarray:
    """A pgvector value (``Vector`` or an array, by how the connection registered the type) as float32."""
    return np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, dtype=np.float32)


# ------------------------------------------------------------------ the manifest
def file_entries(folder: Path) -> dict[str, dict]:
    """``{relative path: {"sha256", "bytes"}}`` for every file under ``folder``."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        entries[path.relative_to(folder).as_posix()] = {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}
    return entries


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("prism", "onnxruntime", "onnxruntime-genai", "tokenizers", "numpy", "onnx", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def memory_budget_mb(folder: Path, llm_config: dict, context_tokens: int) -> dict:
    """An upper estimate of the runtime's resident memory: weights, KV cache, index vectors, runtime."""
    def size(*globs):
        return sum(p.stat().st_size for g in globs for p in folder.glob(g)) / 2**20

    decoder = llm_config["model"]["decoder"]
    kv = 2 * decoder["num_hidden_layers"] * decoder["num_key_value_heads"] * decoder["head_size"] * 4 * context_tokens
    budget = {"llm_weights_mb": round(size("llm/model.onnx*"), 1), "kv_cache_mb": round(kv / 2**20, 1),
              "embedder_mb": round(size("embedder/*.onnx"), 1), "image_tower_mb": round(size("image/*.onnx"), 1),
              "index_mb": round(size(INDEX_NAME), 1), "runtime_overhead_mb": 150.0}
    budget["total_mb"] = round(sum(budget.values()), 1)
    return budget


def write_manifest(folder: Path, *, variant: str, llm: dict, image: dict | None, index: dict, left_out: list[str],
                   settings: Settings, prompt_budget: int, max_new_tokens: int, seconds: float) -> dict:
    files = file_entries(folder)
    llm_config = json.loads((folder / "llm" / "genai_config.json").read_text())
    manifest = {
        "format": BUNDLE_FORMAT,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variant": variant,
        "llm": llm,
        "embedder": json.loads((folder / "embedder" / "embedder.json").read_text()),
        "image": image,
        "text_only": image is None,
        "index": index,
        "runtime": {"prompt_token_budget": prompt_budget, "max_new_tokens": max_new_tokens, "k": 3},
        "left_out": left_out,
        "versions": package_versions(),
        "memory_budget": memory_budget_mb(folder, llm_config, prompt_budget + max_new_tokens),
        "files": files,
        "bundle_mb": round(sum(f["bytes"] for f in files.values()) / 2**20, 1),
        "export_s": round(seconds, 1),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify_bundle(folder: Path) -> list[str]:
    """Files whose size or sha256 differ from the manifest, or are missing (empty: the bundle is intact)."""
    manifest = json.loads((Path(folder) / "manifest.json").read_text())
    found = file_entries(Path(folder))
    return [name for name, entry in manifest["files"].items() if found.get(name) != entry]


if __name__ == "__main__":
    main()
