"""k-NN manifold metrics between real and generated feature sets.

Improved precision/recall (Kynkäänniemi et al. 2019, k=3) and density/coverage
(Naeem et al. 2020, k=5). Precision/density: are generated samples realistic;
recall/coverage: do they cover the real distribution.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    d = pairwise_distances(x, x)
    return np.sort(d, axis=1)[:, min(k, len(x) - 1)]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    if len(real) <= k or len(fake) <= k:
        return {"precision": float("nan"), "recall": float("nan")}
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = pairwise_distances(fake, real)
    precision = (d <= r_real[None, :]).any(axis=1).mean()
    recall = (d.T <= r_fake[None, :]).any(axis=1).mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    if len(real) <= k or len(fake) < 1:
        return {"density": float("nan"), "coverage": float("nan")}
    r_real = _kth_radius(real, k)
    d = pairwise_distances(real, fake)
    density = (d <= r_real[:, None]).sum(axis=0).mean() / k
    coverage = (d.min(axis=1) <= r_real).mean()
    return {"density": float(density), "coverage": float(coverage)}
