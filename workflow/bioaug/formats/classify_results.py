"""One classifier's result: results/<ds>/fold-<f>/classify/<arm>/seed-<n>.json.

The test-split metrics of one (arm, seed) model (`bioaug.metrics.classification`), its
training record, and its per-tile test predictions (for the paired bootstrap of the report).
`write_result` refuses a result without the keys below, so the report can rely on them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime import atomic_path

REQUIRED_KEYS = (
    "arm", "seed", "fold", "split",               # which model, scored on which split
    "class_names", "n", "accuracy", "balanced_accuracy", "macro_f1", "macro_auc",
    "per_class", "confusion_matrix",               # metrics.classification
    "n_train_per_class", "best_epoch", "history", "seconds", "train_seconds",
    "val_per_class_f1", "val_macro_f1",            # the selected model on validation (baseline choice)
    "test_tile_ids", "test_item_ids", "y_true", "y_pred",  # per-tile predictions
)  # fmt: skip


def write_result(result: dict, path: str | Path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ValueError(f"{path}: classify result lacks {missing}")
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2))


def read_result(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def read_results(paths) -> list[dict]:
    return [read_result(p) for p in paths]
