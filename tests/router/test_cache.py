import numpy as np
import pytest

from router import EmbeddingCache
from tests.router.fakes import HashingEncoder


def test_cache_persists_and_encodes_only_new_texts(tmp_path):
    first = HashingEncoder()
    a = EmbeddingCache(tmp_path, first).embed(["one question", "two question"])
    encoder = HashingEncoder()
    cache = EmbeddingCache(tmp_path, encoder)
    b = cache.embed(["two question", "three question", "one question"])
    assert encoder.encoded == ["three question"] and len(cache) == 3
    assert np.array_equal(b[2], a[0]) and np.array_equal(b[0], a[1])
    assert list(tmp_path.iterdir()) == [cache.path]


def test_cache_keys_include_the_encoder_name(tmp_path):
    EmbeddingCache(tmp_path, HashingEncoder(name="x")).embed(["q one"])
    other = HashingEncoder(name="y")
    EmbeddingCache(tmp_path, other).embed(["q one"])
    assert other.encoded == ["q one"]


def test_cache_of_another_dimension_raises(tmp_path):
    EmbeddingCache(tmp_path, HashingEncoder(dim=16)).embed(["q"])
    with pytest.raises(ValueError, match="holds 16-dim vectors"):
        EmbeddingCache(tmp_path, HashingEncoder(dim=32))
