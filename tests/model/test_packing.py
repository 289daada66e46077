"""Sequence packing: every text placed once in rows that hold it whole, and packed encodes
equal to length-bucketed ones for both encoder families."""

from pathlib import Path

import numpy as np
import pytest

from model import backbone as backbone_module
from model.batching import Packing, encode_texts
from model.packing import attention_allowed, pack_sequences
from model.tokenizer import buckets_up_to

ASSETS = Path(__file__).parents[1] / "assets"


def _lists(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 100, n).tolist() for n in lengths]


@pytest.mark.parametrize("row_length,max_segments", [(16, 4), (64, 16), (8, 8)])
def test_every_text_is_placed_once_whole_with_its_own_positions(row_length, max_segments):
    rng = np.random.default_rng(row_length)
    ids = _lists(rng.integers(0, row_length + 1, 300).tolist())
    rows = pack_sequences(ids, row_length, max_segments, pad_id=0)
    assert rows.input_ids.shape == rows.segment_ids.shape == rows.positions.shape
    assert rows.input_ids.shape[1] == row_length and rows.slots.shape == (300, 2)
    assert rows.segment_ids.max() <= max_segments
    seen = set()
    for t, (r, k) in enumerate(rows.slots.tolist()):
        where = np.flatnonzero(rows.segment_ids[r] == k + 1)
        assert rows.input_ids[r, where].tolist() == ids[t]
        assert rows.positions[r, where].tolist() == list(range(len(ids[t])))
        if len(where):  # a text's tokens are contiguous
            assert where.tolist() == list(range(where[0], where[0] + len(ids[t])))
        seen.add((r, k))
    assert len(seen) == 300  # no two texts share a slot
    total = sum(len(x) for x in ids)
    assert np.count_nonzero(rows.segment_ids) == total
    # best-fit decreasing wastes less than a row's worth per row on average
    assert rows.fill > 0.85
    assert (rows.input_ids[rows.segment_ids == 0] == 0).all()


def test_packing_refuses_what_cannot_fit_and_takes_nothing():
    with pytest.raises(ValueError, match="17 tokens does not fit a row of 16"):
        pack_sequences(_lists([3, 17]), 16, 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        pack_sequences(_lists([3]), 16, 0)
    empty = pack_sequences([], 16, 4)
    assert empty.input_ids.shape == (0, 16) and empty.slots.shape == (0, 2)


def test_attention_stays_within_a_text_and_padding_within_padding():
    seg = np.array([[1, 1, 2, 2, 2, 0]])
    allowed = attention_allowed(seg)[0, 0]
    assert allowed.shape == (6, 6)
    assert allowed[0, 1] and not allowed[0, 2] and allowed[2, 4] and not allowed[4, 5]
    assert allowed[5, 5] and not allowed[5, 0]  # no query row is masked whole


def _bucketed(backbone, texts, batch_size):
    return encode_texts(
        texts,
        backbone.tokenizer,
        lambda ids, mask: backbone._jitted(backbone.params, ids, mask),
        length_buckets=buckets_up_to(backbone.max_length, backbone.encode_buckets),
        row_buckets=(batch_size,),
        out_shape=(backbone.n_layers, backbone.hidden_size),
    )


def _texts(rng, n, words, longest):
    return [" ".join(rng.choice(words, rng.integers(0, longest))) for _ in range(n)]


def test_packed_encode_equals_bucketed_bert(tiny_backbone, monkeypatch):
    monkeypatch.setattr(backbone_module, "PACKED_ROW_LENGTH", 24)
    monkeypatch.setattr(backbone_module, "PACKED_SEGMENTS", 6)
    rng = np.random.default_rng(0)
    words = ["user", "id", "age", "movie", "title", "great", "plain", "1995", "(", ")", "7"]
    # some longer than a row (the buckets take them), many of a few tokens (rows fill up)
    texts = _texts(rng, 60, words, 40) + _texts(rng, 40, words, 3)
    lengths = [len(x) for x in tiny_backbone.tokenizer.encode(texts)]
    assert min(lengths) <= 3 and max(lengths) > 24
    short = [x for x in tiny_backbone.tokenizer.encode(texts) if len(x) <= 24]
    rows = pack_sequences(short, 24, 6)
    assert rows.segment_ids.max() == 6  # some row is full of texts
    assert len(rows.input_ids) % 8 and len(rows.input_ids) > 8  # calls of 8 rows, the last padded
    packed = tiny_backbone.encode(texts, batch_size=12)
    np.testing.assert_allclose(packed, _bucketed(tiny_backbone, texts, 12), atol=1e-5)
    # the packed texts took one shape, [12 * 16 // 24 = 8 rows, 24 tokens]
    assert tiny_backbone._packed_jitted._cache_size() == 1
    assert not np.isnan(packed).any()


def test_texts_that_pack_worse_than_buckets_take_the_buckets(tiny_backbone, monkeypatch):
    """Texts just over half a row would each take a row of their own: the buckets pad less."""
    monkeypatch.setattr(backbone_module, "PACKED_ROW_LENGTH", 24)
    texts = ["user id 1 age 2 occupation doctor zip code 3 movie title great"] * 12
    assert {len(x) for x in tiny_backbone.tokenizer.encode(texts)} == {15}  # bucket 16
    out = tiny_backbone.encode(texts, batch_size=4)
    assert tiny_backbone._packed_jitted._cache_size() == 0
    np.testing.assert_allclose(out, _bucketed(tiny_backbone, texts, 4), atol=1e-6)


def test_a_packed_encoder_pooling_too_few_texts_per_row_is_refused(tiny_backbone):
    def two_per_row(ids, segments, positions):
        return np.zeros((len(ids), 2, 2, 32), np.float32)

    packing = Packing(two_per_row, row_length=64, rows_per_call=2, max_segments=4)
    with pytest.raises(ValueError, match="pools 2 texts per row, but rows hold up to 4"):
        encode_texts(
            ["movie"] * 8,
            tiny_backbone.tokenizer,
            lambda ids, mask: None,
            length_buckets=(64,),  # buckets would pad more: the texts are packed
            row_buckets=(4,),
            out_shape=(2, 32),
            packing=packing,
        )


def test_packed_encode_equals_bucketed_t5(monkeypatch):
    from model.backbone import load_backbone

    monkeypatch.setattr(backbone_module, "PACKED_ROW_LENGTH", 32)
    monkeypatch.setattr(backbone_module, "PACKED_SEGMENTS", 8)
    t5 = load_backbone("t5", checkpoint=ASSETS / "t5_v1_1_tiny")
    rng = np.random.default_rng(1)
    words = ["a", "movie", "about", "the", "sea", "title", "user", "zip", "code", "42", "x"]
    texts = _texts(rng, 40, words, 30)
    packed = t5.encode(texts, batch_size=4)
    np.testing.assert_allclose(packed, _bucketed(t5, texts, 4), atol=1e-5)
    assert not np.isnan(packed).any()
