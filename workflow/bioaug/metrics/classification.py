"""Classification metrics for one scored split, as JSON-serialisable plain Python types."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)


def classification_metrics(y_true, y_pred, proba, class_names: Sequence[str]) -> dict:
    """Score predictions of a ``len(class_names)``-class classifier.

    Args:
      y_true: true class indices, shape (N,).
      y_pred: predicted class indices, shape (N,).
      proba: class probabilities (N, n_classes), or None (then ``macro_auc`` is None).
      class_names: class index -> name.

    Returns a dict of plain Python types:
      class_names, n, accuracy,
      balanced_accuracy: mean recall over the classes present in y_true,
      macro_f1: unweighted mean F1 over the classes present in y_true or y_pred
        (scikit-learn's default label set; a class that is absent and never predicted
        does not count),
      macro_auc: mean one-vs-rest ROC AUC over the classes present in y_true
        (None if fewer than 2 are present or proba is None),
      per_class: {name: {precision, recall, f1, support}} for every class in class_names,
      confusion_matrix: rows true, columns predicted, in class_names order.
    Undefined precision/recall/F1 (no predictions / no support) are 0.
    """
    class_names = [str(c) for c in class_names]
    k = len(class_names)
    if k == 0:
        raise ValueError("class_names is empty")
    y_true = _labels("y_true", y_true, k)
    y_pred = _labels("y_pred", y_pred, k)
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    n = len(y_true)
    all_labels = list(range(k))
    present = np.unique(y_true)

    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        if proba.shape != (n, k):
            raise ValueError(f"proba must be shaped (n, n_classes) = {(n, k)}, got {proba.shape}")

    if n == 0:
        return {
            "class_names": class_names,
            "n": 0,
            "accuracy": None,
            "balanced_accuracy": None,
            "macro_f1": None,
            "macro_auc": None,
            "per_class": {name: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0} for name in class_names},
            "confusion_matrix": [[0] * k for _ in range(k)],
        }

    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=all_labels, zero_division=0)
    macro_auc = None
    if proba is not None and len(present) >= 2:
        # one-vs-rest per present class: each has positives and (>= 1 other present class) negatives
        macro_auc = float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in present]))

    return {
        "class_names": class_names,
        "n": int(n),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "macro_auc": macro_auc,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=all_labels).astype(int).tolist(),
    }


def _labels(name: str, y, k: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.number) and np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= k)
    if bad.any():
        raise ValueError(f"{name} has label {int(y[bad][0])} out of range [0, {k})")
    return y
