"""The pixel noise of the real tiles, fitted so that the generator's tiles can carry it too.

A camera's pixels carry shot noise (Poisson: variance proportional to the signal) and read
noise (Gaussian: a constant variance), so per channel the noise variance at intensity I is

    var(I) = a * I + b            (a Poisson-Gaussian model, Foi et al. 2008)

in the tiles' normalised [0, 1] units. Upsampling convolutions from a 4x4 map draw smooth
images: a discriminator, or anyone, then tells synthetic tiles by their clean background.
With `gan.pixel_noise: fitted`, (a, b) per channel are fitted here to the real train tiles
and G adds noise of that variance to its output (networks.Generator), in training and in
sampling, so its convolutions are left to draw the cells.

The fit (`fit_noise_model`), per channel:
- a residual that cancels smooth signal (Immerkaer's 3x3 kernel; white noise of variance
  s^2 gives 36 s^2), binned by the local mean intensity;
- in each bin only the flattest quarter of the pixels counts (the least local variation of
  the smoothed image: cell edges and peaks would read as noise), and their robust variance
  (1.4826 MAD, squared) is the bin's;
- pixels next to an exact 0 or 1 (clipped by the normalisation) are left out;
- a and b are the non-negative least-squares line through the bins.
In bright cells the cells' own texture still adds to the residual: the fit leans high there
(up to 2x the variance of pure read noise at I = 0.6 on smooth test cells), never low.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve, uniform_filter
from scipy.optimize import nnls

from .input_pipeline import evenly_spaced_rows

MAX_TILES = 2048  # real tiles the fit reads at most (evenly spaced over the training set)
N_BINS = 16  # intensity bins (quantiles of the local mean)
FLAT_SHARE = 0.25  # of each bin, the flattest pixels (least local variation) count
# Immerkaer's (1996) residual, the product of the second differences along y and x: zero on
# signal that is linear along either axis, and small on smooth cells (it sees their fourth
# derivative); on white noise of variance s^2 its variance is 36 s^2
_RESIDUAL = np.outer([1, -2, 1], [1, -2, 1]).astype(np.float32)
_RESIDUAL_GAIN = 36.0
_MAD_TO_SIGMA = 1.4826


def fit_noise_model(tiles: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(a, b) per channel of var(I) = a * I + b from float (N, H, W, C) tiles in [0, 1]."""
    tiles = np.asarray(tiles, np.float32)
    if tiles.ndim != 4 or min(tiles.shape[1:3]) < 5 or len(tiles) == 0:
        raise ValueError(f"noise model: expected (N, H, W, C) tiles of at least 5x5 px, got shape {tiles.shape}")
    a, b = [], []
    for c in range(tiles.shape[-1]):
        ac, bc = _fit_channel(tiles[..., c])
        a.append(ac)
        b.append(bc)
    return tuple(a), tuple(b)


def _fit_channel(img: np.ndarray) -> tuple[float, float]:
    inner = (slice(None), slice(2, -2), slice(2, -2))  # away from the tile's edge (filters pad there)
    residual = convolve(img, _RESIDUAL[None], mode="reflect")[inner]
    mean = uniform_filter(img, (1, 3, 3), mode="reflect")
    # structure: how much the local mean (the image, denoised) varies around the pixel, over 5x5
    spread = uniform_filter(mean**2, (1, 5, 5), mode="reflect") - uniform_filter(mean, (1, 5, 5), mode="reflect") ** 2
    slope = np.sqrt(np.maximum(spread, 0.0))[inner]
    clipped = uniform_filter(((img <= 0) | (img >= 1)).astype(np.float32), (1, 3, 3), mode="reflect")[inner] > 0
    keep = ~clipped
    residual, mean, slope = residual[keep], mean[inner][keep], slope[keep]
    if residual.size < 64 * N_BINS:
        return 0.0, 0.0  # too few unclipped pixels to say: no noise added
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, N_BINS + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    levels, variances, weights = [], [], []
    for k in range(len(edges) - 1):
        in_bin = which == k
        if in_bin.sum() < 64:
            continue
        flat = in_bin & (slope <= np.quantile(slope[in_bin], FLAT_SHARE))
        r = residual[flat]
        sigma = _MAD_TO_SIGMA * np.median(np.abs(r - np.median(r)))
        levels.append(float(mean[flat].mean()))
        variances.append(sigma**2 / _RESIDUAL_GAIN)
        weights.append(np.sqrt(flat.sum()))
    if len(levels) < 2:
        return 0.0, 0.0
    w = np.asarray(weights)
    design = np.stack([np.asarray(levels), np.ones(len(levels))], axis=1) * w[:, None]
    (a, b), _ = nnls(design, np.asarray(variances) * w)
    return float(a), float(b)


def fit_from_source(source, max_tiles: int = MAX_TILES) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`fit_noise_model` on at most `max_tiles` rows of a tile source, evenly spaced."""
    return fit_noise_model(evenly_spaced_rows(source, max_tiles))
