"""gan.pixel_noise: the real tiles' Poisson-Gaussian pixel noise, fitted and drawn by G."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.ndimage import gaussian_filter

from bioaug.gan import load_generator, sample_tiles, train_gan
from bioaug.gan.networks import build_networks
from bioaug.gan.noise_model import fit_from_source, fit_noise_model
from gan_reference import gan_config, gan_section

TINY = dict(batch_size=8, z_dim=16, g_channels=[16, 8], d_channels=[8, 16], seed=3, log_every=2, checkpoint_every=4)


def cells(n=400, size=32, channels=2, seed=0):
    """Smooth 'cells' (blurred points, peaks ~0.2-0.9 over a 0.05 background), no noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, size, size, channels), np.float32)
    for i in range(n):
        for c in range(channels):
            im = np.zeros((size, size))
            for _ in range(3):
                y, x = rng.integers(4, size - 4, 2)
                im[y, x] = rng.uniform(3, 12)
            out[i, ..., c] = gaussian_filter(im, 1.5) + 0.05
    return out


def add_noise(clean, a, b, seed=1):
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.clip(clean + np.sqrt(a * clean + b) * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize(
    "a, b",
    [
        ((1e-3, 4e-3), (2e-5, 1e-4)),  # shot and read noise, a noisier second channel
        ((0.0, 0.0), (5e-5, 5e-5)),  # read noise alone
        ((2e-4, 2e-4), (1e-5, 1e-5)),  # the built-in demo's level
    ],
)
def test_fit_recovers_the_noise_of_smooth_cells(a, b):
    """Per channel, the fitted variance a * I + b is the true one within 30% in the background
    and in dim cells (I 0.05, 0.2), and within a factor 2 in bright cells (I 0.6), where the
    cells' own curvature adds to the residual: it leans high, never low."""
    clean = cells()
    fa, fb = fit_noise_model(add_noise(clean, a, b))
    for c in range(2):
        for level in (0.05, 0.2):
            true, got = a[c] * level + b[c], fa[c] * level + fb[c]
            assert got == pytest.approx(true, rel=0.3), (c, level, true, got)
        true, got = a[c] * 0.6 + b[c], fa[c] * 0.6 + fb[c]
        assert 0.85 * true < got < 2.0 * true, (c, true, got)


def test_fit_is_not_fooled_by_cells_or_saturation():
    """Noise-free cells give (almost) no noise, even with saturated plateaus (exact 1s, as the
    percentile normalisation clips bright chromatin): the signal is not read as noise."""
    clean = cells()
    fa, fb = fit_noise_model(clean)
    demo_level = 2e-4 * 0.6 + 1e-5  # the weakest noise of the parametrised cases, at I = 0.6
    assert max(fa[c] * 0.6 + fb[c] for c in range(2)) < 0.3 * demo_level
    saturated = np.clip(clean * 3.0, 0, 1)  # plateaus at 1 with sharp rims
    noisy = add_noise(saturated, (1e-3, 1e-3), (2e-5, 2e-5))
    fa, fb = fit_noise_model(np.clip(noisy, 0, 1))
    for c in range(2):
        assert fa[c] * 0.3 + fb[c] == pytest.approx(1e-3 * 0.3 + 2e-5, rel=0.35)


def test_fit_input_errors_and_capped_reads():
    with pytest.raises(ValueError, match=r"\(N, H, W, C\).*shape \(4, 32, 32\)"):
        fit_noise_model(np.zeros((4, 32, 32), np.float32))
    with pytest.raises(ValueError, match="at least 5x5"):
        fit_noise_model(np.zeros((4, 4, 4, 1), np.float32))
    assert fit_noise_model(np.zeros((3, 8, 8, 1), np.float32)) == ((0.0,), (0.0,))  # too few pixels to say

    class Source:  # a large tile source: the fit reads only max_tiles rows, evenly spaced
        def __init__(self, x):
            self.x, self.read = x, []

        def __len__(self):
            return len(self.x)

        def gather(self, idx):
            self.read.append(np.asarray(idx))
            return self.x[idx]

    x = add_noise(cells(n=300), (1e-3, 1e-3), (2e-5, 2e-5))
    src = Source(x)
    got = fit_from_source(src, max_tiles=100)
    (idx,) = src.read
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 299 and np.all(np.diff(idx) > 0)
    assert got == fit_noise_model(x[idx])


def test_generator_draws_the_fitted_noise():
    """G with noise_variance: the same weights as without, plus noise of variance a * I + b
    at its clean output I (in [0, 1] units), different per sample and fixed by z; the noise's
    scale passes no gradient, the image's does."""
    key = jax.random.key(0)
    variance = ((4e-3, 1e-3), (1e-4, 4e-4))
    g_clean, _ = build_networks(gan_config(16, 2, 3, **TINY), key)
    g_noisy, _ = build_networks(dataclasses.replace(gan_config(16, 2, 3, **TINY), noise_variance=variance), key)
    z, y = jax.random.normal(jax.random.key(1), (64, TINY["z_dim"])), jnp.arange(64) % 3
    clean = (np.asarray(g_clean(z, y, train=False)) + 1) / 2
    noisy = (np.asarray(g_noisy(z, y, train=False)) + 1) / 2
    assert 0.2 < clean.min() and clean.max() < 0.8  # an untrained G: no clipping in the way
    resid = noisy - clean
    for c in range(2):
        expected = variance[0][c] * clean[..., c] + variance[1][c]
        ratio = float(np.mean(resid[..., c] ** 2) / np.mean(expected))
        assert ratio == pytest.approx(1.0, abs=0.05), (c, ratio)
        assert abs(float(np.corrcoef(resid[:32, ..., c].ravel(), resid[32:, ..., c].ravel())[0, 1])) < 0.05
    np.testing.assert_array_equal(noisy, (np.asarray(g_noisy(z, y, train=False)) + 1) / 2)  # z fixes it
    assert noisy.min() >= 0 and noisy.max() <= 1

    def loss(z):
        return jnp.sum(g_noisy(z, y, train=False) ** 2)

    grad = jax.grad(loss)(z)
    assert np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).sum()) > 0
    with pytest.raises(ValueError, match="noise_variance"):
        build_networks(dataclasses.replace(gan_config(16, 2, 3, **TINY), noise_variance=((1e-3,), (1e-4,))), key)


