"""`prism bench edge`: the edge bundle per variant, pinned to 2 cores and to 1, against the memory-bandwidth bound.

    prism bench edge --json [--variants int4 int8 fp32] [--n 12] [--out docs/reports]
    python -m edge.bench --json

For each variant (a bundle ``$PRISM_HOME/edge/bundle-<variant>``, exported from the configured store when
missing) and each core budget, a fresh child process pinned to those cores (``sched_setaffinity``, every
thread pool sized to match) measures: cold start (process start to a loaded runtime), ``n`` image+question
asks (TTFT and total p50/p95, ≤ 64 new tokens, the bundle's prompt budget), decode tokens/s at batch 1 on a
fixed prompt, a STREAM-style copy bandwidth on the same cores, and its peak RSS. The bound on decode is
bandwidth ÷ bytes read per token (the LLM's weight files). The parent also measures the LLM's teacher-forced
top-1 agreement with torch fp32, greedy-token parity of the fp32 export, and the retrieval index candidates
(exact numpy, FAISS flat/HNSW, usearch, sqlite-vec) at equal recall. It writes ``docs/reports/edge.{json,md}``;
the top level is the default (int4) variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edge.export import INT4_RECIPES
from ray_app.reports import load_average, write_report
from ray_app.settings import get_settings

QUESTIONS = [
    ("What is this and where does it live?", "chelsea.png"),
    ("What is this drink made from?", "coffee.png"),
    ("How does this vehicle reach space?", "rocket.jpg"),
    ("What is this person wearing and why?", "astronaut.png"),
    ("What is shown here and how does it move?", "horse.png"),
    ("What is this object in the sky?", "moon.png"),
]
KEYS = ("total_p95_ms", "ttft_p95_ms", "peak_rss_mb", "bundle_mb", "decode_tokens_per_s", "bandwidth_bound_tokens_per_s")
FLAG = Path("/tmp/prism-bench-running")


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog or "prism bench edge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["int4", "int8", "fp32"], help="LLM variants (one bundle each).")
    parser.add_argument("--cores", nargs="+", type=int, default=[2, 1], help="Core budgets to pin to.")
    parser.add_argument("--n", type=int, default=12, help="Asks per variant and core budget.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Answer length limit of the asks.")
    parser.add_argument("--bundles", type=Path, default=None, help="Folder of bundle-<variant> folders (default $PRISM_HOME/edge).")
    parser.add_argument("--sources", nargs="*", default=None, help="Export missing bundles from these sources only.")
    parser.add_argument("--max-docs", type=int, default=None, help="Export missing bundles with at most N documents.")
    parser.add_argument("--parity-prompts", type=int, default=12,
                        help="Prompts for the agreement measurement, spread over the index (0: skip).")
    parser.add_argument("--int4-recipes", nargs="*", default=None, metavar="NAME",
                        help="int4 recipes (prism export edge --int4-recipe) whose LLM alone is compared on the parity "
                             "prompts: agreement, size, decode (default: every recipe; none: skip).")
    parser.add_argument("--out", type=Path, default=None, help="Write edge.{json,md} here (e.g. docs/reports).")
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    args = parse_args(argv, prog)
    if args.child:
        result = run_child(json.loads(args.child))
        sys.stdout.write(json.dumps(result) + "\n")
        return result
    result = run_bench(args)
    if args.out:
        write_report(args.out, "edge", result, render_markdown, command="prism bench edge " + " ".join(argv or []))
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    return result


# ------------------------------------------------------------------ the parent
def run_bench(args: argparse.Namespace) -> dict:
    settings = get_settings()
    root = args.bundles or settings.home / "edge"
    bundles = {v: ensure_bundle(root / f"bundle-{v}", v, args.sources, args.max_docs) for v in args.variants}
    started = time.time()
    load_before = load_average()
    variants = {}
    for variant, bundle in bundles.items():
        manifest = json.loads((bundle / "manifest.json").read_text())
        runs = {cores: child_run(bundle, cores, args.n, args.max_new_tokens) for cores in args.cores}
        first = runs[args.cores[0]]
        variants[variant] = {**{k: first[k] for k in KEYS if k in first}, "bundle_mb": manifest["bundle_mb"],
                             "cores": {str(c): r for c, r in runs.items()}}
    recipes = list(INT4_RECIPES) if args.int4_recipes is None else args.int4_recipes
    parity = measure_parity(bundles, args.parity_prompts, recipes) if args.parity_prompts else {}
    index = compare_indexes(bundles[args.variants[0]])
    default = "int4" if "int4" in variants else args.variants[0]
    top = {k: variants[default].get(k) for k in KEYS}
    return {**top, "default_variant": default, "cores": args.cores[0], "variants": variants, "parity": parity,
            "index": index, "n_asks": args.n, "max_new_tokens": args.max_new_tokens,
            "load_average": {"before": load_before, "after": load_average()}, "seconds": round(time.time() - started, 1),
            "machine": machine()}


def ensure_bundle(bundle: Path, variant: str, sources, max_docs) -> Path:
    if not (bundle / "manifest.json").exists():
        from edge.export import export_bundle

        export_bundle(bundle, variant, sources, max_docs)
    return bundle


def child_run(bundle: Path, cores: int, n: int, max_new_tokens: int) -> dict:
    """One fresh pinned process: its cold start is the time from exec to a loaded runtime."""
    spec = {"bundle": str(bundle), "cores": cores, "n": n, "max_new_tokens": max_new_tokens, "t0": time.time()}
    env = dict(os.environ, OMP_NUM_THREADS=str(cores), OPENBLAS_NUM_THREADS=str(cores), MKL_NUM_THREADS=str(cores))
    done = subprocess.run([sys.executable, "-m", "edge.bench", "--child", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"the edge bench child failed ({bundle.name}, {cores} cores): {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> dict:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), None)
    return {"cpu": model, "logical_cpus": os.cpu_count(), "avx512": "avx512f" in flags, "amx": "amx_int8" in flags}


# ------------------------------------------------------------------ the pinned child
def run_child(spec: dict) -> dict:
    cores = int(spec["cores"])
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    from edge.runtime import EdgeRuntime

    runtime = EdgeRuntime(spec["bundle"], threads=cores)
    cold_start_s = time.time() - spec["t0"]
    asks = run_asks(runtime, int(spec["n"]), int(spec["max_new_tokens"]))
    decode = decode_rate(runtime, 64)
    budget = full_budget_llm(runtime, runtime_budget(spec["bundle"]), int(spec["max_new_tokens"]))
    peak_rss_mb = peak_rss_mb_now()  # before the copy test's arrays
    bandwidth = copy_bandwidth_gbs(cores)
    weights = sum(p.stat().st_size for p in (Path(spec["bundle"]) / "llm").glob("model.onnx*"))
    bound = bandwidth * 1e9 / weights
    totals, ttfts = asks.pop("total_ms"), asks.pop("ttft_ms")
    return {
        "cores": cores, "cold_start_s": round(cold_start_s, 2), "load_s": round(runtime.load_s, 2),
        "total_p50_ms": pct(totals, 50), "total_p95_ms": pct(totals, 95),
        "ttft_p50_ms": pct(ttfts, 50), "ttft_p95_ms": pct(ttfts, 95), **asks, **decode, **budget,
        "bandwidth_gb_s": round(bandwidth, 2), "weight_bytes_per_token": weights,
        "bandwidth_bound_tokens_per_s": round(bound, 1),
        "decode_share_of_bound": round(decode["decode_tokens_per_s"] / bound, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
    }


def peak_rss_mb_now() -> float:
    """This process's peak resident memory (``VmHWM``: reset at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_asks(runtime, n: int, max_new_tokens: int) -> dict:
    """``n`` image+question asks (round robin over the bundled photos); one warm-up ask first, not counted."""
    from ray_app.ask.service import AskOptions

    totals, ttfts, tokens, prompt_tokens = [], [], [], []
    images = photo_bytes()
    runtime.ask("What is this?", images[0][1] if images else None, AskOptions(k=3, max_new_tokens=8))
    for i in range(n):
        question, name = QUESTIONS[i % len(QUESTIONS)]
        image = dict(images).get(name)
        start = time.perf_counter()
        response = runtime.ask(question, image, AskOptions(k=3, max_new_tokens=max_new_tokens))
        totals.append((time.perf_counter() - start) * 1000)
        ttfts.append(response["timings_ms"].get("ttft_ms", totals[-1]))
        tokens.append(response["usage"]["completion_tokens"])
        prompt_tokens.append(response["usage"]["prompt_tokens"])
    return {"total_ms": totals, "ttft_ms": ttfts, "answer_tokens_mean": round(float(np.mean(tokens)), 1),
            "prompt_tokens_mean": round(float(np.mean(prompt_tokens)), 1), "asks": n, "with_image": bool(images)}


