"""The openclipart and emoji corpus sources (Debian openclipart-png, fonts-noto-color-emoji), on a handful of files,
and the image-encoder data they feed: extra training images and the transformed evaluation views."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ray_app.corpus import emoji, openclipart
from ray_app.corpus.build import build_corpus
from ray_app.corpus.schema import COLUMNS
from ray_app.vision.data import VIEW_KINDS, fit_square_rgba, is_heldout, split_extra_images, transformed_view

needs_clipart = pytest.mark.skipif(not openclipart.OPENCLIPART_ROOT.is_dir(), reason="openclipart-png not installed (make setup)")
needs_emoji = pytest.mark.skipif(not emoji.FONT_PATH.is_file(), reason="fonts-noto-color-emoji not installed (make setup)")


def test_clip_art_names_are_cleaned_into_captions():
    assert openclipart.clean_name("milk_carton_jarno_vasama_") == "milk carton"
    assert openclipart.clean_name("orso_architetto_francesc_02") == "orso"
    assert openclipart.clean_name("smiley102") == "smiley"
    assert openclipart.clean_name("m16_01") == "m16"
    assert openclipart.clean_name("dog_head_nicu_buculei_01") == "dog head"
    assert openclipart.clean_name("bottled_drink_bw") == "bottled drink"
    assert openclipart.category_of("animals/mammals/dogs") == "animals"
    assert openclipart.category_of("people/clothing/hats") == "clothes"  # the longest listed prefix wins
    assert openclipart.category_of("computer/icons") is None


def _copy_tree(files: list[str], root) -> None:
    for rel in files:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(openclipart.OPENCLIPART_ROOT / rel, dest)


@needs_clipart
def test_openclipart_records_from_a_small_tree(tmp_path):
    root = tmp_path / "png"
    _copy_tree(["animals/bugs/ant.png", "food/beverages/milk_carton_jarno_vasama_.png",
                "science/medicine/siringa_architetto_franc_01.png"], root)
    (root / "special" / "patterns").mkdir(parents=True)
    Image.new("RGBA", (8, 8)).save(root / "special" / "patterns" / "dots.png")  # patterns are left out
    Image.new("RGBA", (8, 8)).save(root / "animals" / "_01.png")  # a name that cleans to nothing
    arts = openclipart.list_cliparts(root)
    assert [(a.title, a.category, a.folder) for a in arts] == [
        ("ant", "animals", "animals/bugs"), ("milk carton", "food", "food/beverages"),
        ("siringa", "medical", "science/medicine")]
    assert arts[1].caption == "milk carton (food, beverages)"
    records = list(openclipart.build_records(root=root))
    assert all(set(r) == set(COLUMNS) for r in records)
    first = records[0]
    assert (first["source"], first["title"], first["caption"]) == ("openclipart", "Ant", "ant (animals, bugs)")
    assert first["image"] == str(root / "animals/bugs/ant.png") and "Public domain" in first["license"]
    assert json.loads(first["metadata"])["category"] == "animals"
    assert len(list(openclipart.build_records(limit=2, root=root))) == 2


def test_missing_packages_are_clear_errors(tmp_path):
    with pytest.raises(openclipart.OpenClipartNotAvailable, match="openclipart-png"):
        openclipart.list_cliparts(tmp_path / "nowhere")
    with pytest.raises(emoji.EmojiFontNotAvailable, match="fonts-noto-color-emoji"):
        emoji.list_emoji(tmp_path / "none.ttf")


@needs_clipart
def test_the_installed_package_has_thousands_of_captioned_pictures():
    arts = openclipart.list_cliparts()
    assert len(arts) > 7000 and len({a.name for a in arts}) == len(arts)
    assert sum(a.category == "animals" for a in arts) > 200
    assert not any(a.folder.startswith("special") for a in arts)


@needs_emoji
def test_emoji_come_from_the_font_cmap_with_unicode_names(tmp_path):
    points = emoji.read_cmap_codepoints(emoji.FONT_PATH)
    assert 0x1F438 in points and 0x1F680 in points  # frog face, rocket
    found = {e.codepoint: e for e in emoji.list_emoji()}
    assert len(found) > 1000
    assert (found[0x1F438].name, found[0x1F438].category) == ("frog face", "animals")
    assert found[0x1F680].category == "vehicles"
    assert not any(cp in found for cp in (0x1F1E6, 0x1F3FB, ord("#")))  # flag letters, skin tones, text
    records = list(emoji.build_records(limit=4, out_dir=tmp_path / "emoji"))
    assert len(records) == 4 and all(set(r) == set(COLUMNS) for r in records)
    for record in records:
        image = Image.open(record["image"])
        assert image.mode == "RGBA" and min(image.size) > 20 and image.getbbox() is not None
        assert record["caption"] == record["title"].lower() and "OFL-1.1" in record["license"]
    assert (tmp_path / "emoji" / f"{json.loads(records[0]['metadata'])['codepoint']}.png").exists()


@needs_emoji
def test_prism_corpus_build_emoji_writes_shards(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_HOME", str(tmp_path / "home"))
    from tests.conftest import reset_settings

    reset_settings()
    try:
        summary = build_corpus("emoji", tmp_path / "out", docs=6)
    finally:
        reset_settings()
    assert summary["documents"] == 6 and summary["source"] == "emoji"
    table = pq.read_table(tmp_path / "out" / "emoji-00000.parquet")
    assert table.num_rows == 6 and set(table.column("source").to_pylist()) == {"emoji"}


def test_extra_images_split_like_stamps():
    from ray_app.corpus.stamps import Stamp

    items = [Stamp(openclipart.OPENCLIPART_ROOT / f"x{i}.png", f"thing {i}", "", f"openclipart/x{i}") for i in range(200)]
    train, held = split_extra_images(items)
    assert len(train) + len(held) == 200 and 10 < len(held) < 60
    assert all(is_heldout(s.name) for s in held) and not any(is_heldout(s.name) for s in train)


def test_transformed_views_are_deterministic_and_differ_from_the_original():
    art = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    art.paste((200, 30, 30, 255), (0, 0, 20, 30))  # a red left half: mirroring moves it
    rgba = fit_square_rgba(art, 64)
    views = {k: transformed_view(rgba, k, np.random.default_rng([0, 1])) for k in VIEW_KINDS}
    again = {k: transformed_view(rgba, k, np.random.default_rng([0, 1])) for k in VIEW_KINDS}
    for kind, view in views.items():
        assert view.mode == "RGB" and view.size == (64, 64)
        assert np.array_equal(np.asarray(view), np.asarray(again[kind])), kind
    mirror = np.asarray(views["mirror"]).astype(int)
    assert mirror[32, 10:20, 0].mean() > 240 and mirror[32, 45:55, 1].mean() < 100  # red moved to the right
    background = np.asarray(views["background"])
    assert (background[0, 0] != 255).any()  # not on white
    with pytest.raises(ValueError, match="unknown view kind"):
        transformed_view(rgba, "sepia", np.random.default_rng(0))
