"""The test split never reaches the GAN, the feature classifier, or model selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bioaug.classifier
from bioaug.arms import ARMS
from bioaug.config import defaults
from bioaug.stages.classify import run_arm
from helpers import write_shard

SPLIT_VALUE = {"train": 0.25, "val": 0.5, "test": 0.75}  # exact in float32  # every tile's pixels encode its split


@pytest.fixture
def marked_dataset(tmp_path):
    splits = ["train"] * 12 + ["val"] * 6 + ["test"] * 6
    labels = ["a", "b", "c"] * 8
    items = pd.DataFrame(
        {
            "item_id": [f"it{i:02d}" for i in range(24)],
            "image": "f.tif",
            "group": "f.tif",
            "label": labels,
            "x": 1.0,
            "y": 1.0,
            "split": splits,
        }
    )
    tiles = np.stack([np.full((8, 8, 1), SPLIT_VALUE[s], np.float32) for s in splits])
    shard = tmp_path / "shard-00000.npy"
    write_shard(
        shard, tiles, items.assign(tile_id=items["item_id"])[["tile_id", "item_id", "label", "image"]], pd.DataFrame()
    )
    return items, [shard]


@pytest.mark.parametrize("arm", [a for a in ARMS if ARMS[a]["data"] == "real"])
def test_classifier_trains_on_train_selects_on_val_and_scores_test_once(monkeypatch, marked_dataset, arm):
    items, shards = marked_dataset
    calls = {"fit": [], "predict": []}

    class Spy:
        best_epoch, history = 1, []

        def predict_proba(self, x):
            calls["predict"].append(np.unique(x))
            return np.full((len(x), 3), 1 / 3, np.float32)

    def fake_train(train_x, train_y, val_x, val_y, names, cfg, seed, **options):
        calls["fit"].append((np.unique(train_x), np.unique(val_x), options))
        return Spy()

    monkeypatch.setattr(bioaug.classifier, "train_classifier", fake_train)
    result = run_arm(arm, 0, items, shards, {**defaults()["classifier"], "epochs": 1})
    ((train_vals, val_vals, options),) = calls["fit"]
    assert train_vals.tolist() == [SPLIT_VALUE["train"]] and val_vals.tolist() == [SPLIT_VALUE["val"]]
    # the selected model scores val (its scores pick the report's baseline), then test, once each
    assert [v.tolist() for v in calls["predict"]] == [[SPLIT_VALUE["val"]], [SPLIT_VALUE["test"]]]
    arm_options = {k: v for k, v in ARMS[arm].items() if k != "data"}
    # the arm's options, and the step budget: one pass over the 12 real train tiles (batch 64 > 12: 1 step)
    assert result["n"] == 6 and options == {**arm_options, "total_steps": 1}


@pytest.mark.slow
def test_pipeline_gan_and_feature_classifier_never_see_test(tiny_run):
    res = tiny_run / "results" / "tiny"
    items = pd.read_csv(res / "fold-0" / "items.csv").set_index("item_id")
    gan_tiles = pd.read_csv(res / "fold-0" / "gan" / "training_tiles.csv")
    assert set(items.loc[gan_tiles["item_id"], "split"]) == {"train"}
    assert len(gan_tiles) == (items["split"] == "train").sum()
    seen = pd.read_csv(res / "fold-0" / "feature_classifier" / "tiles.csv")
    assert set(items.loc[seen["item_id"], "split"]) == {"train", "val"}
    # the balanced dataset (what GAN arms train on) holds no val/test tile either
    manifest = pd.read_csv(res / "balanced" / "manifest.csv")
    real = manifest[manifest["origin"] == "real"]
    assert set(items.loc[real["item_id"], "split"]) == {"train"}


@pytest.mark.slow
def test_no_model_of_a_fold_sees_that_folds_test_items(folds_run):
    """2-fold cross-validation end to end: each item is tested in exactly one fold, and in
    every fold the GAN, the feature classifier and every arm train on that fold's train (and
    select on its val) items only; the verdicts pool both folds, so a class's support is all
    its items."""
    import json

    res = folds_run / "results" / "tiny"
    index = pd.read_csv(res / "index.csv", dtype={"item_id": str, "label": str})
    tested = []
    for fold in (0, 1):
        items = pd.read_csv(res / f"fold-{fold}" / "items.csv", dtype={"item_id": str}).set_index("item_id")
        test = set(items.index[items["split"] == "test"])
        tested += sorted(test)
        gan = pd.read_csv(res / f"fold-{fold}" / "gan" / "training_tiles.csv", dtype={"item_id": str})
        assert set(items.loc[gan["item_id"], "split"]) == {"train"}
        seen = pd.read_csv(res / f"fold-{fold}" / "feature_classifier" / "tiles.csv", dtype={"item_id": str})
        assert set(items.loc[seen["item_id"], "split"]) == {"train", "val"}
        train_counts = items[items["split"] == "train"]["label"].value_counts().sort_index().tolist()
        for arm in ("real", "real+gan"):
            r = json.loads((res / f"fold-{fold}" / "classify" / arm / "seed-0.json").read_text())
            assert r["fold"] == fold and set(r["test_item_ids"]) == test
            want = train_counts if arm != "real+gan" else [max(train_counts)] * len(train_counts)
            assert r["n_train_per_class"] == want, (fold, arm)  # this fold's train tiles (and its GAN's)
    assert sorted(tested) == sorted(index["item_id"])  # every item tested once
    verdicts = pd.read_csv(res / "verdicts.csv", dtype={"class": str})
    per_class = verdicts[verdicts["class"] != "(macro)"]
    assert (per_class["n_test"] == per_class["class"].map(index["label"].value_counts())).all()
    summary = (res / "summary.md").read_text()
    assert "## Macro F1 per fold (mean over seeds)" in summary and "across 2 folds and 1 seed" in summary
    assert pd.read_csv(res / "summary.csv")["fold"].tolist().count(1) == 2  # 2 arms x 1 seed in fold 1
