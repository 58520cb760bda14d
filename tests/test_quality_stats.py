"""GAN quality metrics (closed-form and limiting cases) and the bootstrap verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from bioaug.metrics import get_metric
from bioaug.metrics.frechet import fid, frechet_distance, kid
from bioaug.metrics.manifold import density_coverage, precision_recall
from bioaug.metrics.memorisation import memorisation_audit
from bioaug.verdicts import per_class_scores


def test_frechet_distance_closed_form():
    # Diagonal Gaussians: FD = |mu1 - mu2|^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) (variances s)
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    # a rotated (non-diagonal) covariance against itself: 0
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    cov = rot @ np.diag([2.0, 0.5]) @ rot.T
    assert frechet_distance(np.zeros(2), cov, np.zeros(2), cov) == pytest.approx(0.0, abs=1e-9)
    # scalar case: (m1-m2)^2 + (sd1 - sd2)^2
    assert frechet_distance([1.0], [[9.0]], [3.0], [[1.0]]) == pytest.approx(4.0 + 4.0)


def test_fid_and_kid_from_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (4000, 4)), rng.normal(0, 1, (4000, 4))
    far = rng.normal(2, 1, (4000, 4))
    assert fid(a, b) < 0.02 and fid(a, far) == pytest.approx(16.0, rel=0.05)  # |mu| diff^2 = 4 * 4
    assert abs(kid(a, b)) < 0.01 and kid(a, far) > 0.5
    assert np.isnan(fid(a[:1], b))


def test_precision_recall_density_coverage_limits():
    rng = np.random.default_rng(1)
    real = rng.normal(0, 1, (500, 3))
    same = rng.normal(0, 1, (500, 3))
    collapsed = np.tile(real[:1], (500, 1)) + rng.normal(0, 1e-3, (500, 3))  # one mode only
    far = rng.normal(10, 1, (500, 3))
    pr = precision_recall(real, same, k=3)
    assert pr["precision"] > 0.85 and pr["recall"] > 0.85
    pr = precision_recall(real, collapsed, k=3)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.05  # realistic but not diverse
    assert precision_recall(real, far)["precision"] == 0.0
    dc = density_coverage(real, same, k=5)
    assert 0.7 < dc["density"] < 1.3 and dc["coverage"] > 0.85
    assert density_coverage(real, collapsed, k=5)["coverage"] < 0.05


def test_memorisation_audit_flags_copies():
    rng = np.random.default_rng(2)
    train, test = rng.normal(0, 1, (300, 8)), rng.normal(0, 1, (100, 8))
    synthetic = np.concatenate([train[:10] + 1e-4, rng.normal(0, 1, (90, 8))])  # 10 near-copies
    audit = memorisation_audit(train, test, synthetic)
    flagged = audit["distances"] < audit["threshold"]
    assert flagged[:10].all() and 0.10 <= audit["near_copy_share"] <= 0.16  # + the ~1% of genuinely new ones
    assert (audit["nearest_train"][:10] == np.arange(10)).all()
    assert get_metric("memorisation") is memorisation_audit


def test_per_class_scores_match_sklearn():
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(3)
    yt, yp = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    ours = per_class_scores(yt[None], yp[None], 3)
    p, r, f, _ = precision_recall_fscore_support(yt, yp, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose(ours["precision"][0], p)
    np.testing.assert_allclose(ours["recall"][0], r)
    np.testing.assert_allclose(ours["f1"][0], f)
