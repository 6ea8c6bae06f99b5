"""Corpus sources on small data: wiki, synthetic, user JSONL/Parquet/image folders, and `prism corpus build`."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from ray_app.cli import app
from ray_app.corpus import synthetic, wiki
from ray_app.corpus.build import build_corpus
from ray_app.corpus.schema import COLUMNS, write_shards
from ray_app.corpus.user import read_user_data


def read_rows(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_wiki_has_every_vital_article_with_description_and_category():
    articles = wiki.load_wiki_records()
    assert len(articles) == 10_033
    assert {"title", "text", "description", "category", "url"} <= set(articles[0])
    kubrick = next(a for a in articles if a["title"] == "2001: A Space Odyssey")
    assert kubrick["description"] == "1968 film by Stanley Kubrick" and kubrick["category"] == "Arts"
    assert kubrick["url"].startswith("https://en.wikipedia.org/wiki/2001")
    records = list(wiki.build_records(limit=50))
    assert len(records) == 50 and len({r["id"] for r in records}) == 50
    assert [r["id"] for r in wiki.build_records(limit=50)] == [r["id"] for r in records]
    meta = json.loads(records[0]["metadata"])
    assert set(meta) == {"description", "category"} and records[0]["license"] == "CC BY-SA 4.0"


def test_synthetic_is_deterministic_with_a_length_mix_and_optional_images(tmp_path):
    first = list(synthetic.build_records(1500, seed=7))
    assert [r["text"] for r in synthetic.build_records(1100, seed=7)] == [r["text"] for r in first[:1100]]
    assert [r["text"] for r in synthetic.build_records(10, seed=8)] != [r["text"] for r in first[:10]]
    n_sentences = [r["text"].count(".") for r in first]
    assert min(n_sentences) <= 2 and max(n_sentences) >= 20, "short notes and multi-paragraph articles"
    assert any("\n\n" in r["text"] for r in first)
    with_images = list(synthetic.build_records(200, seed=7, image_fraction=0.2, image_dir=tmp_path / "img"))
    imaged = [r for r in with_images if r["image"]]
    assert 10 < len(imaged) < 80
    with Image.open(imaged[0]["image"]) as im:
        assert im.size == (64, 64)
    colour = imaged[0]["caption"].split()[1]
    assert colour in synthetic.COLOURS


def test_synthetic_shards_written_in_parallel_match_the_sequential_stream(tmp_path):
    paths, count = synthetic.write_synthetic(2500, tmp_path, seed=3, workers=2, part_docs=1000)
    assert count == 2500 and len(paths) == 3
    assert [r["id"] for r in read_rows(tmp_path)] == [r["id"] for r in synthetic.build_records(2500, seed=3)]


def write_user_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    good_png = folder / "ok.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(good_png)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    rows = [
        {"id": "a", "title": "Alpha", "text": "Alpha is first.", "topic": "letters"},
        {"title": "Beta", "text": "Beta is second.", "metadata": {"k": 1}},
        {"title": "Gamma", "text": "", "image": "ok.png", "caption": "a red square"},
        {"title": "Empty", "text": "   "},
        {"title": "Numbers", "text": 12345},
        {"title": "Huge", "text": "x" * 5_000_000},
        {"title": "Broken", "text": "has a broken image", "image": "broken.png"},
        ["not", "an", "object"],
    ]
    path = folder / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n\n")
    return path


def test_jsonl_rows_bad_rows_are_counted_and_extra_fields_go_to_metadata(tmp_path):
    skipped: Counter = Counter()
    records = list(read_user_data(write_user_files(tmp_path), skipped))
    assert [r["title"] for r in records] == ["Alpha", "Beta", "Gamma"]
    assert dict(skipped) == {"no_text": 1, "wrong_type": 2, "too_long": 1, "bad_image": 1, "bad_json": 1}
    assert json.loads(records[0]["metadata"]) == {"topic": "letters"}
    assert json.loads(records[1]["metadata"]) == {"k": 1}
    assert records[2]["image"] == str((tmp_path / "ok.png").resolve())
    assert all(set(r) == set(COLUMNS) for r in records)


def test_parquet_input_is_read_like_jsonl(tmp_path):
    source = list(wiki.build_records(limit=5))
    source[1]["text"] = None
    write_shards(source, tmp_path / "in", "mine")
    skipped: Counter = Counter()
    records = list(read_user_data(tmp_path / "in" / "mine-00000.parquet", skipped))
    assert len(records) == 4 and dict(skipped) == {"no_text": 1}


def test_image_folder_with_caption_sidecars(tmp_path):
    animals = tmp_path / "animals"
    animals.mkdir()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(animals / "whale.png")
    (animals / "whale.txt").write_text("A blue whale\nThe largest animal.\n")
    Image.new("RGB", (16, 16)).save(animals / "cat.jpg")
    (animals / "cat.json").write_text(json.dumps({"caption": "A black cat", "title": "Cat"}))
    Image.new("RGB", (16, 16)).save(animals / "nocaption.png")
    (animals / "bad.png").write_bytes(b"garbage")
    (animals / "bad.txt").write_text("bad image")
    skipped: Counter = Counter()
    records = {r["caption"]: r for r in read_user_data(tmp_path, skipped)}
    assert set(records) == {"A blue whale", "A black cat"}
    assert records["A blue whale"]["text"] == "The largest animal."
    assert json.loads(records["A black cat"]["metadata"])["category"] == "animals"
    assert records["A black cat"]["title"] == "Cat"
    assert dict(skipped) == {"no_caption": 1, "bad_image": 1}


def test_user_image_paths_stay_inside_the_corpus_folder_and_formats_are_allow_listed(tmp_path):
    """Absolute paths, '..' and links out of the folder are skipped as unsafe_path; SVG, TIFF and a TIFF named
    .png as bad_image_format; nothing outside the folder is read."""
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(outside / "secret.png")
    corpus = tmp_path / "corpus"
    (corpus / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(corpus / "img" / "ok.png")
    Image.new("RGB", (8, 8)).save(corpus / "img" / "scan.tif")
    Image.new("RGB", (8, 8)).save(corpus / "img" / "tiff-named.png", format="TIFF")
    (corpus / "img" / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>')
    (corpus / "img" / "link.png").symlink_to(outside / "secret.png")
    (corpus / "img" / "linked-folder").symlink_to(outside)
    images = {"ok": "img/ok.png", "abs": str(outside / "secret.png"), "dotdot": "../outside/secret.png",
              "inner-dotdot": "img/../img/ok.png", "backslash": "..\\outside\\secret.png",
              "link": "img/link.png", "linked-folder": "img/linked-folder/secret.png", "etc": "/etc/passwd",
              "svg": "img/drawing.svg", "tif": "img/scan.tif", "tiff-named": "img/tiff-named.png"}
    rows = [{"title": name, "text": f"{name} text", "image": image} for name, image in images.items()]
    (corpus / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    skipped: Counter = Counter()
    records = list(read_user_data(corpus, skipped))
    assert [r["title"] for r in records] == ["ok"]
    assert records[0]["image"] == str((corpus / "img" / "ok.png").resolve())
    assert dict(skipped) == {"unsafe_path": 7, "bad_image_format": 3}


def test_an_image_folder_never_follows_links_out_of_it(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    (outside / "secret.txt").write_text("a secret")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "mine.png")
    (folder / "mine.txt").write_text("my image")
    (folder / "elsewhere").symlink_to(outside)  # a linked folder is not walked
    (folder / "link.png").symlink_to(outside / "secret.png")  # a linked file is found, then refused
    (folder / "link.txt").write_text("a link out")
    skipped: Counter = Counter()
    records = list(read_user_data(folder, skipped))
    assert [r["caption"] for r in records] == ["my image"] and dict(skipped) == {"unsafe_path": 1}


def test_prism_corpus_build_writes_shards_and_replaces_stale_ones(tmp_path):
    runner = CliRunner()
    out = tmp_path / "syn"
    result = runner.invoke(app, ["corpus", "build", "synthetic", "--docs", "1200", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["documents"] == 1200 and summary["skipped"] == {}
    assert len(read_rows(out)) == 1200
    smaller = build_corpus("synthetic", out, docs=500, workers=1)
    assert smaller["documents"] == 500 and len(read_rows(out)) == 500, "no stale shards left behind"
    user = runner.invoke(app, ["corpus", "build", str(write_user_files(tmp_path / "u")), "--out",
                               str(tmp_path / "user"), "--json"])
    assert user.exit_code == 0, user.output
    assert json.loads(user.stdout)["skipped"]["too_long"] == 1
    again = runner.invoke(app, ["corpus", "build", "wiki", "--docs", "30", "--out", str(tmp_path / "w"), "--json"])
    assert json.loads(again.stdout)["documents"] == 30
    assert pq.read_schema(next((tmp_path / "w").glob("*.parquet"))).names == COLUMNS


def test_prism_corpus_build_rejects_bad_input_with_one_line():
    runner = CliRunner()
    missing = runner.invoke(app, ["corpus", "build", "/no/such/file.jsonl", "--json"])
    assert missing.exit_code == 2 and missing.stderr.startswith("error:") and missing.stdout == ""
    zero = runner.invoke(app, ["corpus", "build", "synthetic", "--docs", "0"])
    assert zero.exit_code == 2


@pytest.mark.parametrize("source", ["stamps", "photos"])
def test_other_engineers_sources_dispatch_when_present(source, tmp_path):
    if importlib.util.find_spec(f"ray_app.corpus.{source}") is None:
        pytest.skip(f"ray_app.corpus.{source} not written yet")
    summary = build_corpus(source, tmp_path, docs=3)
    assert summary["documents"] == 3 and len(read_rows(tmp_path)) == 3
