"""bioaug.metrics: classification metrics (hand-checked numbers) and the registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bioaug.metrics import METRICS, classification_metrics, get_metric

NAMES3 = ["a", "b", "c"]
# confusion (rows true, cols pred): [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


def test_hand_computed_example():
    m = classification_metrics(Y_TRUE, Y_PRED, None, NAMES3)
    assert m["class_names"] == NAMES3
    assert m["n"] == 6
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recall 2/3, 1/2, 1 -> balanced accuracy = mean recall
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    pc = m["per_class"]
    assert [pc[n]["precision"] for n in NAMES3] == pytest.approx([1.0, 0.5, 0.5])
    assert [pc[n]["recall"] for n in NAMES3] == pytest.approx([2 / 3, 0.5, 1.0])
    assert [pc[n]["f1"] for n in NAMES3] == pytest.approx([0.8, 0.5, 2 / 3])
    assert [pc[n]["support"] for n in NAMES3] == [3, 2, 1]
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["macro_auc"] is None  # no proba


def test_plain_json_types():
    proba = np.eye(3)[Y_PRED] * 0.8 + 0.2 / 3
    m = classification_metrics(np.array(Y_TRUE), np.array(Y_PRED), proba, NAMES3)
    json.dumps(m)  # no numpy scalars anywhere
    assert type(m["n"]) is int and type(m["accuracy"]) is float and type(m["macro_auc"]) is float
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)
    assert type(m["per_class"]["a"]["support"]) is int


def test_absent_class_is_reported_but_does_not_count():
    names = NAMES3 + ["d"]  # class 3 never occurs nor is predicted
    m = classification_metrics(Y_TRUE, Y_PRED, None, names)
    ref = classification_metrics(Y_TRUE, Y_PRED, None, NAMES3)
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["macro_f1"] == pytest.approx(ref["macro_f1"])
    assert m["balanced_accuracy"] == pytest.approx(ref["balanced_accuracy"])


def test_predicted_but_absent_class():
    # class 2 absent from y_true but predicted once: F1 0 for it, excluded from balanced accuracy
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], None, NAMES3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]


def test_auc_perfectly_separable_is_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    proba = np.full((7, 4), 0.1)
    proba[np.arange(7), y] = 0.7  # class 3 ("d") absent from y_true: left out of the AUC mean
    m = classification_metrics(y, y, proba, NAMES3 + ["d"])
    assert m["macro_auc"] == pytest.approx(1.0)


def test_auc_none_with_one_class_present():
    proba = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0]])
    assert classification_metrics([0, 0], [0, 0], proba, NAMES3)["macro_auc"] is None


def test_input_errors():
    with pytest.raises(ValueError, match="out of range"):
        classification_metrics([0, 3], [0, 1], None, NAMES3)
    with pytest.raises(ValueError, match="y_pred has 1"):
        classification_metrics([0, 1], [0], None, NAMES3)
    with pytest.raises(ValueError, match="proba"):
        classification_metrics([0, 1], [0, 1], np.ones((2, 2)) / 2, NAMES3)


def test_registry():
    assert METRICS["classification"] is classification_metrics
    assert get_metric("classification") is classification_metrics
    with pytest.raises(KeyError, match="classification"):  # the message lists known names
        get_metric("no-such-metric")
