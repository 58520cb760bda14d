"""Classify stage: train the downstream classifier for one (arm, seed) and score it on test.

An arm is a way of handling class imbalance; all arms share the classifier, its budget and
the seeds, and differ only in their training data or sampling:
  real      the real train tiles as they are
  real+gan  the balanced dataset (real train tiles + synthetic tiles)
The validation split picks the epoch; the test split is scored once per trained model.
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
ARMS = ("real", "real+gan")


def arm_training_data(arm: str, items: pd.DataFrame, shard_npys, balanced_dir: str | Path | None):
    """(x, y) the arm trains on."""
    if arm == "real":
        x, y, _ = load_tiles(shard_npys, items, splits=("train",))
        return x, y
    if arm == "real+gan":
        if balanced_dir is None:
            raise BioaugError("arm 'real+gan' needs the balanced dataset")
        from .balance import read_balanced

        x, manifest = read_balanced(balanced_dir)
        index = {n: i for i, n in enumerate(class_names(items))}
        return x, manifest["label"].astype(str).map(index).to_numpy(np.int32)
    raise BioaugError(f"classifier.arms: unknown arm {arm!r} (known: {list(ARMS)})")


def run_arm(arm: str, seed: int, items: pd.DataFrame, shard_npys, cfg: dict,
            balanced_dir: str | Path | None = None) -> dict:
    from .classifier import train_classifier
    from .metrics import get_metric

    t0 = time.time()
    names = class_names(items)
    train_x, train_y = arm_training_data(arm, items, shard_npys, balanced_dir)
    val_x, val_y, _ = load_tiles(shard_npys, items, splits=("val",))
    log.info("arm %s, seed %d: %d train tiles %s, %d val tiles", arm, seed, len(train_y),
             np.bincount(train_y, minlength=len(names)).tolist(), len(val_y))
    model = train_classifier(train_x, train_y, val_x, val_y, names, cfg, seed)
    # The test split is loaded only now, after model selection, and scored exactly once.
    test_x, test_y, _ = load_tiles(shard_npys, items, splits=("test",))
    proba = model.predict_proba(test_x)
    metrics = get_metric("classification")(test_y, proba.argmax(1), proba, names)
    return {
        "arm": arm, "seed": seed, "split": "test", **metrics,
        "n_train_per_class": np.bincount(train_y, minlength=len(names)).tolist(),
        "best_epoch": model.best_epoch, "history": model.history,
        "seconds": round(time.time() - t0, 2),
    }
