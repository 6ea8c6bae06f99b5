"""`prism bench edge` at a tiny size (slow suite): one variant, one core budget, two asks, one parity prompt."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_bench_edge_writes_the_report_keys(bundle, tmp_path):
    from edge.bench import KEYS, main

    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "bundle-int4").symlink_to(bundle)
    result = main(["--variants", "int4", "--cores", "1", "--n", "2", "--max-new-tokens", "8", "--parity-prompts", "1",
                   "--bundles", str(bundles), "--out", str(tmp_path / "reports")])
    report = json.loads((tmp_path / "reports" / "edge.json").read_text())
    assert set(KEYS) <= set(report) and set(KEYS) <= set(report["variants"]["int4"])
    assert report["bandwidth_bound_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert report["parity"]["int4"]["top1"]["tokens"] > 0
    assert report["index"]["candidates"]["numpy-exact"]["recall_at_10"] == 1.0
    assert (tmp_path / "reports" / "edge.md").read_text().startswith("# Edge bundle benchmark")
