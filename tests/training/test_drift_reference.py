"""The drift reference's fixed sample of training pairs."""

from __future__ import annotations

import numpy as np

from training.drift_reference import REFERENCE_SAMPLE, reference_rows


def test_a_small_training_set_is_used_whole():
    train = np.arange(10, 1000, 3)
    np.testing.assert_array_equal(reference_rows(train), train)


def test_a_large_training_set_gives_the_same_sorted_sample_every_time():
    train = np.arange(5, 5 + 4 * REFERENCE_SAMPLE, 2)  # 2x the sample, not starting at 0
    first, second = reference_rows(train), reference_rows(train.copy())
    assert len(first) == REFERENCE_SAMPLE
    np.testing.assert_array_equal(first, second)  # every process, every run: the same pairs
    assert np.all(np.diff(first) > 0)  # sorted, no pair twice
    assert np.isin(first, train).all()
    # spread over the whole set, not its head: both halves are about equally represented
    in_first_half = (first < train[len(train) // 2]).mean()
    assert 0.45 < in_first_half < 0.55