def photo_bytes() -> list[tuple[str, bytes]]:
    """The bench's images: photos bundled with scikit-image (no download)."""
    try:
        import skimage.data
    except ImportError:
        return []
    folder = Path(skimage.data.data_dir)
    return [(name, (folder / name).read_bytes()) for _, name in QUESTIONS if (folder / name).exists()]


def decode_rate(runtime, new_tokens: int) -> dict:
    """Batch-1 decode tokens/s after the first token, on a fixed short prompt (best of 3)."""
    prompt = runtime.llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a long story about a frog who wants to visit the Moon."}],
        add_generation_prompt=True)
    ids = runtime.llm.tokenizer.encode(prompt)
    best = 0.0
    for _ in range(3):
        stamps = []
        for _token in runtime.llm.stream_ids(ids, new_tokens):
            stamps.append(time.perf_counter())
        if len(stamps) > 2:
            best = max(best, (len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return {"decode_tokens_per_s": round(best, 1)}


def runtime_budget(bundle: str) -> int:
    return int(json.loads((Path(bundle) / "manifest.json").read_text())["runtime"]["prompt_token_budget"])


def full_budget_llm(runtime, budget: int, new_tokens: int) -> dict:
    """The LLM's worst case in an ask, whatever the corpus: a prompt of ``budget`` tokens (best of 3 prefills),
    then ``new_tokens`` tokens at the decode step measured after it (``prefill + (new_tokens - 1) x step``)."""
    tokenizer = runtime.llm.tokenizer
    text = " ".join(["The frog looked up at the Moon and wondered how far away it was."] * 40)
    ids = tokenizer.encode(tokenizer.apply_chat_template(
        [{"role": "user", "content": text + " Write a long story about the frog's journey to the Moon."}],
        add_generation_prompt=True))[-budget:]
    prefill, step = float("inf"), float("inf")
    for _ in range(3):
        start = time.perf_counter()
        stamps = [time.perf_counter() for _token in runtime.llm.stream_ids(ids, new_tokens)]
        prefill = min(prefill, (stamps[0] - start) * 1000)
        if len(stamps) > 2:
            step = min(step, (stamps[-1] - stamps[0]) * 1000 / (len(stamps) - 1))
    return {"full_budget_prompt_tokens": len(ids), "full_budget_prefill_ms": round(prefill, 1),
            "full_budget_llm_ms": round(prefill + (new_tokens - 1) * step, 1)}


def copy_bandwidth_gbs(threads: int, mb: int = 256, repeats: int = 5) -> float:
    """STREAM "copy": bytes read + written per second, ``threads`` threads each copying its slice (best of repeats)."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(mb * 2**20 // 8)
    b = np.empty_like(a)
    parts = np.array_split(np.arange(len(a)), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts]
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda r: np.copyto(b[r[0]:r[1]], a[r[0]:r[1]]), bounds))
            best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best / 1e9


def pct(values: list[float], q: int) -> float:
    return round(float(np.percentile(values, q)), 1)


# ------------------------------------------------------------------ parity and the index
def measure_parity(bundles: dict[str, Path], n_prompts: int, recipes: list[str] = ()) -> dict:
    """Agreement of every variant with torch fp32 on RAG prompts rendered from the bundle's own passages, and
    of the int4 LLM built with each of ``recipes`` (under ``int4_recipes``: agreement, files, decode tokens/s)."""
    from edge.llm import EdgeLLM
    from edge.parity import greedy_parity, top1_agreement
    from ray_app.models.llm import load_llm

    torch_llm = load_llm(adapter=None, dtype="float32")
    prompts = parity_prompts(next(iter(bundles.values())), n_prompts)
    out = {}
    for variant, bundle in bundles.items():
        edge = EdgeLLM(bundle / "llm", threads=2)
        out[variant] = {"top1": top1_agreement(edge, torch_llm, prompts)}
        if variant == "fp32":
            rows = greedy_parity(edge, torch_llm, prompts)
            out[variant]["greedy_equal"] = f"{sum(r['equal'] for r in rows)}/{len(rows)}"
    if recipes:
        out["int4_recipes"] = {name: measure_recipe(name, torch_llm, prompts) for name in recipes}
    return out


def measure_recipe(name: str, torch_llm, prompts: list[str]) -> dict:
    """One int4 recipe's LLM (built once, cached): top-1 agreement, weight files, decode tokens/s on 2 threads."""
    from edge.export import INT4_RECIPES, cached_llm_build
    from edge.llm import EdgeLLM
    from edge.parity import top1_agreement

    folder = cached_llm_build("int4", get_settings(), INT4_RECIPES[name])
    edge = EdgeLLM(folder, threads=2)
    size = sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    return {"options": INT4_RECIPES[name], "top1": top1_agreement(edge, torch_llm, prompts),
            "llm_mb": round(size / 2**20, 1), **decode_rate(SimpleNamespace(llm=edge), 64)}


def parity_prompts(bundle: Path, n: int) -> list[str]:
    """``n`` answer prompts (server format, 256-token budget) built from the bundle's passages: pairs of
    consecutive chunks spread evenly over the index (the first chunks alone are one corner of the corpus)."""
    from edge.index import EdgeIndex
    from edge.tokenizer import EdgeTokenizer
    from ray_app.llm.generate import render_prompt
    from ray_app.llm.prompting import Passage

    index = EdgeIndex(bundle / "index.sqlite")
    tokenizer = EdgeTokenizer(bundle / "llm")
    rows = index.conn().execute("SELECT c.id, c.doc_id, d.title, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id"
                                " ORDER BY c.rowid").fetchall()
    starts = sorted({int(i) for i in np.linspace(0, max(len(rows) - 2, 0), n)}) if len(rows) >= 2 else []
    prompts = []
    for i in starts:
        pair = rows[i:i + 2]
        passages = [Passage(j + 1, r[2], r[3], r[1], r[0]) for j, r in enumerate(pair)]
        prompts.append(render_prompt(tokenizer, f"What is {pair[0][2]}?", passages, None, 256))
    return prompts


def compare_indexes(bundle: Path, k: int = 10, queries: int = 200) -> dict:
    """Each candidate on the bundle's chunk vectors: build time, size, query p50, recall@10 against exact."""
    from edge.encoders import EdgeTextEmbedder
    from edge.index import EdgeIndex, top_k

    index = EdgeIndex(bundle / "index.sqlite")
    vectors = np.ascontiguousarray(index.chunk_vectors)
    titles = index.titles(queries)
    qs = EdgeTextEmbedder(bundle / "embedder", threads=2).embed([f"What is {t}?" for t in titles])
    exact = [set(top_k(vectors @ q, k).tolist()) for q in qs]
    results = {"vectors": len(vectors), "queries": len(qs), "k": k, "candidates": {}}
    for name, build in CANDIDATES.items():
        try:
            results["candidates"][name] = measure_candidate(build, vectors, qs, exact, k)
        except ImportError as exc:
            results["candidates"][name] = {"error": f"not installed: {exc}"}
    return results


def measure_candidate(build, vectors: np.ndarray, queries: np.ndarray, exact: list[set], k: int) -> dict:
    start = time.perf_counter()
    search, size = build(vectors)
    build_s = time.perf_counter() - start
    times, hits = [], 0
    for q, truth in zip(queries, exact, strict=True):
        t = time.perf_counter()
        found = search(q, k)
        times.append((time.perf_counter() - t) * 1000)
        hits += len(truth & set(int(i) for i in found))
    return {"build_s": round(build_s, 3), "bytes": size, "query_p50_ms": round(float(np.median(times)), 3),
            "query_p95_ms": round(float(np.percentile(times, 95)), 3),
            "recall_at_10": round(hits / sum(len(t) for t in exact), 4)}


def _numpy(vectors):
    from edge.index import top_k

    return (lambda q, k: top_k(vectors @ q, k)), vectors.nbytes


def _faiss_flat(vectors):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return (lambda q, k: index.search(q[None, :], k)[1][0]), len(faiss.serialize_index(index))


def _faiss_hnsw(vectors):
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.add(vectors)
    index.hnsw.efSearch = 64
    return (lambda q, k: index.search(q[None, :], k)[1][0]), len(faiss.serialize_index(index))


def _usearch(vectors, dtype="f32"):
    from usearch.index import Index

    index = Index(ndim=vectors.shape[1], metric="cos", dtype=dtype)
    index.add(np.arange(len(vectors)), vectors)
    return (lambda q, k: index.search(q, k).keys), len(index.save())


def _usearch_i8(vectors):
    return _usearch(vectors, "i8")


def _sqlite_vec(vectors):
    import apsw
    import sqlite_vec

    conn = apsw.Connection(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(sqlite_vec.loadable_path())
    conn.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{vectors.shape[1]}] distance_metric=cosine)")
    with conn:
        conn.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)", ((i, v.tobytes()) for i, v in enumerate(vectors)))

    def search(q, k):
        rows = conn.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance", (q.tobytes(), k))
        return [r[0] for r in rows]

    return search, vectors.nbytes


