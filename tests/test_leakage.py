"""The test split never reaches the GAN, the feature classifier, or model selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import bioaug.classifier
from bioaug.arms import ARMS
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
    result = run_arm(arm, 0, items, shards, {"epochs": 1})
    ((train_vals, val_vals, options),) = calls["fit"]
    assert train_vals.tolist() == [SPLIT_VALUE["train"]] and val_vals.tolist() == [SPLIT_VALUE["val"]]
    assert [v.tolist() for v in calls["predict"]] == [[SPLIT_VALUE["test"]]]  # once, test only
    assert result["n"] == 6 and options == {k: v for k, v in ARMS[arm].items() if k != "data"}


@pytest.mark.slow
def test_pipeline_gan_and_feature_classifier_never_see_test(tiny_run):
    res = tiny_run / "results" / "tiny"
    items = pd.read_csv(res / "items.csv").set_index("item_id")
    gan_tiles = pd.read_csv(res / "gan" / "training_tiles.csv")
    assert set(items.loc[gan_tiles["item_id"], "split"]) == {"train"}
    assert len(gan_tiles) == (items["split"] == "train").sum()
    seen = pd.read_csv(res / "feature_classifier" / "tiles.csv")
    assert set(items.loc[seen["item_id"], "split"]) == {"train", "val"}
    # the balanced dataset (what GAN arms train on) holds no val/test tile either
    manifest = pd.read_csv(res / "balanced" / "manifest.csv")
    real = manifest[manifest["origin"] == "real"]
    assert set(items.loc[real["item_id"], "split"]) == {"train"}
