import json

import numpy as np
import pytest
import scipy.sparse as sp

from router import Lexical
from router.lexical import keep_columns, seen_columns

TEXTS = ["What does a D-dimer test show?", "HELOC vs home equity loan", "Write a haiku about rain.", "a a a"]


def test_rows_do_not_depend_on_the_batch():
    lexical = Lexical(n_features=2**12)
    batch = lexical.transform(TEXTS)
    assert batch.shape == (4, 2 * 2**12)
    for i, text in enumerate(TEXTS):
        assert (lexical.transform([text]) != batch[i]).nnz == 0


def test_each_block_has_its_weight_as_norm():
    lexical = Lexical(word_weight=2.0, char_weight=0.5, n_features=2**12)
    x = lexical.transform(TEXTS[:3]).toarray()
    words, chars = x[:, :2**12], x[:, 2**12:]
    assert np.allclose(np.linalg.norm(words, axis=1), 2.0)
    assert np.allclose(np.linalg.norm(chars, axis=1), 0.5)


def test_stop_words_are_left_out_of_the_word_block():
    lexical = Lexical(char_weight=0.0, n_features=2**12)
    assert lexical.transform(["what is the"]).nnz == 0
    assert lexical.transform(["D-dimer"]).nnz == 1  # one token, kept whole


def test_zero_weight_drops_a_block():
    x = Lexical(word_weight=0.0, n_features=2**12).transform(TEXTS)
    assert x[:, :2**12].nnz == 0 and x[:, 2**12:].nnz > 0


def test_json_round_trip():
    lexical = Lexical(word_weight=1.25, char_weight=0.5, word_ngrams=(1, 3), char_ngrams=(2, 4), n_features=2**10)
    again = Lexical.from_json(json.loads(json.dumps(lexical.to_json())))
    assert again == lexical
    assert (again.transform(TEXTS) != lexical.transform(TEXTS)).nnz == 0


def test_negative_weight_raises():
    with pytest.raises(ValueError, match="weights must be >= 0"):
        Lexical(word_weight=-1.0)


@pytest.mark.parametrize("pick", ["all", "every third", "none", "seen and unseen"])
def test_keep_columns_matches_plain_column_indexing(pick):
    hashed = Lexical(n_features=2**12).transform(TEXTS)
    seen = seen_columns(hashed)
    unseen = np.setdiff1d(np.arange(hashed.shape[1]), seen)
    columns = {"all": seen, "every third": seen[::3], "none": seen[:0],
               "seen and unseen": np.union1d(seen[::2], unseen[::500])}[pick]
    fast = keep_columns(hashed, columns)
    assert fast.shape == (len(TEXTS), len(columns))
    assert np.array_equal(fast.toarray(), hashed[:, columns].toarray())


def test_seen_columns_are_sorted_and_exactly_the_nonzero_ones():
    hashed = sp.csr_matrix(np.array([[0, 1.0, 0, 2.0], [0, 0, 0, 3.0]]))
    assert seen_columns(hashed).tolist() == [1, 3]