CANDIDATES = {"numpy-exact": _numpy, "faiss-flat": _faiss_flat, "faiss-hnsw": _faiss_hnsw, "usearch-f32": _usearch,
              "usearch-i8": _usearch_i8, "sqlite-vec": _sqlite_vec}


# ------------------------------------------------------------------ the report
def reading_notes(r: dict) -> list[str]:
    """What the numbers say against the issue's targets (p95 < 2 s on 2 cores, RSS < 1 GB, bundle < 300 MB,
    decode >= 0.5 of the bandwidth bound), computed from the result."""
    notes = []
    for variant, v in r["variants"].items():
        two, one = v["cores"].get("2"), v["cores"].get("1")
        met = [f"total p95 {'<' if v['total_p95_ms'] < 2000 else '>='} 2 s", f"RSS {'<' if v['peak_rss_mb'] < 1024 else '>='} 1 GB",
               f"bundle {'<' if v['bundle_mb'] < 300 else '>='} 300 MB"]
        line = f"- **{variant}**: " + ", ".join(met)
        if two:
            line += f"; decode at {two['decode_share_of_bound']} of the bandwidth bound on 2 cores"
        if two and one and one["decode_tokens_per_s"]:
            scale = two["decode_tokens_per_s"] / one["decode_tokens_per_s"]
            line += (f", ×{scale:.2f} from 1 to 2 cores while copy bandwidth went ×{two['bandwidth_gb_s'] / one['bandwidth_gb_s']:.2f}"
                     + (": bandwidth is not what bounds it (compute and the per-token overhead of small GEMVs do;"
                        " no operator profile was taken)" if two["decode_share_of_bound"] < 0.5 else ""))
        notes.append(line + ".")
    return notes


