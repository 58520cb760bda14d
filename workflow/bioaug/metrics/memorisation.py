"""Memorisation audit: how close each synthetic tile is to its nearest real training tile.

A synthetic tile counts as a near-copy when its nearest-neighbour distance to the real train
tiles is below the 1st percentile of the same distance for real *test* tiles (which the GAN
never saw): closer than almost any genuinely new real image is to the training set.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def nearest(reference: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query's nearest reference row (Euclidean)."""
    nn = NearestNeighbors(n_neighbors=1).fit(reference.reshape(len(reference), -1))
    d, i = nn.kneighbors(queries.reshape(len(queries), -1))
    return d[:, 0], i[:, 0]


def memorisation_audit(train: np.ndarray, test: np.ndarray, synthetic: np.ndarray, percentile: float = 1.0) -> dict:
    """Near-copy share of synthetic rows, with the threshold from real test rows."""
    d_test, _ = nearest(train, test)
    d_syn, idx = nearest(train, synthetic)
    threshold = float(np.percentile(d_test, percentile))
    return {
        "threshold": threshold,
        "distances": d_syn,
        "nearest_train": idx,
        "near_copy_share": float((d_syn < threshold).mean()) if len(d_syn) else float("nan"),
    }
