"""`prism bench embed`: the INT8 and bf16 text embedders against the fp32 one, as bare single-process loops.

    prism bench embed --docs 1500 --json               # writes docs/reports/embed-int8.{json,md}
    python -m ray_app.benchmarks.embed --docs 1500 --json

Every loop embeds the same texts (synthetic documents chunked and titled exactly as the ingest
does) with the same threads, one after the other in one process, so each ratio is what switching
the backend (``onnx-int8``, ``torch-bf16``) buys on this machine. The cosines between two backends'
vectors of each text say how far apart they are; ``docs/reports/retrieval-onnx-int8.*`` says what
INT8 does to retrieval.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_app.entrypoints import int_at_least, job_parser, run_job
from ray_app.reports import load_average, write_report

REPORT_NAME = "embed-int8"
PROG = "python -m ray_app.benchmarks.embed"


@dataclass
class EmbedBenchConfig:
    """What `prism bench embed` measures and where it writes.

    Attributes:
        docs: synthetic documents whose chunks are embedded.
        seed: synthetic corpus seed.
        threads: threads per backend (None: all CPUs).
        out: folder for ``embed-int8.{json,md}``.
        write: write the report files.
    """

    docs: int = 1500
    seed: int = 7
    threads: int | None = None
    out: Path = Path("docs/reports")
    write: bool = True


def bare_embed(texts: list[str], backend: str | None, threads: int) -> tuple[float, float, np.ndarray]:
    """Texts per second of a plain single-process loop over ``TextEmbedder.embed``, the CPU
    milliseconds (all its threads) it spent per text, and the vectors."""
    from ray_app.models.text import TextEmbedder

    embedder = TextEmbedder(backend=backend, threads=threads)
    embedder.embed(texts[:64])  # warm-up: first-call allocations
    started, cpu_started = time.perf_counter(), time.process_time()
    batch = 1024
    vectors = np.concatenate([embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
                             or [np.zeros((0, embedder.dim), np.float32)])
    cpu_ms = 1000 * (time.process_time() - cpu_started) / max(len(texts), 1)
    return len(texts) / (time.perf_counter() - started), cpu_ms, vectors


LABELS = {"onnx-int8": "int8", "torch-bf16": "bf16"}


def speedup_over_fp32(texts: list[str], threads: int, backend: str, fp32: tuple | None = None) -> dict:
    """The bare loop with the fp32 graph (or ``fp32``, its :func:`bare_embed` result) and with ``backend``
    on the same texts, and the cosines between their vectors; keys named by the backend's label."""
    label = LABELS[backend]
    fp32_per_s, fp32_ms, a = fp32 or bare_embed(texts, "onnx", threads)
    rate, ms, b = bare_embed(texts, backend, threads)
    cosine = (a * b).sum(axis=1)
    return {f"{label}_sample_texts": len(texts), "bare_embed_fp32_per_s": round(fp32_per_s, 2),
            f"bare_embed_{label}_per_s": round(rate, 2), f"{label}_speedup": round(rate / fp32_per_s, 3),
            "cpu_ms_per_text": {"fp32": round(fp32_ms, 1), label: round(ms, 1)},
            f"cosine_fp32_{label}": {"min": round(float(cosine.min()), 4), "mean": round(float(cosine.mean()), 4)}}


def int8_speedup(texts: list[str], threads: int) -> dict:
    """The bare loop with the fp32 and with the INT8 graph on the same texts, and their cosines."""
    return speedup_over_fp32(texts, threads, "onnx-int8")


def bf16_speedup(texts: list[str], threads: int) -> dict:
    """The bare loop with the fp32 graph and with the torch weights in bf16 on the same texts, their cosines,
    and whether this CPU multiplies bf16 natively (where it does not, bf16 is emulated and slow)."""
    from ray_app.models.llm import cpu_has_bf16_kernels

    return {**speedup_over_fp32(texts, threads, "torch-bf16"), "bf16_kernels": cpu_has_bf16_kernels()}


def compare_backends(texts: list[str], threads: int) -> dict:
    """fp32, INT8 and bf16 on the same texts (fp32 measured once), with the fastest of them."""
    fp32 = bare_embed(texts, "onnx", threads)
    int8 = speedup_over_fp32(texts, threads, "onnx-int8", fp32)
    bf16 = speedup_over_fp32(texts, threads, "torch-bf16", fp32)
    rates = {"onnx": fp32[0], "onnx-int8": int8["bare_embed_int8_per_s"], "torch-bf16": bf16["bare_embed_bf16_per_s"]}
    from ray_app.models.llm import cpu_has_bf16_kernels

    return {**int8, **bf16, "cpu_ms_per_text": int8["cpu_ms_per_text"] | bf16["cpu_ms_per_text"],
            "bf16_kernels": cpu_has_bf16_kernels(), "fastest_backend": max(rates, key=rates.get)}


