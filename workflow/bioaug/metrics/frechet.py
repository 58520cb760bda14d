"""Fréchet distance (FID in a domain feature space) and kernel inception distance (KID).

Both compare two sets of feature vectors; bioaug uses the penultimate layer of a classifier
trained on the real train split, not ImageNet Inception features.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    # tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)): the inner matrix is symmetric PSD,
    # so symmetric eigendecompositions suffice (more stable than a general sqrtm).
    w, v = linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (each needs >= 2 rows)."""
    if len(features_a) < 2 or len(features_b) < 2:
        return float("nan")
    return frechet_distance(
        features_a.mean(0), np.cov(features_a, rowvar=False), features_b.mean(0), np.cov(features_b, rowvar=False)
    )


def kid(
    features_a: np.ndarray, features_b: np.ndarray, n_subsets: int = 20, subset_size: int = 200, seed: int = 0
) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets."""
    n = min(len(features_a), len(features_b), subset_size)
    if n < 2:
        return float("nan")
    d = features_a.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(n_subsets):
        a = features_a[rng.choice(len(features_a), n, replace=False)].astype(np.float64)
        b = features_b[rng.choice(len(features_b), n, replace=False)].astype(np.float64)
        kaa = (a @ a.T / d + 1) ** 3
        kbb = (b @ b.T / d + 1) ** 3
        kab = (a @ b.T / d + 1) ** 3
        total += ((kaa.sum() - np.trace(kaa)) + (kbb.sum() - np.trace(kbb))) / (n * (n - 1)) - 2 * kab.mean()
    return float(total / n_subsets)
