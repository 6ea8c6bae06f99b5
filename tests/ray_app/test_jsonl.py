"""JSON Lines in one place: round trip, limits, blank lines, and bad lines as input errors or counts."""

import pytest

from ray_app.errors import InputError, NotFound
from ray_app.jsonl import append_jsonl, iter_jsonl, read_jsonl, write_jsonl


def test_round_trip_limit_and_append(tmp_path):
    path = write_jsonl([{"a": 1}, {"b": "é"}], tmp_path / "sub" / "rows.jsonl")
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    assert read_jsonl(path, limit=1) == [{"a": 1}]
    append_jsonl({"c": 3}, path)
    assert read_jsonl(path)[-1] == {"c": 3}
    assert not list(tmp_path.glob("sub/*.tmp"))  # written through a temporary file, renamed


def test_bad_lines_are_input_errors_or_counted(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n{"b": 2}\n')
    with pytest.raises(InputError, match="rows.jsonl:3"):
        read_jsonl(path)
    bad = []
    rows = list(iter_jsonl(path, on_error=lambda line_no, exc: bad.append(line_no)))
    assert rows == [(1, {"a": 1}), (4, {"b": 2})] and bad == [3]
    with pytest.raises(NotFound):
        read_jsonl(tmp_path / "missing.jsonl")
