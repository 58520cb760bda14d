"""Grouped, stratified, seeded splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bioaug.runtime import BioaugError
from bioaug.stages.split import assign_splits
from helpers import check_group_integrity

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def make_items(n_groups=60, per_group=8, seed=0, rare_groups=10):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        for k in range(per_group):
            label = "rare" if g < rare_groups and k == 0 else rng.choice(["a", "b"], p=[0.8, 0.2])
            rows.append({"item_id": f"{g}-{k}", "group": f"img{g:03d}", "label": label})
    return pd.DataFrame(rows)


def test_groups_never_cross_splits_and_every_class_is_everywhere():
    out = assign_splits(make_items(), FRACTIONS, seed=0)
    check_group_integrity(out)
    assert (out.groupby("group")["split"].nunique() == 1).all()
    counts = out.groupby(["label", "split"]).size().unstack()
    assert (counts > 0).all().all()
    realised = out["split"].value_counts(normalize=True)
    for split, frac in FRACTIONS.items():
        assert abs(realised[split] - frac) < 0.08, realised


def test_split_is_stratified():
    out = assign_splits(make_items(n_groups=100, rare_groups=20), FRACTIONS, seed=1)
    share = out.groupby("split")["label"].value_counts(normalize=True).unstack()
    # the rare class has a similar share in each split
    assert share["rare"].max() - share["rare"].min() < 0.03


def test_split_is_deterministic_and_seeded():
    items = make_items()
    a = assign_splits(items, FRACTIONS, seed=0)
    b = assign_splits(items, FRACTIONS, seed=0)
    c = assign_splits(items, FRACTIONS, seed=5)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_class_missing_from_a_split_is_an_error_naming_class_and_split():
    items = make_items(rare_groups=1)  # the rare class lives in one image only
    with pytest.raises(BioaugError, match=r"class 'rare' has no items in the (train|val|test) split"):
        assign_splits(items, FRACTIONS, seed=0)


def test_too_few_groups():
    items = make_items(n_groups=2)
    with pytest.raises(BioaugError, match="need at least 3"):
        assign_splits(items, FRACTIONS, seed=0)


def test_check_group_integrity_detects_crossing():
    bad = pd.DataFrame({"group": ["g1", "g1"], "split": ["train", "test"]})
    with pytest.raises(BioaugError, match="g1"):
        check_group_integrity(bad)


def rare_counts(out: pd.DataFrame) -> dict[str, int]:
    return out[out["label"] == "rare"]["split"].value_counts().reindex(["train", "val", "test"], fill_value=0).to_dict()


def test_stratification_beats_a_random_group_split():
    """10 of 100 images hold one rare cell each. A stratified split puts exactly 6 / 2 / 2 of
    them in train / val / test for every seed; a random split of the images misses that for
    most seeds (about 9 in 10), so this test fails for a split that only keeps groups together."""
    items = make_items(n_groups=100, rare_groups=10)
    want = {"train": 6, "val": 2, "test": 2}
    for seed in range(10):
        got = rare_counts(assign_splits(items, FRACTIONS, seed=seed))
        assert got == want, (seed, got)
    # the same check on random group splits fails for most seeds
    groups = items["group"].unique()
    misses = 0
    for seed in range(10):
        order = np.random.default_rng(seed).permutation(groups)
        split_of = {g: "test" if i < 20 else "val" if i < 40 else "train" for i, g in enumerate(order)}
        got = rare_counts(items.assign(split=items["group"].map(split_of)))
        misses += got != want
    assert misses >= 7


@pytest.mark.parametrize("k", [2, 3, 5])
def test_k_folds_test_every_item_once_and_keep_groups_whole(k):
    from bioaug.stages.split import assign_fold

    items = make_items(n_groups=60, rare_groups=15)
    folds = [assign_fold(items, k, f, FRACTIONS, seed=0) for f in range(k)]
    tested = pd.concat([f.loc[f["split"] == "test", "item_id"] for f in folds])
    assert sorted(tested) == sorted(items["item_id"]) and tested.is_unique  # each item tested in one fold
    for f, out in enumerate(folds):
        check_group_integrity(out)
        assert (out.groupby("group")["split"].nunique() == 1).all()
        assert (out.groupby(["label", "split"]).size().unstack() > 0).all().all()
        is_test = out["split"] == "test"
        assert (out.loc[is_test, "fold"] == f).all() and (out.loc[~is_test, "fold"] != f).all()
        rest = out[out["split"] != "test"]["split"].value_counts(normalize=True)
        assert rest["val"] == pytest.approx(0.25, abs=0.08)  # val : train = 0.2 : 0.6 of the other folds
        rare = out[out["label"] == "rare"]["split"].value_counts()
        assert abs(rare["test"] - 15 / k) <= 1  # stratified: the rare class spread evenly over the folds
    again = assign_fold(items, k, 1, FRACTIONS, seed=0)
    assert again["split"].tolist() == folds[1]["split"].tolist()  # every fold job computes the same folds


def test_k_fold_errors_name_the_key():
    from bioaug.stages.split import assign_fold

    with pytest.raises(BioaugError, match="split.folds: 5 folds need at least 5 groups"):
        assign_fold(make_items(n_groups=4), 5, 0, FRACTIONS, seed=0)
    with pytest.raises(BioaugError, match=r"fold 1 of 3: class 'rare' has no items in the \w+ split"):
        assign_fold(make_items(n_groups=30, rare_groups=2), 3, 1, FRACTIONS, seed=0)
