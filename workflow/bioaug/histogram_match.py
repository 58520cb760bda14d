"""Histogram matching of synthetic tiles to a class's real tiles (generate.match_histograms).

A GAN with a tanh output draws the extremes of a fluorescence class too rarely: real mitotic
tiles have 4-6% of their pixels at exactly 1 (saturated chromatin), the generator's tiles
almost none, and its backgrounds sit darker than the real ones. Matching each channel's pixel
distribution over the class to the real train tiles' (a monotone map per channel, the
classical histogram matching of skimage.exposure.match_histograms, fitted on the class as a
whole rather than per image) moves those intensities where the class has them and leaves
every tile's shapes and ordering of values untouched.

The map is fitted once per class, on a reference draw of synthetic tiles with their own seeds
(so a tile still depends only on the checkpoint, its seed and the map), stored beside the
tiles, and applied to every tile the class gets. Only train tiles are read.
"""

from __future__ import annotations

import numpy as np

N_QUANTILES = 1025


def fit(real: np.ndarray, synthetic: np.ndarray, n_quantiles: int = N_QUANTILES) -> np.ndarray:
    """The per-channel map from `synthetic`'s pixel-value quantiles to `real`'s, as an array
    (C, 2, n_quantiles): [c, 0] the synthetic quantiles, [c, 1] the real ones (both rising)."""
    if real.shape[-1] != synthetic.shape[-1]:
        raise ValueError(f"real tiles have {real.shape[-1]} channel(s), synthetic tiles {synthetic.shape[-1]}")
    if not len(real) or not len(synthetic):
        raise ValueError("histogram matching needs real and synthetic tiles of the class")
    q = np.linspace(0.0, 1.0, n_quantiles)
    c = real.shape[-1]
    table = np.empty((c, 2, n_quantiles), np.float64)
    for k in range(c):
        table[k, 0] = np.quantile(synthetic[..., k], q)
        table[k, 1] = np.quantile(real[..., k], q)
    return table


def apply(tiles: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`tiles` (..., C) mapped through `table` (from `fit`), channel by channel, as float32.

    Within a run of equal synthetic quantiles (a value the generator draws on many pixels)
    np.interp takes the last one's real value; monotone either way, so no tile's order of
    values changes."""
    out = np.empty(tiles.shape, np.float32)
    for k in range(tiles.shape[-1]):
        out[..., k] = np.interp(tiles[..., k], table[k, 0], table[k, 1])
    return out
