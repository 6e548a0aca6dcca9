"""Text similarity for demo selection: a lexical TF-IDF embedder that needs no download, or any ``dspy.Embedder``.

The lexical embedder hashes word unigrams and character trigrams into a fixed number of buckets
and weights them by TF-IDF over the demo pool, in numpy only (no model, no network). Character
trigrams let two made-up or inflected words look alike ("counting" / "counted").

A user embedder (``dspy.Embedder`` or any ``callable(list[str]) -> 2-D array``) is registered by
name with :func:`register_embedder`; compiled programs store only that name, so a program loaded
in another process must register the same embedder again (otherwise the lexical one is used, with
a warning). Embedder calls are not LM calls: they are not counted in the budget.
"""

from __future__ import annotations

import hashlib
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dspy_icl_opt._log import logger

LEXICAL = "lexical"
#: Hash buckets of the lexical embedder: 2**12 keeps collisions rare for pools of a few hundred demos.
HASH_DIM = 4096
#: Character n-grams (inside each word, padded with '#') give partial matches between related words.
CHAR_NGRAM = 3
#: Weight of one character n-gram relative to one whole-word match.
CHAR_WEIGHT = 0.5
#: Pool indexes kept in memory (each is a small matrix); states are revisited during a search.
INDEX_CACHE_SIZE = 64

_TOKEN = re.compile(r"\w+", re.UNICODE)
_REGISTRY: dict[str, Callable[..., Any]] = {}
_WARNED: set[str] = set()
_CACHE: OrderedDict[tuple[str, str], PoolIndex] = OrderedDict()
_LOCK = threading.Lock()


def register_embedder(embedder: Callable[..., Any], name: str | None = None) -> str:
    """Make ``embedder`` usable by name in demo selection; returns the name stored in programs.

    Args:
        embedder: a ``dspy.Embedder`` or any ``callable(list[str]) -> array`` of shape (n, d).
        name: the name to store; defaults to the embedder's ``model`` string, else its qualified name
            (two lambdas would share one: name them).

    Example:
        >>> register_embedder(lambda texts: [[len(t), 1.0] for t in texts], name="length")
        'length'
    """
    if not callable(embedder):
        raise TypeError(f"`embedder` must be callable on a list of texts (e.g. dspy.Embedder(...)), but got "
                        f"{type(embedder).__name__}.")
    if name is None:
        model = getattr(embedder, "model", None)
        name = model if isinstance(model, str) else getattr(embedder, "__qualname__", type(embedder).__name__)
    if not isinstance(name, str) or not name or name == LEXICAL:
        raise ValueError(f"`name` must be a non-empty string other than {LEXICAL!r}, but got {name!r}.")
    with _LOCK:
        if _REGISTRY.get(name) is not embedder:
            _REGISTRY[name] = embedder
            for key in [k for k in _CACHE if k[0] == name]:
                del _CACHE[key]
    return name


def is_registered(name: str) -> bool:
    """Whether ``name`` is the lexical embedder or one given to :func:`register_embedder`."""
    return name == LEXICAL or name in _REGISTRY


def resolve_embedder(name: str) -> Callable[..., Any] | None:
    """The registered embedder called ``name``; ``None`` for the lexical one (or an unknown name, with a warning)."""
    if name == LEXICAL:
        return None
    embedder = _REGISTRY.get(name)
    if embedder is None and name not in _WARNED:
        _WARNED.add(name)
        logger.warning("No embedder registered as {!r}: using the lexical one. Call "
                       "dspy_icl_opt.demos.register_embedder(embedder, name={!r}) before running the program.",
                       name, name)
    return embedder


def demo_text(demo: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The text a demo (or a call's inputs) is compared by: its input fields, one ``name: value`` per line."""
    return "\n".join(f"{f}: {demo[f]}" for f in fields if f in demo and demo[f] is not None)


class PoolIndex:
    """Unit-length vectors of a pool's texts, to compare a query with each demo (cosine similarity)."""

    def __init__(self, texts: Sequence[str], embedder_name: str = LEXICAL) -> None:
        self.texts = list(texts)
        self.embedder_name = embedder_name
        self._embedder = resolve_embedder(embedder_name)
        self._idf = _fit_idf(self.texts) if self._embedder is None else None
        self.matrix = self._encode(self.texts) if self.texts else np.zeros((0, 1))

    def similarities(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query`` with each pool text, in pool order."""
        if not self.texts:
            return np.zeros(0)
        return self.matrix @ self._encode([query])[0]

    def pairwise(self) -> np.ndarray:
        """Cosine similarity between every two pool texts."""
        return self.matrix @ self.matrix.T

    def centroid_similarities(self) -> np.ndarray:
        """Similarity of each text with the pool's mean vector (how representative it is)."""
        if not self.texts:
            return np.zeros(0)
        return self.matrix @ _unit(self.matrix.mean(axis=0, keepdims=True))[0]

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            rows = np.stack([_hashed_counts(t) for t in texts]) * self._idf
        else:
            rows = np.asarray(self._embedder(list(texts)), dtype=float).reshape(len(texts), -1)
        return _unit(rows)


def pool_index(texts: Sequence[str], embedder_name: str = LEXICAL) -> PoolIndex:
    """A (cached) :class:`PoolIndex` of ``texts``."""
    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()
    key = (embedder_name, digest)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    index = PoolIndex(texts, embedder_name)
    with _LOCK:
        _CACHE[key] = index
        while len(_CACHE) > INDEX_CACHE_SIZE:
            _CACHE.popitem(last=False)
    return index


def _bucket(feature: str) -> int:
    return zlib.crc32(feature.encode("utf-8")) % HASH_DIM


def _hashed_counts(text: str) -> np.ndarray:
    counts = np.zeros(HASH_DIM)
    for word in _TOKEN.findall(text.lower()):
        counts[_bucket("w:" + word)] += 1.0
        padded = f"#{word}#"
        for i in range(max(1, len(padded) - CHAR_NGRAM + 1)):
            counts[_bucket("c:" + padded[i:i + CHAR_NGRAM])] += CHAR_WEIGHT
    return counts


def _fit_idf(texts: Sequence[str]) -> np.ndarray:
    """Smoothed inverse document frequency of each bucket over the pool (sklearn's formula)."""
    present = np.zeros(HASH_DIM)
    for text in texts:
        present += _hashed_counts(text) > 0
    return np.log((1.0 + len(texts)) / (1.0 + present)) + 1.0


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def embedder_name(embedder: Any) -> str:
    """The name an embedder is stored under: ``lexical``, a registered name, or the name it is registered as."""
    if embedder is None or embedder == LEXICAL:
        return LEXICAL
    if isinstance(embedder, str):
        if not is_registered(embedder):
            raise ValueError(f"`embedder` {embedder!r} is not registered: call register_embedder(embedder, "
                             f"name={embedder!r}) first, or pass the embedder itself.")
        return embedder
    return register_embedder(embedder)
