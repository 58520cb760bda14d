"""Grouped, class-stratified, seeded train/val/test splits, one per cross-validation fold.

Whole groups (source image, or the annotation's `group` column: patient, well) go to one
split, so no image's cells are in two splits. scikit-learn's StratifiedGroupKFold does the
stratification in two rounds: first the test part, then val from the rest.

  split.folds = 1   one split: test is one fold of k = round(1/test), val one fold of the
                    rest with k = round((1 - test) / val) (split.fractions)
  split.folds = k   k-fold cross-validation: the items are cut into k stratified group folds
                    and fold f tests on fold f; its train/val split of the other k - 1 folds
                    keeps the val : train ratio of split.fractions. Every item is tested in
                    exactly one fold.
Realised fractions are close to, not exactly, the configured ones; the log prints them.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..formats.items import read_items, write_items
from ..runtime import BioaugError

log = logging.getLogger("bioaug.split")
SPLITS = ("train", "val", "test")


def run(index_csv, cfg: dict, fold: int, items_csv) -> None:
    """The split stage: index.csv plus the `split` column of fold `fold`, to its items.csv."""
    items = read_items(index_csv)
    if cfg["folds"] == 1:
        items = assign_splits(items, cfg["fractions"], cfg["seed"], cfg["use_source_split"])
    else:
        items = assign_fold(items, cfg["folds"], fold, cfg["fractions"], cfg["seed"])
    write_items(items, items_csv)


def test_folds(items: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) whose test part holds each item: k stratified group folds."""
    groups = items["group"].astype(str).to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < k:
        raise BioaugError(f"split.folds: {k} folds need at least {k} groups (source images), there are {n_groups}")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(items), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class ...": checked below
        for f, (_, test_idx) in enumerate(cv.split(np.zeros(len(items)), items["label"].to_numpy(), groups)):
            fold[test_idx] = f
    return fold


def assign_fold(items: pd.DataFrame, k: int, fold: int, fractions: dict, seed: int) -> pd.DataFrame:
    """Items with the `split` of fold `fold` of k: test = that fold, val and train from the rest
    (val : train as in `fractions`); every class must reach every split."""
    if not 0 <= fold < k:
        raise BioaugError(f"fold {fold} does not exist with split.folds = {k}")
    out = items.copy()
    folds = test_folds(out, k, seed)
    split = np.where(folds == fold, "test", "train").astype(object)
    rest = np.flatnonzero(split == "train")
    val_share = fractions["val"] / (fractions["train"] + fractions["val"])
    labels, groups = out["label"].to_numpy(), out["group"].astype(str).to_numpy()
    split[rest[_one_fold(labels[rest], groups[rest], val_share, seed + 1 + fold)]] = "val"
    out["split"], out["fold"] = split, folds
    _check_every_class_everywhere(out, where=f"fold {fold} of {k}: ")
    realised = out["split"].value_counts(normalize=True).reindex(SPLITS).round(3).to_dict()
    log.info("fold %d of %d: %d items (%d groups), fractions %s", fold, k, len(out), len(np.unique(groups)), realised)
    return out


def assign_splits(items: pd.DataFrame, fractions: dict, seed: int, use_source_split: bool = False) -> pd.DataFrame:
    """Return a copy of `items` with a `split` column; every class must reach every split.

    With `use_source_split`, the split stored in the data (NPZ / MedMNIST) is kept as it is.
    """
    out = items.copy()
    if use_source_split:
        if "source_split" not in out.columns or out["source_split"].isna().any():
            raise BioaugError("split.use_source_split: this dataset stores no split (only NPZ data does)")
        out["split"] = out["source_split"]
        _check_every_class_everywhere(out)
        return out
    groups = out["group"].astype(str).to_numpy()
    labels = out["label"].to_numpy()
    n_groups = len(np.unique(groups))
    if n_groups < 3:
        raise BioaugError(f"only {n_groups} group(s) (source images): need at least 3 for train/val/test")

    split = np.full(len(out), "train", dtype=object)
    test_idx = _one_fold(labels, groups, fractions["test"], seed)
    split[test_idx] = "test"
    rest = np.flatnonzero(split == "train")
    val_share = fractions["val"] / (1.0 - fractions["test"])
    val_idx = rest[_one_fold(labels[rest], groups[rest], val_share, seed + 1)]
    split[val_idx] = "val"
    out["split"] = split

    _check_every_class_everywhere(out)
    realised = out["split"].value_counts(normalize=True).reindex(SPLITS).round(3).to_dict()
    log.info("split %d items (%d groups): fractions %s", len(out), n_groups, realised)
    return out


def _one_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of one stratified group fold holding about `fraction` of the items."""
    n_groups = len(np.unique(groups))
    k = int(min(max(2, round(1.0 / fraction)), n_groups))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits": we check the outcome below.
        warnings.simplefilter("ignore", UserWarning)
        _, fold = next(cv.split(np.zeros(len(labels)), labels, groups))
    return fold


def _check_every_class_everywhere(items: pd.DataFrame, where: str = "") -> None:
    counts = items.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=SPLITS, fill_value=0)
    for label, row in counts.iterrows():
        for split in SPLITS:
            if row[split] == 0:
                n_groups = items.loc[items["label"] == label, "group"].nunique()
                raise BioaugError(
                    f"{where}class {label!r} has no items in the {split} split ({int(row.sum())} items in "
                    f"{n_groups} groups in total); add data for it or change split.fractions / split.seed"
                )
