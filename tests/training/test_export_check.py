"""The export stage's check (its fixed sample and its verdict) and its scoring of held-out
pairs through the exported artifact (training/exported_scoring.py)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from model.tokenizer import TextTokenizer
from training import export_check, exported_scoring
from training.export_check import CHECK_PAIRS, check_exported, check_rows, compare_ratings
from training.exported_scoring import (
    ExportMismatch,
    decomposed_ratings,
    entity_inputs,
    exported_figures,
    head_ratings,
)


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
    ok = compare_ratings(want + 1e-3, want, name=str)
    assert ok.max_abs == pytest.approx(1e-3) and ok.rms == pytest.approx(1e-3)
    bad = want.copy()
    bad[17] += 0.3  # one pair of fifty: a wrong table row, say
    with pytest.raises(ExportMismatch, match=r"pair 17 .*\(1 of 50 sampled pairs differ"):
        compare_ratings(bad, want, name=lambda k: f"pair {k}")


# -- the check on a real run: what each part catches --------------------------------------


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory):
    """A tiny LEVI run exported: ``(art, prep, rows, live)`` as the export stage checked them."""
    from support.tiny_data import make_tiny_backbone, write_tiny_catalog

    from model.artifact import load_artifact
    from training import exporting
    from training.config import TrainConfig
    from training.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("exported-run")
    cfg = TrainConfig.tiny().replace(
        lrs=(1e-2,), max_epochs=2, methods=("levi",), dataset=str(write_tiny_catalog(tmp / "d"))
    )
    seen = {}

    def spy(art, prep, rows, live, *args):
        seen.update(prep=prep, rows=rows, live=live)
        return check_exported(art, prep, rows, live, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exporting, "check_exported", spy)
        result = run_pipeline(
            cfg,
            output_dir=tmp / "out",
            backbone=make_tiny_backbone(tmp),
            cache=tmp / "cache",
            progress=False,
            log=lambda _: None,
        )
    return load_artifact(result.artifact), seen["prep"], seen["rows"], seen["live"]


def test_the_written_artifact_passes_every_part(exported_run):
    art, prep, rows, live = exported_run
    check = check_exported(art, prep, rows, live)
    n = sum(len(r) for r in rows.values())
    assert check.pairs == n and check.by_part == {p: len(r) for p, r in rows.items()}
    assert check.encoded == check.texts > 0  # a small run: every text of the sample
    assert check.activation_diff < 5e-3  # the run's float16 cache against a float32 encode
    assert check.max_abs_diff < 1e-4 and check.decomposed_diff < 1e-4  # the same activations
    # the run's own tokenizer splits every text as the artifact's
    assert check_exported(art, prep, rows, live, run_tokenizer=art.tokenizer) == check
    assert f"fixed sample of {n:,} pairs" in check.describe()


def test_an_entity_table_that_renders_another_text_is_named(exported_run):
    art, prep, rows, live = exported_run
    item = prep.pair_ids("item", rows["test"][:1])[0]
    items = art.items.to_pandas()
    items.loc[items["item_id"] == item, "title"] = "a different title"
    tampered = dataclasses.replace(art, items=pa.Table.from_pandas(items, preserve_index=False))
    with pytest.raises(ExportMismatch, match=rf"view 'item' of user '\w+', item '{item}' renders"):
        check_exported(tampered, prep, rows, live)


def test_a_backbone_that_truncates_the_longest_texts_is_caught_by_them(exported_run, monkeypatch):
    art, prep, rows, live = exported_run
    every = np.concatenate(list(rows.values()))
    texts = {t for k in every for t in prep.views.render(*_records(prep, k))}
    lengths = {t: len(art.tokenizer.encode([t])[0]) for t in texts}
    longest = max(lengths.values())
    assert min(lengths.values()) < longest  # a fault of the long texts, not of every one
    short = TextTokenizer(art.tokenizer.path, max_length=longest - 1)
    tampered = dataclasses.replace(art, tokenizer=short)
    # Against the run's tokenizer, the token ids show it without an encode ...
    with pytest.raises(ExportMismatch, match=r"tokenizer splits .* otherwise than the run's"):
        check_exported(tampered, prep, rows, live, run_tokenizer=art.tokenizer)
    # ... and without it, the longest texts through the exported backbone alone do.
    monkeypatch.setattr(export_check, "CHECK_TEXTS", 0)
    monkeypatch.setattr(export_check, "LONGEST_TEXTS", 3)
    with pytest.raises(ExportMismatch, match="the exported backbone encodes .* of their size"):
        check_exported(tampered, prep, rows, live)


def test_a_head_or_decomposition_that_rates_otherwise_is_named(exported_run):
    art, prep, rows, live = exported_run
    assert art.decomposed

    def shifted(fn):
        def call(*args):
            adapters, rating = fn(*args)
            return adapters, rating + 0.05  # beyond the tolerance (0.02)

        return call

    tampered = dataclasses.replace(art, _score_fn=shifted(art._score_fn))
    with pytest.raises(ExportMismatch, match=r"rates user '\w+', item '\w+' [0-9.]+ where"):
        check_exported(tampered, prep, rows, live)
    tampered = dataclasses.replace(art, _pair_fn=shifted(art._pair_fn))
    with pytest.raises(ExportMismatch, match="through its first-layer decomposition"):
        check_exported(tampered, prep, rows, live)


def test_the_figures_are_every_held_out_pair_through_the_exported_decomposition(exported_run):
    art, prep, rows, live = exported_run
    figures = exported_figures(art, prep)
    entities = entity_inputs(art, prep)
    for part, key in (("test", "id_test_rmse"), ("ood", "ood_rmse")):
        ratings = head_ratings(art, prep, entities, prep.rows[part])  # the whole head's
        assert len(ratings) == len(prep.rows[part])
        assert figures[key] == pytest.approx(
            float(np.sqrt(np.mean((ratings - prep.tables.rating[prep.rows[part]]) ** 2))),
            abs=1e-5,
        )
    # Without the decomposition (pair views), the whole head scores them and the check says so.
    whole = dataclasses.replace(art, layout=None)
    assert exported_figures(whole, prep) == pytest.approx(figures, abs=1e-5)
    check = check_exported(whole, prep, rows, live)
    assert check.decomposed_diff is None and "decomposition" not in check.describe()


def test_the_decomposition_in_blocks_rates_each_pair_as_the_whole_head(exported_run, monkeypatch):
    """Blocks of entities, chunks of pairs and padded calls, in any row order."""
    art, prep, rows, live = exported_run
    entities = entity_inputs(art, prep)
    held_out = np.concatenate([prep.rows["test"], prep.rows["ood"]])
    held_out = held_out[np.random.default_rng(1).permutation(len(held_out))]
    want = head_ratings(art, prep, entities, held_out)
    monkeypatch.setattr(exported_scoring, "CHUNK", 7)  # several blocks, a padded last call
    got = decomposed_ratings(art, prep, entities, held_out)
    np.testing.assert_allclose(got, want, atol=1e-4)
    monkeypatch.setattr(exported_scoring, "OUTER_BLOCK", 5)  # the other side once per outer block
    got = decomposed_ratings(art, prep, entities, held_out)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.std(want) > 0.05  # the ratings differ from pair to pair
    for side in ("user", "item"):  # one entity of a side: that side is the outer one
        one = (
            getattr(prep.tables, f"pair_{side}")[held_out]
            == (getattr(prep.tables, f"pair_{side}")[held_out[0]])
        )
        np.testing.assert_allclose(
            decomposed_ratings(art, prep, entities, held_out[one]), want[one], atol=1e-4
        )
    assert len(decomposed_ratings(art, prep, entities, held_out[:0])) == 0


def _records(prep, row):
    u, i = prep.tables.pair_user[row], prep.tables.pair_item[row]
    return prep.users.iloc[u].to_dict(), prep.items.iloc[i].to_dict()
