"""The stamps and photos corpus adapters, and the image-encoder data shared by training and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ray_app.corpus import photos, stamps
from ray_app.corpus.schema import COLUMNS
from ray_app.vision.data import (
    CATEGORIES,
    TEXTURE_PHOTOS,
    TRAIN_BACKGROUND_PHOTOS,
    augment_batch,
    composite_on_white,
    eval_batch,
    fit_square_rgba,
    is_heldout,
    label_vectors,
    load_background_photos,
    split_stamps,
    subsample,
)


def test_list_stamps_reads_captions_and_categories():
    found = stamps.list_stamps()
    assert len(found) > 900
    assert {s.category for s in found} == set(CATEGORIES)  # 16 captioned categories
    assert all(s.caption and "\n" not in s.caption for s in found)
    assert len({s.name for s in found}) == len(found)
    assert not any(s.path.stem.endswith("_mirror") for s in found)
    quarter = next(s for s in found if s.name == "symbols/money/us/coins/025quarter")
    assert quarter.caption == "A US 25 cent piece ($.25) called a quarter."
    assert quarter.path.suffix == ".png"


def test_missing_stamps_folder_is_a_clear_error(tmp_path):
    with pytest.raises(stamps.StampsNotAvailable, match="tuxpaint-stamps-default"):
        stamps.list_stamps(tmp_path / "nowhere")


def test_svg_only_stamp_is_rasterised_into_out_dir(tmp_path):
    import shutil

    svg = next(s for s in stamps.list_stamps() if s.is_svg and s.name != "food/loaf_of_bread")
    png = next(s for s in stamps.list_stamps() if not s.is_svg)
    root = tmp_path / "stamps"
    for stamp in (svg, png):  # a two-stamp copy of the tree keeps the test quick
        dest = root / stamp.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stamp.path, dest.with_suffix(stamp.path.suffix))
        shutil.copy(stamp.path.with_suffix(".txt"), dest.with_suffix(".txt"))
    (root / "broken").mkdir()
    (root / "broken" / "bad.svg").write_text("<svg")
    (root / "broken" / "bad.txt").write_text("A broken stamp.\n")
    image = stamps.load_stamp_image(svg, max_side=64)
    assert image.mode == "RGBA" and max(image.size) <= 64
    records = list(stamps.build_records(out_dir=tmp_path / "out", root=root))
    by_key = {json.loads(r["metadata"])["stamp"]: r for r in records}
    assert set(by_key) == {svg.name, png.name}  # the broken SVG is skipped, not fatal
    raster = Path(by_key[svg.name]["image"])
    assert raster.is_relative_to(tmp_path / "out") and Image.open(raster).size[0] > 0
    assert by_key[png.name]["image"] == str(root / png.name) + ".png"


def test_stamp_records_follow_the_schema(tmp_path):
    records = list(stamps.build_records(limit=5, out_dir=tmp_path))
    assert len(records) == 5
    for record in records:
        assert set(COLUMNS) <= set(record)
        assert record["source"] == "stamps" and record["caption"] == record["text"]
        assert Path(record["image"]).exists()
        assert json.loads(record["metadata"])["category"] in CATEGORIES
    assert [r["id"] for r in records] == [r["id"] for r in stamps.build_records(limit=5, out_dir=tmp_path)]


def test_photo_records_are_exported_once_as_png(tmp_path):
    records = list(photos.build_records(out_dir=tmp_path))
    assert len(records) >= 20
    names = {Path(r["image"]).name for r in records}
    assert {"astronaut.png", "cat.png", "rocket.png", "coffee.png"} <= names
    first = Path(records[0]["image"])
    mtime = first.stat().st_mtime_ns
    assert Image.open(first).mode == "RGB"
    list(photos.build_records(out_dir=tmp_path))
    assert first.stat().st_mtime_ns == mtime  # not rewritten
    assert len(list(photos.build_records(limit=3, out_dir=tmp_path))) == 3


def test_split_is_by_stamp_deterministic_and_disjoint():
    train, heldout = split_stamps()
    assert not {s.name for s in train} & {s.name for s in heldout}
    assert 0.10 < len(heldout) / (len(train) + len(heldout)) < 0.20
    assert all(is_heldout(s.name) for s in heldout)
    again = split_stamps()
    assert [s.name for s in again[1]] == [s.name for s in heldout]
    assert len(subsample(train, 40)) == 40 and len({s.category for s in subsample(train, 40)}) > 8


def test_label_vectors_one_unit_vector_per_category(text_embedder):
    vecs = label_vectors(text_embedder.embed)
    assert vecs.shape == (16, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    assert (vecs @ vecs.T - np.eye(16)).max() < 0.95  # the 16 labels stay distinguishable


def _rgba_square(size=32):
    """A red disc on a transparent background."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    out = np.zeros((size, size, 4), np.uint8)
    out[disc] = (255, 0, 0, 255)
    return out


def test_augmentation_is_seeded_and_varies_backgrounds():
    batch = torch.from_numpy(np.stack([_rgba_square()] * 8))
    a = augment_batch(batch, 32, torch.Generator().manual_seed(1))
    b = augment_batch(batch, 32, torch.Generator().manual_seed(1))
    c = augment_batch(batch, 32, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    corners = a[:, :, 0, 0]
    assert len({tuple(v.round(decimals=3).tolist()) for v in corners}) > 1  # different backgrounds


def test_photo_backgrounds_are_windows_of_the_given_photos_not_the_eval_textures():
    assert not set(TEXTURE_PHOTOS) & set(TRAIN_BACKGROUND_PHOTOS)  # held-out "background" views stay unseen
    real = load_background_photos(48)
    assert real.shape == (len(TRAIN_BACKGROUND_PHOTOS), 48, 48, 3) and real.dtype == np.uint8
    # Vertical stripes 8 px wide: only a photo window has sharp steps between neighbouring pixels; the
    # other kinds (plain, white, gradient, smooth noise) change by at most a few percent per pixel.
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, :, (np.arange(64) // 8) % 2 == 1] = 255
    empty = torch.zeros(32, 32, 32, 4, dtype=torch.uint8)  # fully transparent: the output is the background
    gen = torch.Generator().manual_seed(0)
    plain = augment_batch(empty, 32, torch.Generator().manual_seed(0), jitter=0)
    with_photos = augment_batch(empty, 32, gen, jitter=0, photos=torch.from_numpy(stripes))
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)

    def sharpest_step(x):
        return ((x[..., 1:] - x[..., :-1]) * std).abs().amax(dim=(1, 2, 3))

    assert (sharpest_step(plain) < 0.2).all()
    assert (sharpest_step(with_photos) > 0.5).sum() >= 2


def test_eval_view_matches_pil_composite():
    rgba = _rgba_square()
    pil = composite_on_white(rgba)
    assert pil.mode == "RGB" and pil.getpixel((0, 0)) == (255, 255, 255)
    x = eval_batch(np.stack([rgba]), 32)
    assert x.shape == (1, 3, 32, 32)
    fit = fit_square_rgba(Image.fromarray(rgba[:, :20], "RGBA"), 16)
    assert fit.shape == (16, 16, 4) and fit[0, 0, 3] == 0