def sample_texts(docs: int, seed: int) -> list[str]:
    """"Title: chunk" for every chunk of ``docs`` synthetic documents, as the ingest embeds them."""
    from ray_app.corpus.synthetic import build_records
    from ray_app.ingest.chunking import Chunker

    records = list(build_records(docs, seed=seed))
    chunks = Chunker().chunk_many([r["text"] for r in records])
    return [f"{r['title']}: {c}" for r, cs in zip(records, chunks, strict=True) for c in cs]


def render_markdown(r: dict, command: str | None = None) -> str:
    """The Markdown page for ``embed-int8.md`` (``command``: the run's, else ``r["command"]``)."""
    command = command or r["command"]
    bf16 = "bf16_speedup" in r
    return "\n".join([
        "# Text embedder: INT8" + (" and bf16" if bf16 else "") + " against fp32",
        "",
        f"Generated by `{command}` on this machine ({r['cpu_count']} CPUs; 1-minute load average at the end "
        f"{r['load_average'][0]}). {r['int8_sample_texts']:,} chunks of {r['documents']:,} synthetic documents, "
        f"embedded as the ingest embeds them, by a bare single-process loop with {r['threads']} threads per backend.",
        "",
        "| backend | texts/s | CPU-ms per text | cosine to fp32 (mean / min) |",
        "|---|---|---|---|",
        f"| onnx (fp32) | {r['bare_embed_fp32_per_s']:.1f} | {r['cpu_ms_per_text']['fp32']:.1f} | 1 |",
        f"| onnx-int8 | {r['bare_embed_int8_per_s']:.1f} | {r['cpu_ms_per_text']['int8']:.1f} | "
        f"{r['cosine_fp32_int8']['mean']:.4f} / {r['cosine_fp32_int8']['min']:.4f} |",
        *([f"| torch-bf16 | {r['bare_embed_bf16_per_s']:.1f} | {r['cpu_ms_per_text']['bf16']:.1f} | "
           f"{r['cosine_fp32_bf16']['mean']:.4f} / {r['cosine_fp32_bf16']['min']:.4f} |"] if bf16 else []),
        "",
        f"INT8 is {r['int8_speedup']:.2f}x the fp32 speed. Cosine between the two vectors of a text: mean "
        f"{r['cosine_fp32_int8']['mean']:.4f}, min {r['cosine_fp32_int8']['min']:.4f}. What that does to retrieval: "
        "`retrieval-onnx-int8.md` against `retrieval.md`.",
        *(["", f"bf16 is {r['bf16_speedup']:.2f}x the fp32 speed on this CPU, which "
           + ("multiplies bf16 natively (AMX or AVX-512 BF16)" if r["bf16_kernels"] else "has no bf16 kernels (emulated)")
           + f". Its vectors stay within a cosine of {r['cosine_fp32_bf16']['min']:.4f} of fp32, so they share the fp32 "
           "vectors' identity (a store is not re-embedded for them); the ingest uses bf16 where the CPU has the "
           "kernels and the configured backend is fp32 (`ray_app.models.text.ingest_backend`). Fastest here: "
           f"{r['fastest_backend']}."] if bf16 else []),
        "",
        "The numbers are in `embed-int8.json` next to this file.",
        "",
    ])


def bench_embed(config: EmbedBenchConfig) -> dict:
    """Run the benchmark and (with ``config.write``) write its report; returns the result."""
    threads = config.threads or os.cpu_count() or 1
    texts = sample_texts(config.docs, config.seed)
    result = {"documents": config.docs, "seed": config.seed, "threads": threads, **compare_backends(texts, threads),
              "cpu_count": os.cpu_count(), "load_average": load_average()}
    command = f"prism bench embed --docs {config.docs} --seed {config.seed} --threads {threads} --json"
    if config.write:
        write_report(config.out, REPORT_NAME, result, render_markdown, command=command)
    return result


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The job's arguments; every default is :class:`EmbedBenchConfig`'s."""
    d = EmbedBenchConfig
    p = job_parser(prog, __doc__)
    p.add_argument("--docs", type=int_at_least(1), default=d.docs, metavar="N",
                   help="Synthetic documents whose chunks are embedded.")
    p.add_argument("--seed", type=int, default=d.seed, help="Synthetic corpus seed.")
    p.add_argument("--threads", type=int_at_least(1), default=d.threads, metavar="N",
                   help="Threads per backend (default: all CPUs).")
    p.add_argument("--out", type=Path, default=d.out, help="Where embed-int8.{json,md} are written.")
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=d.write, help="Write the report files.")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """``prism bench embed`` / ``python -m ray_app.benchmarks.embed``: run, write the report, print the result."""
    return run_job(build_parser(prog or PROG), argv, lambda args: bench_embed(EmbedBenchConfig(**args)))


if __name__ == "__main__":
    main()
