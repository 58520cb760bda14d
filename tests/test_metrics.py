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


# ----------------------------------------------------------------------------- two-sample test
def blobs(rng, n, size=16, texture=0.0):
    """Gaussian blobs of random size and place; `texture` adds a checkerboard of that amplitude."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 2), np.float32)
    checker = ((yy + xx) % 2).astype(np.float32)
    for i in range(n):
        cy, cx, r = rng.uniform(5, size - 5), rng.uniform(5, size - 5), rng.uniform(2, 4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        out[i, ..., 0] = blob + rng.normal(0, 0.05, blob.shape) + texture * checker
        out[i, ..., 1] = 0.5 * blob + rng.normal(0, 0.05, blob.shape)
    return np.clip(out, 0, 1)


def test_two_sample_test_tells_apart_only_what_differs():
    two_sample = get_metric("two_sample")
    rng = np.random.default_rng(0)
    same = two_sample(blobs(rng, 160), blobs(rng, 160), steps=80)
    assert same["c2st_n_test"] == 160
    assert 0.35 <= same["c2st_accuracy"] <= 0.65  # one distribution: chance
    assert same["c2st_low"] < 0.5 < same["c2st_high"]
    textured = two_sample(blobs(rng, 160), blobs(rng, 160, texture=0.25), steps=80)
    assert textured["c2st_accuracy"] >= 0.9 and textured["c2st_low"] > 0.5  # a GAN's checkerboard: found
    few = two_sample(blobs(rng, 3), blobs(rng, 50), steps=80)
    assert np.isnan(few["c2st_accuracy"]) and few["c2st_n_test"] == 0
    rare = two_sample(blobs(rng, 9), blobs(rng, 300, texture=0.25), steps=80)  # 9 real tiles: 4 to learn from
    assert rare["c2st_n_test"] == 10 and 0 <= rare["c2st_low"] <= rare["c2st_accuracy"] <= rare["c2st_high"] <= 1


def test_wilson_interval_known_values():
    from bioaug.metrics.two_sample import wilson_interval

    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert all(np.isnan(wilson_interval(0, 0)))