def _first(r: dict, key: str):
    cores = r["variants"][r["default_variant"]]["cores"]
    return next(iter(cores.values())).get(key)


def render_markdown(r: dict) -> str:
    lines = [
        "# Edge bundle benchmark", "",
        f"`{r.get('command', 'prism bench edge')}` on {r['machine']['cpu']} ({r['machine']['logical_cpus']} logical CPUs); "
        f"load average before {r['load_average']['before']}, after {r['load_average']['after']}. "
        f"{r['n_asks']} image+question asks per row (≤ {r['max_new_tokens']} new tokens, prompt budget 256), "
        "each row a fresh process pinned to its cores.", "",
        f"Default ({r['default_variant']}, {r['cores']} cores): total p95 **{r['total_p95_ms']} ms**, "
        f"TTFT p95 {r['ttft_p95_ms']} ms, decode {r['decode_tokens_per_s']} tok/s vs a bandwidth bound of "
        f"{r['bandwidth_bound_tokens_per_s']} tok/s, peak RSS {r['peak_rss_mb']} MB, bundle {r['bundle_mb']} MB.", "",
        f"The asks' prompts averaged {_first(r, 'prompt_tokens_mean')} tokens and their answers "
        f"{_first(r, 'answer_tokens_mean')} (the default variant): a corpus's passages and the model's answer length "
        "set both. The full-budget columns are the LLM alone at the worst case whatever the corpus: a prompt of the "
        "full budget, then the answer limit (prefill + (limit − 1) × the decode step measured after it).", "",
        "| variant | cores | cold start s | TTFT p50 / p95 ms | total p50 / p95 ms | decode tok/s | bound tok/s | "
        "share | copy GB/s | peak RSS MB | bundle MB | full-budget prefill / LLM ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in r["variants"].items():
        for cores, c in v["cores"].items():
            lines.append(f"| {variant} | {cores} | {c['cold_start_s']} | {c['ttft_p50_ms']} / {c['ttft_p95_ms']} | "
                         f"{c['total_p50_ms']} / {c['total_p95_ms']} | {c['decode_tokens_per_s']} | "
                         f"{c['bandwidth_bound_tokens_per_s']} | {c['decode_share_of_bound']} | {c['bandwidth_gb_s']} | "
                         f"{c['peak_rss_mb']} | {v['bundle_mb']} | {c.get('full_budget_prefill_ms')} / "
                         f"{c.get('full_budget_llm_ms')} |")
    if r.get("parity"):
        lines += ["", "## Agreement with torch fp32", "", "| variant | top-1 agreement (teacher-forced) | tokens | greedy equal |",
                  "|---|---|---|---|"]
        for variant, p in r["parity"].items():
            if variant != "int4_recipes":
                lines.append(f"| {variant} | {p['top1']['agreement']} | {p['top1']['tokens']} | {p.get('greedy_equal', '')} |")
    if r.get("parity", {}).get("int4_recipes"):
        lines += ["", "## int4 recipes (`prism export edge --int4-recipe`), the LLM alone on the same prompts", "",
                  "| recipe | top-1 agreement | tokens | LLM files MB | decode tok/s (2 threads, unpinned) | builder options |",
                  "|---|---|---|---|---|---|"]
        for name, p in r["parity"]["int4_recipes"].items():
            opts = " ".join(f"{k}={v}" for k, v in p["options"].items()) or "(builder defaults)"
            lines.append(f"| {name} | {p['top1']['agreement']} | {p['top1']['tokens']} | {p['llm_mb']} | "
                         f"{p['decode_tokens_per_s']} | `{opts}` |")
    ix = r["index"]
    lines += ["", f"## Retrieval index candidates ({ix['vectors']} vectors, {ix['queries']} queries, recall@{ix['k']} vs exact)",
              "", "| candidate | recall@10 | query p50 ms | query p95 ms | build s | bytes |", "|---|---|---|---|---|---|"]
    for name, c in ix["candidates"].items():
        if "error" in c:
            lines.append(f"| {name} | {c['error']} | | | | |")
        else:
            lines.append(f"| {name} | {c['recall_at_10']} | {c['query_p50_ms']} | {c['query_p95_ms']} | {c['build_s']} | {c['bytes']} |")
    lines += ["", "## Reading it", ""] + reading_notes(r) + [
        "", "Deployment steps are in docs/deploy-edge.md; the JSON beside this file has every number.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
