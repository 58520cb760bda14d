"""Classify stage: train the downstream classifier for one (arm, seed) and score it on test.

Every arm (`bioaug.arms`) uses the same classifier, the same budget (epochs, batch size,
learning rate) and the same seeds, and differs only in its data or sampling. The validation
split (real) picks the epoch (and, in the report, each class's baseline arm); the test split is
loaded after model selection and scored once.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from ..arms import ARMS, training_options
from ..formats import synthetic
from ..formats.classify_results import write_result
from ..formats.items import class_names, read_items, safe_name
from ..formats.shards import load_tiles, select_tiles
from ..runtime import BioaugError

log = logging.getLogger("bioaug.classify")


def run(arm: str, seed: int, items_csv, shard_npys, cfg: dict, out_json, synthetic_npys=(), fold: int = 0) -> dict:
    """The classify stage: one model of one fold (`items_csv` holds the fold's split), its
    test metrics to `out_json`."""
    result = {"fold": fold, **run_arm(arm, seed, read_items(items_csv), shard_npys, cfg, synthetic_npys)}
    write_result(result, out_json)
    return result


def arm_training_data(arm: str, items: pd.DataFrame, shard_npys, synthetic_npys=()):
    """(x, y) the arm trains on."""
    if arm not in ARMS:
        raise BioaugError(f"classifier.arms: unknown arm {arm!r} (known: {list(ARMS)})")
    data = ARMS[arm]["data"]
    names = class_names(items)
    if data == "real":
        x, y, _ = load_tiles(shard_npys, items, splits=("train",))
        return x, y
    if not synthetic_npys:
        raise BioaugError(f"arm {arm!r} needs synthetic tiles, and there are none")
    x, y, _ = synthetic.read_synthetic(synthetic_npys, names, balance_only=data == "balanced")
    if data == "balanced":  # the balanced dataset's tiles, at full precision: real train + balancing tiles
        real_x, real_y, _ = load_tiles(shard_npys, items, splits=("train",))
        return np.concatenate([real_x, x]), np.concatenate([real_y, y])
    if len(x) == 0:
        raise BioaugError(f"arm {arm!r} needs synthetic tiles, and there are none")
    return x, y


def step_budget(items: pd.DataFrame, shard_npys, cfg: dict) -> int | None:
    """classifier.budget = steps: the optimiser steps of `epochs` passes over the real train
    tiles, the same for every arm (None: each arm makes `epochs` passes over its own tiles)."""
    if cfg["budget"] != "steps":
        return None
    _, y, _ = select_tiles(shard_npys, items, splits=("train",))
    return cfg["epochs"] * max(1, len(y) // min(cfg["batch_size"], len(y)))


def run_arm(arm: str, seed: int, items: pd.DataFrame, shard_npys, cfg: dict, synthetic_npys=()) -> dict:
    """Train one model, select its epoch on val, score it once on test; returns the metrics."""
    from ..classifier import train_classifier

    t0 = time.time()
    names = class_names(items)
    train_x, train_y = arm_training_data(arm, items, shard_npys, synthetic_npys)
    val_x, val_y, _ = load_tiles(shard_npys, items, splits=("val",))
    log.info(
        "arm %s, seed %d: %d train tiles %s, %d val tiles",
        arm,
        seed,
        len(train_y),
        np.bincount(train_y, minlength=len(names)).tolist(),
        len(val_y),
    )
    total_steps = step_budget(items, shard_npys, cfg)
    if cfg["command"]:  # the user's own classifier (bioaug.classifier.external)
        return _run_external(arm, seed, items, shard_npys, cfg, (train_x, train_y), (val_x, val_y), total_steps, t0)
    model = train_classifier(
        train_x, train_y, val_x, val_y, names, cfg, seed, total_steps=total_steps, **training_options(arm)
    )
    train_seconds = time.time() - t0
    # validation scores of the selected model: the report picks each class's baseline arm on them
    val_pred = model.predict_proba(val_x).argmax(1)
    # The test split is loaded only now, after model selection, and scored exactly once.
    test_x, test_y, test_rows = load_tiles(shard_npys, items, splits=("test",))
    proba = model.predict_proba(test_x)
    return _result(arm, seed, names, cfg, train_y, (val_y, val_pred), (test_y, proba.argmax(1), proba, test_rows),
                   model.best_epoch, model.history, time.time() - t0, train_seconds)  # fmt: skip


def _run_external(arm, seed, items, shard_npys, cfg, train, val, total_steps, t0) -> dict:
    """classifier.command: the user's script trains on the arm's tiles and predicts val + test
    (unlabelled); the result has the same form as the built-in classifier's."""
    import tempfile

    from ..classifier.external import run_external

    names = class_names(items)
    test_x, test_y, test_rows = load_tiles(shard_npys, items, splits=("test",))
    budget = {"epochs": cfg["epochs"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "total_steps": total_steps}
    with tempfile.TemporaryDirectory(prefix=f"bioaug-classify-{safe_name(arm)}-{seed}-") as work:
        y_pred, proba, seconds = run_external(
            cfg["command"], work, arm=arm, seed=seed, names=names, options=training_options(arm), budget=budget,
            train=train, val=val, predict_x=np.concatenate([val[0], test_x]),
        )  # fmt: skip
    n_val = len(val[1])
    test_proba = proba[n_val:] if proba is not None else None
    return _result(arm, seed, names, cfg, train[1], (val[1], y_pred[:n_val]),
                   (test_y, y_pred[n_val:], test_proba, test_rows), None, [], time.time() - t0, seconds)  # fmt: skip


def _result(arm, seed, names, cfg, train_y, val, test, best_epoch, history, seconds, train_seconds) -> dict:
    """The classify result of one model: test metrics, validation scores, per-tile predictions."""
    from ..metrics import get_metric

    val_y, val_pred = val
    test_y, y_pred, proba, test_rows = test
    val_f1 = f1_score(val_y, val_pred, labels=range(len(names)), average=None, zero_division=0)
    metrics = get_metric("classification")(test_y, y_pred, proba, names)
    return {
        "arm": arm,
        "seed": seed,
        "split": "test",
        **metrics,
        "n_train_per_class": np.bincount(train_y, minlength=len(names)).tolist(),
        "best_epoch": best_epoch,
        "train_steps": int(sum(h["steps"] for h in history)) if history else None,
        "budget": cfg["budget"],
        "classifier": "command" if cfg["command"] else cfg["architecture"],
        "history": history,
        "seconds": round(seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "val_per_class_f1": {c: float(f) for c, f in zip(names, val_f1)},
        "val_macro_f1": float(np.mean(val_f1)),
        # per-tile predictions, for bootstrap intervals and paired comparisons in the report
        "test_tile_ids": test_rows["tile_id"].tolist(),
        "test_item_ids": test_rows["item_id"].tolist(),
        "y_true": test_y.tolist(),
        "y_pred": y_pred.tolist(),
    }
