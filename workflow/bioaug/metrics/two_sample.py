"""Classifier two-sample test (C2ST; Lopez-Paz & Oquab, ICLR 2017): can a small CNN tell
real tiles from synthetic ones of one class?

Equal numbers of real and synthetic tiles are split in halves; a small CNN (bioaug's own,
on the pixels, so it sees texture such as checkerboard artefacts that a feature space can
miss) learns real-vs-synthetic on one half for a fixed number of steps and is scored on the
other. Accuracy 0.5: indistinguishable to this test; 1.0: every tile told apart. The
interval is Wilson's 95% interval of the held-out accuracy (the held-out tiles are
independent given the trained classifier).
"""

from __future__ import annotations

import math

import numpy as np

# The judge: small, and the same for every class and dataset (tiles of at least 4 px).
C2ST_NET = {"architecture": "small_cnn", "channels": [16, 32], "lr": 1e-3, "batch_size": 64, "epochs": 1}
MIN_PER_SIDE = 4  # fewer real or synthetic tiles than this: no test (NaN)


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def classifier_two_sample_test(real: np.ndarray, fake: np.ndarray, steps: int = 150, seed: int = 0) -> dict:
    """{c2st_accuracy, c2st_low, c2st_high, c2st_n_test} for tiles (N, H, W, C) of one class."""
    from ..classifier.train import train_classifier

    m = min(len(real), len(fake))
    if m < MIN_PER_SIDE or steps < 1:
        return {"c2st_accuracy": math.nan, "c2st_low": math.nan, "c2st_high": math.nan, "c2st_n_test": 0}
    rng = np.random.default_rng(seed)
    r = real[rng.choice(len(real), m, replace=False)]
    f = fake[rng.choice(len(fake), m, replace=False)]
    half = m // 2
    x_fit = np.concatenate([r[:half], f[:half]])
    y_fit = np.repeat(np.array([0, 1], np.int32), half)
    x_out = np.concatenate([r[half:], f[half:]])
    y_out = np.repeat(np.array([0, 1], np.int32), m - half)
    # a few real tiles of a rare class: repeat them to one full batch, so every class trains
    # with the same batch shape (one compiled step for all)
    reps = max(1, math.ceil(C2ST_NET["batch_size"] / len(x_fit)))
    x_fit, y_fit = np.tile(x_fit, (reps, 1, 1, 1)), np.tile(y_fit, reps)
    clf = train_classifier(
        x_fit, y_fit, x_fit[[0, -1]], y_fit[[0, -1]], ["real", "synthetic"], C2ST_NET, seed=seed, total_steps=steps
    )
    correct = int((clf.predict_proba(x_out).argmax(axis=1) == y_out).sum())
    low, high = wilson_interval(correct, len(y_out))
    return {"c2st_accuracy": correct / len(y_out), "c2st_low": low, "c2st_high": high, "c2st_n_test": len(y_out)}
