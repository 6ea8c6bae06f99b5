"""The ``synthetic`` source: any number of documents, deterministic from a seed, for scale runs.

Document ``i`` depends only on ``(seed, i)`` (it is drawn from the random stream of its block of
``BLOCK`` documents), so any ``--docs N`` run gives the same first documents and shards can be
generated in parallel processes. Lengths follow a realistic mix: short notes (1-2 sentences),
paragraphs (3-9) and multi-paragraph articles (10-40 sentences). Optionally a fraction of the
documents get a small generated image (a coloured shape) with a matching caption.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ray_app.corpus.schema import make_record, write_shards
from ray_app.errors import InputError

SOURCE = "synthetic"
LICENSE = "CC0-1.0"
BLOCK = 1000  # documents per random stream; fixed so document i never depends on N or on parallelism

TOPICS: dict[str, list[str]] = {
    "astronomy": "star planet orbit galaxy telescope comet moon nebula gravity eclipse rocket asteroid".split(),
    "biology": "cell gene protein species evolution enzyme organism tissue bacteria virus habitat fossil".split(),
    "chemistry": "molecule atom reaction acid bond catalyst element compound solution crystal metal ion".split(),
    "history": "empire war treaty dynasty revolution king republic colony battle trade century ruins".split(),
    "music": "melody rhythm symphony chord orchestra guitar piano composer opera harmony tempo song".split(),
    "cooking": "flour butter oven recipe spice sauce bread garlic simmer knife pastry vegetable".split(),
    "computing": "algorithm compiler network memory processor database software kernel cache server code".split(),
    "geography": "river mountain valley coast desert island climate glacier plateau delta forest lake".split(),
    "sport": "team match goal league coach player stadium season tournament record race medal".split(),
    "economics": "market price inflation trade bank currency labour tax demand supply debt growth".split(),
    "art": "painting canvas sculpture museum portrait colour brush gallery fresco sketch mural style".split(),
    "medicine": "patient doctor vaccine surgery symptom therapy hospital diagnosis drug nurse heart blood".split(),
}
FILLER = (
    "the a of and in to is was for on with as by that it from at which this are be an or has "
    "its were also had their been many other most first some more one two new used known large"
).split()
VERBS = "describes shows explains studies changes supports measures records follows connects builds".split()
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}


def _sentence(rng: np.random.Generator, topic: list[str]) -> str:
    n = int(rng.integers(6, 22))
    picks, on_topic = rng.integers(0, 10_000, size=n), rng.random(n) < 0.35
    words = [topic[i % len(topic)] if t else FILLER[i % len(FILLER)] for i, t in zip(picks, on_topic, strict=True)]
    words[min(2, n - 1)] = VERBS[int(rng.integers(len(VERBS)))]
    return (" ".join(words)).capitalize() + "."


def _n_sentences(rng: np.random.Generator) -> int:
    kind = rng.random()
    if kind < 0.35:
        return int(rng.integers(1, 3))
    if kind < 0.80:
        return int(rng.integers(3, 10))
    return int(rng.integers(10, 41))


def _document(rng: np.random.Generator, i: int) -> tuple[str, str, str]:
    name = list(TOPICS)[int(rng.integers(len(TOPICS)))]
    topic = TOPICS[name]
    sentences = [_sentence(rng, topic) for _ in range(_n_sentences(rng))]
    paragraphs, start = [], 0
    while start < len(sentences):
        size = int(rng.integers(3, 8))
        paragraphs.append(" ".join(sentences[start : start + size]))
        start += size
    title = f"{name.capitalize()} note {i}: {topic[int(rng.integers(len(topic)))]}"
    return title, "\n\n".join(paragraphs), name


def _draw_image(rng: np.random.Generator, path: Path) -> str:
    from PIL import Image, ImageDraw

    shape, colour = SHAPES[int(rng.integers(3))], list(COLOURS)[int(rng.integers(len(COLOURS)))]
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    box = [int(v) for v in (rng.integers(4, 20), rng.integers(4, 20), rng.integers(44, 60), rng.integers(44, 60))]
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return f"a {colour} {shape} on a white background"


def generate_block(seed: int, block: int, image_fraction: float = 0.0, image_dir: Path | None = None) -> list[dict]:
    """The ``BLOCK`` documents ``block * BLOCK ... (block + 1) * BLOCK - 1`` for ``seed``."""
    rng = np.random.default_rng([seed, block])
    records = []
    for i in range(block * BLOCK, (block + 1) * BLOCK):
        title, text, topic = _document(rng, i)
        image = caption = None
        if image_fraction > 0 and rng.random() < image_fraction:
            if image_dir is None:
                raise ValueError("image_dir is required when image_fraction > 0")
            path = image_dir / f"{seed}-{i:08d}.png"
            caption = _draw_image(rng, path)
            image = str(path.resolve())
        records.append(
            make_record(SOURCE, f"{seed}:{i}", title=title, text=text, license=LICENSE, image=image,
                        caption=caption, metadata={"category": topic, "seed": seed, "index": i})
        )
    return records


def build_records(limit: int | None = None, seed: int = 0, image_fraction: float = 0.0,
                  image_dir: Path | None = None) -> Iterator[dict]:
    """Yield ``limit`` documents (default ``BLOCK``) in order, in this process."""
    n = BLOCK if limit is None else limit
    for block in range((n + BLOCK - 1) // BLOCK):
        yield from generate_block(seed, block, image_fraction, image_dir)[: n - block * BLOCK]


def _write_part(args: tuple) -> tuple[list[str], int]:
    seed, part, first, count, out_dir, image_fraction, image_dir = args
    records: list[dict] = []
    for block in range(first // BLOCK, (first + count + BLOCK - 1) // BLOCK):
        records += generate_block(seed, block, image_fraction, image_dir)
    records = records[: count]  # first is a multiple of BLOCK; only the last part is cut short
    paths = write_shards(records, out_dir, f"{SOURCE}-{part:05d}", shard_rows=len(records) or 1)
    return [str(p) for p in paths], len(records)


def write_synthetic(n: int, out_dir: Path, seed: int = 0, workers: int | None = None, image_fraction: float = 0.0,
                    part_docs: int = 50_000) -> tuple[list[Path], int]:
    """Generate ``n`` documents as Parquet shards of ``part_docs`` rows, one process per shard.

    Returns:
        The shard paths and the number of documents written.
    """
    if n < 1:
        raise InputError(f"--docs must be at least 1, got {n}")
    part_docs = max(BLOCK, part_docs // BLOCK * BLOCK)
    image_dir = (out_dir / "images") if image_fraction > 0 else None
    jobs = [(seed, p, first, min(part_docs, n - first), out_dir, image_fraction, image_dir)
            for p, first in enumerate(range(0, n, part_docs))]
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    paths: list[Path] = []
    total = 0
    if workers == 1:
        results = map(_write_part, jobs)
    else:
        pool = ProcessPoolExecutor(workers)
        results = pool.map(_write_part, jobs)
    for part_paths, count in results:
        paths += [Path(p) for p in part_paths]
        total += count
    if workers > 1:
        pool.shutdown()
    return paths, total
