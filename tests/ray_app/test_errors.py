"""Prism's error types: each deliberate error is a PrismError subclass, and keeps its old base for existing callers."""

from __future__ import annotations

import pytest

from ray_app.corpus.build import build_corpus
from ray_app.corpus.photos import PhotoNotAvailable
from ray_app.corpus.stamps import StampsNotAvailable
from ray_app.corpus.user import BadRow
from ray_app.corpus.wiki import WikiDataNotAvailable
from ray_app.errors import InputError, NotFound, PrismError, Unavailable
from ray_app.jobconfig import JobConfigError, StrictModel, load_config
from ray_app.models.errors import ModelNotAvailable
from ray_app.store import StoreError, StoreInputError
from ray_app.store.embedded import EmbeddedDatabaseError
from ray_app.store.rows import check_vector


@pytest.mark.parametrize(
    ("error", "prism_type", "old_base"),
    [
        (StoreInputError, InputError, ValueError),
        (StoreError, Unavailable, RuntimeError),
        (EmbeddedDatabaseError, Unavailable, RuntimeError),
        (ModelNotAvailable, Unavailable, RuntimeError),
        (JobConfigError, InputError, ValueError),
        (BadRow, InputError, ValueError),
        (WikiDataNotAvailable, Unavailable, FileNotFoundError),
        (StampsNotAvailable, Unavailable, FileNotFoundError),
        (PhotoNotAvailable, Unavailable, FileNotFoundError),
        (NotFound, InputError, FileNotFoundError),
    ],
)
def test_error_types_are_prism_errors_and_keep_their_old_base(error, prism_type, old_base):
    assert issubclass(error, prism_type) and issubclass(error, PrismError)
    assert issubclass(error, old_base), "callers that catch the old base keep working"
    assert isinstance(error.code, str) and error.code


def test_corpus_build_raises_prism_errors_for_user_input(tmp_path):
    with pytest.raises(NotFound, match="no such file or folder"):
        build_corpus(str(tmp_path / "nope"), tmp_path / "out")
    with pytest.raises(InputError, match="--docs must be at least 1"):
        build_corpus("synthetic", tmp_path / "out", docs=0)
    with pytest.raises(InputError, match="--every applies to the wiki source only"):
        build_corpus("synthetic", tmp_path / "out", every=2)
    (tmp_path / "notes.txt").write_text("plain text")
    with pytest.raises(InputError, match="unsupported input"):
        build_corpus(str(tmp_path / "notes.txt"), tmp_path / "out")


def test_job_config_and_store_input_errors_are_input_errors(tmp_path):
    class Config(StrictModel):
        steps: int = 1

    with pytest.raises(InputError, match="config file not found"):
        load_config(Config, tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="steps"):
        load_config(Config, None, ["steps=many"])
    with pytest.raises(InputError, match="expected"):
        check_vector([0.0, 1.0], "chunk c1")
