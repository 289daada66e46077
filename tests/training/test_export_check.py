"""The export stage's check: its fixed sample and its verdict."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from training.export_check import CHECK_PAIRS, ExportMismatch, check_rows, compare_ratings


def _prep(n_test: int, n_ood: int) -> SimpleNamespace:
    rows = {
        "train": np.arange(100, dtype=np.int32),
        "test": np.arange(100, 100 + n_test, dtype=np.int32),
        "ood": np.arange(100 + n_test, 100 + n_test + n_ood, dtype=np.int32),
    }
    return SimpleNamespace(rows=rows)


def test_the_sample_is_fixed_and_split_between_id_test_and_ood():
    prep = _prep(5000, 3000)
    a, b = check_rows(prep), check_rows(prep)
    assert [len(a["test"]), len(a["ood"])] == [CHECK_PAIRS // 2, CHECK_PAIRS // 2]
    for part in ("test", "ood"):
        np.testing.assert_array_equal(a[part], b[part])  # the same pairs run after run
        assert np.isin(a[part], prep.rows[part]).all() and len(np.unique(a[part])) == len(a[part])


def test_a_small_part_gives_all_its_pairs_and_the_other_fills_up():
    sample = check_rows(_prep(5000, 100))
    assert len(sample["ood"]) == 100 and len(sample["test"]) == CHECK_PAIRS - 100
    sample = check_rows(_prep(30, 0))  # a random split has no OOD set
    assert list(sample) == ["test"] and len(sample["test"]) == 30


def test_a_rating_off_by_more_than_the_tolerance_fails_and_names_the_pair():
    want = np.linspace(1, 5, 50)
    ok = compare_ratings(want + 1e-3, want, by_part={"test": 50}, texts=7, name=str)
    assert ok.max_abs_diff == pytest.approx(1e-3) and ok.pairs == 50
    assert "fixed sample of 50 pairs (50 test; 7 texts" in ok.describe()
    bad = want.copy()
    bad[17] += 0.3  # one pair of fifty: a wrong table row, say
    with pytest.raises(ExportMismatch, match=r"pair 17 .*\(1 of 50 sampled pairs differ"):
        compare_ratings(bad, want, by_part={"test": 50}, texts=7, name=lambda k: f"pair {k}")
