"""The exposure-aware re-ranking as a search option on a real store (off by default)."""

import pytest

from ray_app.ask.retrieval import search_corpus
from ray_app.ask.service import AskInputError, AskOptions
from ray_app.errors import InputError
from ray_app.settings import get_settings
from ray_app.store import ChunkRow, DocumentRow, content_hash

PAINTERS = [
    ("Anton Vell", "Dutch painter (1601–1660)", "Anton Vell was a Dutch painter, a famous painter of portraits. He painted"
     " many famous paintings and his painting school was famous."),
    ("Bram Host", "Dutch painter (1610–1670)", "Bram Host was a Dutch painter, a famous painter of landscapes. He painted"
     " famous paintings; his paintings hang in famous museums."),
    ("Carel Maes", "Flemish painter (1620–1680)", "Carel Maes was a Flemish painter, a famous painter of still lifes. He "
     "painted famous paintings for his patrons."),
    ("Dirk Pot", "Dutch painter (1630–1690)", "Dirk Pot was a Dutch painter, a famous painter. He painted famous "
     "interiors and his pupils painted too."),
    ("Eva Lind", "Swedish painter (1650–1720)", "Eva Lind was a Swedish painter of flowers. She painted for the court; "
     "her work is admired."),
    ("Fia Berg", "Swedish painter (1660–1730)", "Fia Berg was a Swedish painter of portraits. She taught painting; her "
     "pupils admired her."),
]


@pytest.fixture()
def painters_store(store, text_embedder):
    docs, chunks = [], []
    for title, description, text in PAINTERS:
        body = f"{title}: {text}"
        docs.append(DocumentRow(title, "wiki", title, content_hash(body), 1, category="People",
                                metadata={"description": description}))
        chunks.append(ChunkRow(title, 0, body, text_embedder.embed([body])[0]))
    store.write(docs, chunks)
    return store


def test_fair_exposure_moves_a_woman_into_the_top_results(painters_store, text_embedder):
    plain = search_corpus("a famous painter", k=3, store=painters_store, embedder=text_embedder)
    fair = search_corpus("a famous painter", k=3, store=painters_store, embedder=text_embedder,
                         fair_exposure="gender")
    women = {"Eva Lind", "Fia Berg"}
    assert not women & {h.doc_id for h in plain}  # the plain ranking shows only men
    assert women & {h.doc_id for h in fair}
    assert fair[0].doc_id == plain[0].doc_id  # the best result keeps its place
    assert len(fair) == 3


def test_unknown_fair_exposure_attribute_is_an_input_error(painters_store, text_embedder):
    with pytest.raises(InputError, match="gender, region, era"):
        search_corpus("a painter", k=3, store=painters_store, embedder=text_embedder, fair_exposure="height")
    with pytest.raises(AskInputError, match="fair_exposure"):
        AskOptions(fair_exposure="height").check(get_settings())


def test_ask_retrieval_with_fair_exposure_keeps_the_best_passage_and_adds_a_woman(painters_store, text_embedder):
    from ray_app.ask.retrieval import retrieve_passages

    plain = retrieve_passages("a famous painter", None, 3, painters_store, text_embedder, 0.0)
    fair = retrieve_passages("a famous painter", None, 3, painters_store, text_embedder, 0.0, "gender")
    assert [p.n for p in fair.passages] == [1, 2, 3]
    assert fair.passages[0].doc_id == plain.passages[0].doc_id
    women = {"Eva Lind", "Fia Berg"}
    assert not women & {p.doc_id for p in plain.passages}
    assert women & {p.doc_id for p in fair.passages}
