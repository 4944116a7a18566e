"""Hashed word and character n-grams beside the sentence embedding: the exact jargon a small encoder blurs.

A 384-dim MiniLM vector places a rare term such as "D-dimer" or "amortisation" near whatever it half-recognises;
the literal word and its character pieces ("d-dimer", "mort") are strong evidence of a domain. Hashing needs no
vocabulary, so the features are fixed by a handful of JSON parameters and the gate stores only the weights of the
columns its training questions touched.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.preprocessing import normalize

TOKEN_PATTERN = r"(?u)\b\w[\w'-]*\b"  # keeps one-letter words, "D-dimer" and "don't" whole


@dataclass(frozen=True)
class Lexical:
    """Two blocks of `n_features` hashed columns each: word n-grams, then char n-grams inside word boundaries.

    Word n-grams skip English stop words: "what is a" says how a question is asked, not what it is about, and
    would tie short questions to whichever class asks most often in that form. Counts are damped to
    1 + log(count), each block of a row is L2-normalised and then multiplied by its weight, so a weight says how
    far the block counts next to the unit-length embedding (0 leaves the block out). The word weight of 3.0 was
    chosen on questions about terms the training data had never named (a later data batch routed by a gate fitted
    on the data before it, `bench/unseen_terms.py`): 10 more of 471 right than at 1.5 and none fewer; on the next
    batch of 405 it tied (it fixed 1 question and broke 2).
    """

    word_weight: float = 3.0
    char_weight: float = 1.0
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (3, 4)
    n_features: int = 2**20

    def __post_init__(self) -> None:
        if self.word_weight < 0 or self.char_weight < 0:
            raise ValueError(f"lexical weights must be >= 0, got {self.word_weight} and {self.char_weight}")
        object.__setattr__(self, "word_ngrams", tuple(self.word_ngrams))
        object.__setattr__(self, "char_ngrams", tuple(self.char_ngrams))

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """(N, 2 * n_features) float64 sparse rows; the same text always gives the same row."""
        return sp.hstack([self._block(texts, weight, vectorizer) for weight, vectorizer in self._vectorizers],
                         format="csr")

    @cached_property
    def _vectorizers(self) -> list[tuple[float, HashingVectorizer]]:
        common = {"n_features": self.n_features, "alternate_sign": False, "norm": None}
        return [(self.word_weight, HashingVectorizer(analyzer="word", ngram_range=self.word_ngrams,
                                                     token_pattern=TOKEN_PATTERN, stop_words="english", **common)),
                (self.char_weight, HashingVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, **common))]

    @staticmethod
    def _block(texts: list[str], weight: float, vectorizer: HashingVectorizer) -> sp.csr_matrix:
        if weight == 0:
            return sp.csr_matrix((len(texts), vectorizer.n_features))
        counts = vectorizer.transform(texts).astype(np.float64)
        counts.data = 1.0 + np.log(counts.data)
        block = normalize(counts)
        block.data *= weight
        return block

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, config: dict[str, object]) -> Lexical:
        return cls(**config)


def seen_columns(hashed: sp.csr_matrix) -> np.ndarray:
    """(K,) sorted int64 ids of the columns non-zero in some row: the only ones an L2-regularised fit gives weight."""
    return np.unique(hashed.indices).astype(np.int64)


def keep_columns(hashed: sp.csr_matrix, columns: np.ndarray) -> sp.csr_matrix:
    """hashed[:, columns] for sorted `columns` (K,), by binary search: scipy's column indexing took ~1 ms a call."""
    position = np.searchsorted(columns, hashed.indices)
    inside = position < len(columns)
    found = np.zeros(len(position), dtype=bool)
    found[inside] = columns[position[inside]] == hashed.indices[inside]
    indptr = np.concatenate([[0], np.cumsum(found)])[hashed.indptr]
    return sp.csr_matrix((hashed.data[found], position[found], indptr), shape=(hashed.shape[0], len(columns)))