def test_train_gan_fits_the_noise_and_exports_it(tmp_path):
    """pixel_noise: fitted: train_gan fits (a, b) on the real tiles, trains and exports G with
    them (generator.json), and the loaded generator draws noisy tiles reproducibly; without
    the entry (a generator exported before the option) it draws no noise. The same run has
    g_padding: edge, exported and loaded back likewise (zeros without the entry). (`none`
    exports null: test_gan_features' linear-output test.)"""
    rng = np.random.default_rng(0)
    clean = np.stack([gaussian_filter(rng.random((16, 16, 1)), (2, 2, 0)) for _ in range(60)]).astype(np.float32)
    tiles = add_noise(clean, (4e-3,), (1e-4,))
    labels = np.arange(60) % 3
    kw = dict(checkpoint_root=tmp_path / "ck", log_csv=tmp_path / "log.csv", samples_png=tmp_path / "s.png")
    train_gan(tiles, labels, ["a", "b", "c"], gan_section(**TINY, steps=2, pixel_noise="fitted", g_padding="edge"),
              generator_dir=tmp_path / "gen", **kw)  # fmt: skip
    meta = json.loads((tmp_path / "gen" / "generator.json").read_text())
    a, b = fit_noise_model(tiles)
    assert meta["noise_variance"] == {"a": list(a), "b": list(b)} and a[0] > 0
    assert meta["gan_config"]["pixel_noise"] == "fitted" and meta["g_padding"] == "edge"
    gen = load_generator(tmp_path / "gen")
    assert nnx.merge(gen.graphdef, gen.params, gen.batch_stats).padding == "edge"
    x = sample_tiles(gen, 1, np.arange(16))
    np.testing.assert_array_equal(x, sample_tiles(gen, 1, np.arange(16)))
    # the same weights without the noise: what remains of x is noise of the fitted size
    meta["noise_variance"] = None
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(meta))
    quiet = sample_tiles(load_generator(tmp_path / "gen"), 1, np.arange(16))
    inner = (slice(None), slice(1, -1), slice(1, -1))  # away from clipping at the edges of the range
    free = (quiet[inner] > 0.05) & (quiet[inner] < 0.95)
    ratio = np.mean((x[inner] - quiet[inner])[free] ** 2) / np.mean((a[0] * quiet[inner] + b[0])[free])
    assert ratio == pytest.approx(1.0, abs=0.15)
    del meta["noise_variance"]  # as written before the option existed
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(meta))
    np.testing.assert_array_equal(sample_tiles(load_generator(tmp_path / "gen"), 1, np.arange(16)), quiet)
    del meta["g_padding"]  # neither option existed yet
    (tmp_path / "gen" / "generator.json").write_text(json.dumps(meta))
    old = load_generator(tmp_path / "gen")
    assert nnx.merge(old.graphdef, old.params, old.batch_stats).padding == "zeros"
    assert not np.allclose(sample_tiles(old, 1, np.arange(16)), quiet)  # the same weights, padded otherwise
