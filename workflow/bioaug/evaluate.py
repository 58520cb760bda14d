"""Classify stage: train the downstream classifier for one (arm, seed) and score it on test.

An arm is one way of handling class imbalance. Every arm uses the same classifier, the same
budget (epochs, batch size, learning rate) and the same seeds, and differs only in its data
or sampling:
  real              the real train tiles as they are
  real+classic      real tiles with classic augmentation (flips, 90° rotations, intensity jitter)
  oversample        real tiles, minibatches drawn class-balanced (rare tiles repeated)
  class_weights     real tiles, loss weighted by inverse class frequency
  real+gan          the balanced dataset: real train tiles + synthetic tiles
  real+gan+classic  the balanced dataset with classic augmentation
  gan_only          synthetic tiles only (every generated tile), tested on real data
The validation split (real) picks the epoch; the test split is scored once per model.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .runtime import BioaugError
from .tilestore import class_names, load_tiles

log = logging.getLogger("bioaug.classify")

# data: where the training tiles come from; the rest are train_classifier options.
ARMS = {
    "real": {"data": "real"},
    "real+classic": {"data": "real", "augment": True},
    "oversample": {"data": "real", "balanced_sampling": True},
    "class_weights": {"data": "real", "class_weighted": True},
    "real+gan": {"data": "balanced"},
    "real+gan+classic": {"data": "balanced", "augment": True},
    "gan_only": {"data": "synthetic"},
}


def uses_gan(arm: str) -> bool:
    return ARMS[arm]["data"] != "real"


def arm_training_data(arm: str, items: pd.DataFrame, shard_npys, balanced_dir=None, synthetic_npys=()):
    """(x, y) the arm trains on."""
    if arm not in ARMS:
        raise BioaugError(f"classifier.arms: unknown arm {arm!r} (known: {list(ARMS)})")
    data = ARMS[arm]["data"]
    index = {n: i for i, n in enumerate(class_names(items))}
    if data == "real":
        x, y, _ = load_tiles(shard_npys, items, splits=("train",))
        return x, y
    if data == "balanced":
        if balanced_dir is None:
            raise BioaugError(f"arm {arm!r} needs the balanced dataset")
        from .balance import read_balanced

        x, manifest = read_balanced(balanced_dir)
        return x, manifest["label"].astype(str).map(index).to_numpy(np.int32)
    xs, ys = [], []
    for npy in synthetic_npys:
        tiles = np.load(npy)
        labels = pd.read_csv(Path(npy).with_suffix(".csv"))["label"].astype(str).map(index)
        xs.append(tiles)
        ys.append(labels.to_numpy(np.int32))
    if not xs or sum(len(x) for x in xs) == 0:
        raise BioaugError(f"arm {arm!r} needs synthetic tiles, and there are none")
    return np.concatenate(xs), np.concatenate(ys)


def run_arm(arm: str, seed: int, items: pd.DataFrame, shard_npys, cfg: dict, balanced_dir=None,
            synthetic_npys=()) -> dict:
    """Train one model, select its epoch on val, score it once on test; returns the metrics."""
    from .classifier import train_classifier
    from .metrics import get_metric

    t0 = time.time()
    names = class_names(items)
    options = {k: v for k, v in ARMS[arm].items() if k != "data"} if arm in ARMS else {}
    train_x, train_y = arm_training_data(arm, items, shard_npys, balanced_dir, synthetic_npys)
    val_x, val_y, _ = load_tiles(shard_npys, items, splits=("val",))
    log.info("arm %s, seed %d: %d train tiles %s, %d val tiles", arm, seed, len(train_y),
             np.bincount(train_y, minlength=len(names)).tolist(), len(val_y))
    model = train_classifier(train_x, train_y, val_x, val_y, names, cfg, seed, **options)
    train_seconds = time.time() - t0
    # The test split is loaded only now, after model selection, and scored exactly once.
    test_x, test_y, test_rows = load_tiles(shard_npys, items, splits=("test",))
    proba = model.predict_proba(test_x)
    y_pred = proba.argmax(1)
    metrics = get_metric("classification")(test_y, y_pred, proba, names)
    return {
        "arm": arm, "seed": seed, "split": "test", **metrics,
        "n_train_per_class": np.bincount(train_y, minlength=len(names)).tolist(),
        "best_epoch": model.best_epoch, "history": model.history,
        "seconds": round(time.time() - t0, 2), "train_seconds": round(train_seconds, 2),
        # per-tile predictions, for bootstrap intervals and paired comparisons in the report
        "test_tile_ids": test_rows["tile_id"].tolist(), "y_true": test_y.tolist(), "y_pred": y_pred.tolist(),
    }
