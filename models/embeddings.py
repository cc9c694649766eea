"""Text embeddings for similarity search, behind one small interface.

The default :class:`HashingEmbedder` needs no model download: it hashes lowercase word
tokens (of the text without the characters that draw nothing: :func:`drawn`), the character
3- to 5-grams of each word and each symbol character (emoji and other signs, Unicode
category So) into ``EMBEDDING_DIM`` signed buckets and L2-normalises the result, so texts sharing words or word fragments point the same way.
It uses BLAKE2b, never Python's salted ``hash()``, so every process computes the same
vector for the same text, which is what lets vectors stored by one worker be compared with
queries embedded by another. A text with no tokens (empty, or only punctuation) gets the
fixed unit vector ``e0`` (1.0 in bucket 0) rather than a zero vector, because pgvector's
cosine distance to a zero vector is NaN. :class:`SentenceTransformerEmbedder` is the
optional learned alternative; it needs the ``sentence-transformers`` package.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Any, Protocol

from models.canonical import INVISIBLE, normalize_text
from models.errors import EmbedderUnavailable

EMBEDDING_DIM = 384
WORD_WEIGHT = 1.0
NGRAM_WEIGHT = 0.5
NGRAM_SIZES = (3, 4, 5)
_WORD = re.compile(r"\w+")


class Embedder(Protocol):
    dim: int

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One unit-length vector of ``dim`` floats per text, in order."""
        ...


class HashingEmbedder:
    """Signed feature hashing of words and character n-grams; deterministic, dependency-free."""

    def __init__(self, dim: int = EMBEDDING_DIM) -> None:
        if dim < 1:
            raise ValueError("dim must be positive")
        self.dim = dim

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self.embed_one(text) for text in texts]

    def embed_one(self, text: str) -> list[float]:
        vector = [0.0] * self.dim
        for feature, weight in weighted_features(text):
            bucket, sign = self._bucket_and_sign(feature)
            vector[bucket] += sign * weight
        return _unit_or_e0(vector)

    def _bucket_and_sign(self, feature: str) -> tuple[int, float]:
        digest = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")
        # The top bit picks the sign, so colliding features tend to cancel rather than pile up.
        return digest % self.dim, (1.0 if digest >> 63 else -1.0)


def weighted_features(text: str) -> list[tuple[str, float]]:
    """The hashed features of ``text``: its words, and the n-grams of each space-padded word.

    Words and n-grams get distinct prefixes so the word "api" and the trigram "api" of
    "rapid" stay separate features.
    """
    normalized = normalize_text(drawn(text)).lower()
    features: list[tuple[str, float]] = []
    for word in _WORD.findall(normalized):
        features.append(("w:" + word, WORD_WEIGHT))
        padded = f" {word} "
        for size in NGRAM_SIZES:
            features.extend(("g:" + padded[i : i + size], NGRAM_WEIGHT) for i in range(len(padded) - size + 1))
    # A symbol (an emoji, a sign: Unicode category So) is no word character, yet it carries
    # meaning: each is a feature of its own, or texts told apart only by symbols ("\U0001f510"
    # and "\U0001f4c8" skills) embedded alike. A text without one embeds as it always did.
    features.extend(("s:" + char, WORD_WEIGHT) for char in normalized if unicodedata.category(char) == "So")
    return features


def drawn(text: str) -> str:
    """``text`` without the characters that draw nothing inside it: format and control
    characters other than whitespace (U+200B, the joiners, the soft hyphen, the marks of
    direction) and :data:`models.canonical.INVISIBLE` (the Hangul fillers, the variation
    selectors...), as :func:`models.constitution.visible` counts them. Each split a word in
    two: a certified skill's description with U+200B inside every word read the same, but
    embedded at cosine 0.46 with it, and the duplicate gate certified the copy. A text
    without one embeds as before."""
    if text.isascii() and text.isprintable():  # most texts: nothing to take out, and no character to look up
        return text
    return "".join(c for c in text if not _draws_nothing(c))


def _draws_nothing(c: str) -> bool:
    return c in INVISIBLE or unicodedata.category(c) in ("Cf", "Cc") and not c.isspace()


class SentenceTransformerEmbedder:
    """A sentence-transformers model; the package is imported here, the model loaded on first use."""

    def __init__(self, model_name: str = "all-MiniLM-L6-v2", dim: int = EMBEDDING_DIM) -> None:
        try:
            import sentence_transformers
        except ImportError as exc:
            raise EmbedderUnavailable(
                "the 'sentence-transformers' embedder needs the sentence-transformers package; "
                "install it or use the 'hashing' embedder",
                embedder="sentence-transformers",
            ) from exc
        self._library = sentence_transformers
        self.model_name = model_name
        self.dim = dim
        self._model: Any = None

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = self._loaded_model().encode(list(texts), normalize_embeddings=True)
        return [[float(x) for x in vector] for vector in vectors]

    def _loaded_model(self) -> Any:
        if self._model is None:
            model = self._library.SentenceTransformer(self.model_name)
            # Stored vectors have a fixed width; a model of another width cannot share the column.
            if model.get_sentence_embedding_dimension() != self.dim:
                raise EmbedderUnavailable(f"model {self.model_name!r} does not produce {self.dim}-d vectors")
            self._model = model
        return self._model


def make_embedder(name: str = "hashing") -> Embedder:
    """The embedder called ``name``: "hashing" (default) or "sentence-transformers"."""
    if name == "hashing":
        return HashingEmbedder()
    if name == "sentence-transformers":
        return SentenceTransformerEmbedder()
    raise EmbedderUnavailable(f"unknown embedder {name!r}; use 'hashing' or 'sentence-transformers'")


def cosine(a: list[float], b: list[float]) -> float:
    """Cosine similarity of two equal-length vectors; 0.0 if either is all zeros."""
    if len(a) != len(b):
        raise ValueError(f"vectors differ in length: {len(a)} != {len(b)}")
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


def _unit_or_e0(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:
        return [1.0] + [0.0] * (len(vector) - 1)
    return [x / norm for x in vector]
