"""The hashing embedder: deterministic, unit length, similar texts close; the optional model."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from models.embeddings import (
    EMBEDDING_DIM,
    EmbedderUnavailable,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    cosine,
    make_embedder,
)

REPO = Path(__file__).resolve().parent.parent


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_vectors_have_the_column_dimension_and_unit_norm() -> None:
    vectors = HashingEmbedder().embed(["python backend development", "Kubernetes operator in Go", "a"])
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == EMBEDDING_DIM
        assert norm(vector) == pytest.approx(1.0)


def test_deterministic_across_processes() -> None:
    """PYTHONHASHSEED differs per process; the vectors must not."""
    text = "Senior data engineer: Spark, Airflow, dbt"
    code = f"import json, models.embeddings as m; print(json.dumps(m.HashingEmbedder().embed([{text!r}])[0]))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == HashingEmbedder().embed([text])[0]


def test_similar_texts_score_higher_than_unrelated_ones() -> None:
    embedder = HashingEmbedder()
    base, similar, unrelated = embedder.embed(
        ["python backend development", "python backend engineering", "watercolor painting"]
    )
    assert cosine(base, similar) > 0.5
    assert cosine(base, similar) > cosine(base, unrelated) + 0.3


def test_word_fragments_count() -> None:
    """Character n-grams let inflections match even with no word in common."""
    embedder = HashingEmbedder()
    query, inflected, unrelated = embedder.embed(["deploying", "deployment", "gardening"])
    assert cosine(query, inflected) > cosine(query, unrelated)


def test_case_and_unicode_form_do_not_matter() -> None:
    embedder = HashingEmbedder()
    assert embedder.embed(["Café Python"]) == embedder.embed(["cafe\u0301 python"])


@pytest.mark.parametrize("text", ["", "   ", "?!…"])
def test_text_without_tokens_gets_the_fixed_unit_vector(text: str) -> None:
    vector = HashingEmbedder().embed([text])[0]
    assert len(vector) == EMBEDDING_DIM
    assert vector[0] == 1.0
    assert norm(vector) == 1.0


def test_custom_dimension() -> None:
    assert len(HashingEmbedder(dim=16).embed(["hello"])[0]) == 16
    with pytest.raises(ValueError):
        HashingEmbedder(dim=0)


def test_cosine() -> None:
    assert cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine([1.0, 0.0], [-1.0, 0.0]) == pytest.approx(-1.0)
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        cosine([1.0], [1.0, 0.0])


def test_make_embedder() -> None:
    embedder = make_embedder()
    assert isinstance(embedder, HashingEmbedder)
    assert embedder.dim == EMBEDDING_DIM
    assert isinstance(make_embedder("hashing"), HashingEmbedder)
    with pytest.raises(EmbedderUnavailable, match="unknown embedder"):
        make_embedder("word2vec")


def test_sentence_transformers_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # makes the import fail
    with pytest.raises(EmbedderUnavailable, match="sentence-transformers package") as caught:
        SentenceTransformerEmbedder()
    assert caught.value.code == "embedder-unavailable"
    with pytest.raises(EmbedderUnavailable):
        make_embedder("sentence-transformers")


def test_symbols_tell_texts_apart() -> None:
    """Symbols are no word characters: texts told apart only by them (emoji skills) embedded
    alike, at cosine 1.0, and the duplicate gate refused the second (helper-140)."""
    embedder = HashingEmbedder()
    lock, chart = embedder.embed(["\U0001f510 " * 8, "\U0001f4c8 " * 8])
    assert cosine(lock, chart) < 0.5
    assert cosine(*embedder.embed(["\U0001f510 audits", "\U0001f510 audits \U0001f510"])) > 0.9


@pytest.mark.parametrize(("text", "digest"), [
    ("Negotiates supplier contracts, tracks spend (Q3)! C++ & $5 <= 10%", "0d9e1b60e2507e4b"),
    ("Café naïve – 東京 ∑ ±", "39b5dba6f9815282"),
])
def test_a_text_without_symbols_embeds_as_before_symbols_counted(text: str, digest: str) -> None:
    """Counting symbols changed no other text's vector: a stored vector of a text with no
    symbol (category So) still matches, and the audit reports no `embedding-mismatch` for it.
    The digests are of the vectors the embedder computed before symbols counted."""
    import hashlib

    assert hashlib.sha256(repr(HashingEmbedder().embed_one(text)).encode()).hexdigest()[:16] == digest
