"""Tests of the GAN stage (tiny networks: the whole file stays well under 90 s on 2 cores)."""

from __future__ import annotations

import csv
import itertools
import logging
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bioaug.gan import load_generator, sample_tiles, train_gan
from bioaug.gan.augment import diff_augment
from bioaug.gan.input_pipeline import class_balanced_indices
from bioaug.gan.networks import Discriminator, Generator, SNConv, SpectralU, spectral_normalize
from bioaug.gan.sample import eval_forward
from bioaug.gan.state import data_fingerprint, load_checkpoint, run_identity
from bioaug.gan.train import CSV_HEADER
from bioaug.runtime import BioaugError
from gan_reference import gan_config, gan_section

TINY = dict(
    batch_size=8,
    z_dim=16,
    g_channels=[16, 8],
    d_channels=[8, 16],
    log_every=4,
    checkpoint_every=6,
    ema_half_life_steps=5,
    seed=3,
)
CLASSES = ["common", "medium", "rare"]
K = 6  # steps of the interrupted half


def _toy_data(n=40, size=16, seed=0):
    """Imbalanced 1-channel blobs: class c is a bright square at a class-specific place."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n - 12) + [1] * 9 + [2] * 3)
    tiles = rng.random((n, size, size, 1), dtype=np.float32) * 0.2
    for i, c in enumerate(labels):
        o = 2 + 4 * c
        tiles[i, o : o + 4, o : o + 4] = 0.9
    return tiles, labels


def _build(ctor):
    """(graphdef, state) of `ctor()`, initialised in one compiled call, not op by op."""
    graphdef = nnx.graphdef(nnx.eval_shape(ctor))
    with jax.threefry_partitionable(False):
        state = jax.jit(lambda: nnx.state(ctor()))()
    return graphdef, state


def _jit_apply(built, method):
    """Run `method(module, *args)` jitted through split/merge (avoids op-by-op compiles)."""
    graphdef, state = built

    @jax.jit
    def f(state, *args):
        m = nnx.merge(graphdef, state)
        out = method(m, *args)
        return out, nnx.state(m)

    def call(*args):
        out, new_state = f(state, *args)
        return out, new_state

    return call


def _rows(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [r for r in reader]


# ----------------------------------------------------------------------------- networks
def test_generator_and_discriminator_shapes_and_ranges():
    g = _build(lambda: Generator(16, 3, [16, 8], 2, rngs=nnx.Rngs(0)))
    d = _build(lambda: Discriminator(2, 3, [8, 16], True, rngs=nnx.Rngs(1)))
    z = jax.random.normal(jax.random.key(0), (5, 16)) * 3
    y = jnp.array([0, 1, 2, 0, 1])
    (x_train, x_eval), _ = _jit_apply(g, lambda m, z, y: (m(z, y, train=True), m(z, y, train=False)))(z, y)
    for x in (x_train, x_eval):
        assert x.shape == (5, 16, 16, 2)
        assert bool(jnp.all(jnp.abs(x) <= 1.0)) and bool(jnp.all(jnp.isfinite(x)))
    logits, _ = _jit_apply(d, lambda m, x, y: m(x, y, update_sn=True))(x_train, y)
    assert logits.shape == (5,) and bool(jnp.all(jnp.isfinite(logits)))


def test_spectral_norm_is_functional_and_normalises():
    conv = SNConv(3, 6, 3, 1, 1, spectral_norm=True, rngs=nnx.Rngs(0))
    # a weight with a clear spectral gap, so a few power iterations suffice
    rng = np.random.default_rng(0)
    left, _ = np.linalg.qr(rng.normal(size=(27, 6)))
    right, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    w0 = ((left * np.array([3.0, 1.5, 1.2, 1.0, 0.5, 0.1])) @ right.T).reshape(3, 3, 3, 6)
    w0 = w0.astype(np.float32)
    conv.kernel[...] = jnp.asarray(w0)
    graphdef, params, u = nnx.split(conv, nnx.Param, SpectralU)

    @jax.jit
    def power_steps(params, u):
        def body(u, _):
            m = nnx.merge(graphdef, params, u)
            m.weight(update_sn=True)
            return nnx.state(m, SpectralU), None

        u, _ = jax.lax.scan(body, u, None, length=8)
        m = nnx.merge(graphdef, params, u)
        return m.weight(update_sn=False), u

    w_sn, u_new = power_steps(params, u)
    top = np.linalg.svd(np.asarray(w_sn).reshape(-1, 6), compute_uv=False)[0]
    assert abs(top - 1.0) < 1e-3
    assert not np.allclose(jax.tree.leaves(u_new)[0], jax.tree.leaves(u)[0])  # u did move
    np.testing.assert_array_equal(np.asarray(params["kernel"][...]), w0)  # weight untouched

    # one eager training-mode call updates u in place but never the stored kernel
    x = jnp.ones((1, 5, 5, 3))
    u_before = np.array(conv.u[...])
    conv(x, update_sn=True)
    np.testing.assert_array_equal(np.array(conv.kernel[...]), w0)
    assert not np.allclose(np.array(conv.u[...]), u_before)

    # the gradient flows through sigma (the normalised weight is scale invariant)
    w = jax.random.normal(jax.random.key(1), (4, 3))
    u0 = jnp.ones((3,)) / jnp.sqrt(3.0)
    grad = jax.grad(lambda w: jnp.sum(spectral_normalize(w, u0, False)[0] * w))(w)
    assert bool(jnp.all(jnp.isfinite(grad)))


# ----------------------------------------------------------------------------- augment
def test_diffaugment_shapes_determinism_and_effect():
    x = jax.random.uniform(jax.random.key(0), (6, 16, 16, 3), minval=-1, maxval=1)
    aug = jax.jit(
        lambda x, k: {
            "all": diff_augment(x, k, ("color", "translation", "cutout")),
            "translation": diff_augment(x, k, ("translation",)),
            "cutout": diff_augment(x, k, ("cutout",)),
            "none": diff_augment(x, k, ()),
        }
    )
    a = aug(x, jax.random.key(1))
    b = aug(x, jax.random.key(1))
    c = aug(x, jax.random.key(2))
    for name in a:
        assert a[name].shape == x.shape
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(a["none"], x)
    assert not np.allclose(a["all"], c["all"])
    # translation: zero-filled shifts; most images actually move
    moved = [not np.allclose(a["translation"][i], x[i]) for i in range(6)]
    assert sum(moved) >= 3
    # cutout: a block of (exact) zeros appears in every image
    zeros = np.sum(np.asarray(a["cutout"]) == 0.0, axis=(1, 2, 3))
    assert np.all(zeros >= 3 * 4 * 4)  # at least a quarter of the 8x8 square, 3 channels


# ----------------------------------------------------------------------------- sampler
def test_balanced_sampler_uniform_and_restartable():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    gen = class_balanced_indices(labels, 64, seed=7)
    idx = np.concatenate(list(itertools.islice(gen, 300)))
    freq = np.bincount(labels[idx], minlength=3) / idx.size
    np.testing.assert_allclose(freq, 1 / 3, atol=0.02)
    first = list(itertools.islice(class_balanced_indices(labels, 64, seed=7), 10))
    resumed = list(itertools.islice(class_balanced_indices(labels, 64, seed=7, start_step=6), 4))
    for a, b in zip(first[6:], resumed):
        np.testing.assert_array_equal(a, b)
    other = next(class_balanced_indices(labels, 64, seed=8))
    assert not np.array_equal(other, first[0])


# ----------------------------------------------------------------------------- config
def test_config_from_section():
    cfg = gan_config(16, 1, 3, **TINY)
    assert cfg.g_channels == (16, 8) and 0 < cfg.ema_beta < 1
    assert cfg.ema_half_life_steps == 5.0 and isinstance(cfg.ema_half_life_steps, float)
    assert hash(cfg) == hash(gan_config(16, 1, 3, **TINY))  # a cache key


def test_run_identity_ignores_the_schedule_only():
    tiles, labels = _toy_data()
    fp = data_fingerprint(tiles, labels)
    base = run_identity(gan_config(16, 1, 3, **TINY), "", fp)
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    for patch in ({"steps": 99}, {"log_every": 1}, {"checkpoint_every": 2}):
        assert run_identity(gan_config(16, 1, 3, **{**TINY, **patch}), "", fp) == base, patch
    others = [
        run_identity(gan_config(16, 1, 3, **{**TINY, **patch}), "", fp)
        for patch in ({"lr_d": 1e-4}, {"g_channels": [16, 16]}, {"seed": 4}, {"diffaugment": ["color"]})
    ]
    other_tiles = tiles.copy()
    other_tiles[0, 0, 0, 0] += 0.5
    others += [
        run_identity(gan_config(16, 1, 3, **TINY), "items-v2", fp),
        run_identity(gan_config(16, 1, 3, **TINY), "", data_fingerprint(other_tiles, labels)),
        run_identity(gan_config(16, 1, 3, **TINY), "", data_fingerprint(tiles, labels[::-1])),
    ]
    assert len({base, *others}) == 1 + len(others)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 2K steps straight; run B: K steps, 'crash', then resume to 2K."""
    tiles, labels = _toy_data()
    root = tmp_path_factory.mktemp("gan")
    out = {"tiles": tiles, "labels": labels}
    for name in ("a", "b"):
        d = root / name
        out[name] = dict(root=d / "ckpt", gen=d / "generator", csv=d / "log.csv", png=d / "samples.png")

    def kw(r):
        return dict(checkpoint_root=r["root"], generator_dir=r["gen"], log_csv=r["csv"], samples_png=r["png"])

    out["a"]["result"] = train_gan(tiles, labels, CLASSES, gan_section(**TINY, steps=2 * K), **kw(out["a"]))
    first = train_gan(tiles, labels, CLASSES, gan_section(**TINY, steps=K), **kw(out["b"]))
    # a row logged after the checkpoint, then killed (the live log beside the checkpoints)
    with open(f"{first['checkpoint_dir']}/train_log.csv", "a") as f:
        f.write(f"{K + 1},9,9,9,9,1,999\n")
    out["b"]["result"] = train_gan(tiles, labels, CLASSES, gan_section(**TINY, steps=2 * K), **kw(out["b"]))
    for name in ("a", "b"):
        out[name]["ckpt"] = out[name]["result"]["checkpoint_dir"]
    out["first_b"] = first
    out["kw"] = kw
    return out


def test_training_writes_log_and_outputs(runs):
    a = runs["a"]
    header, rows = _rows(a["csv"])
    assert tuple(header) == CSV_HEADER
    assert [int(r[0]) for r in rows] == [4, 8, 12]
    assert all(np.isfinite(float(v)) for r in rows for v in r)
    res = a["result"]
    assert res["steps_done"] == 2 * K and res["steps_per_s"] > 0 and np.isfinite(res["d_loss"])
    assert a["png"].stat().st_size > 0
    assert (a["gen"] / "generator.json").exists() and (a["gen"] / "state").is_dir()
    assert not list(a["gen"].parent.glob(".generator.*"))  # no leftover temp folders
    # the run's folder: named by its identity, under the root
    cfg = gan_config(16, 1, 3, **TINY, steps=2 * K)
    ident = run_identity(cfg, "", data_fingerprint(runs["tiles"], runs["labels"]))
    assert res["checkpoint_dir"] == str((a["root"] / ident).resolve())
    assert runs["first_b"]["checkpoint_dir"] == runs["b"]["ckpt"]  # steps K and 2K: one run


def test_resume_is_exact(runs):
    cfg = gan_config(16, 1, 3, **TINY, steps=2 * K)
    step_a, state_a = load_checkpoint(runs["a"]["ckpt"], cfg)
    step_b, state_b = load_checkpoint(runs["b"]["ckpt"], cfg)
    assert step_a == step_b == 2 * K
    for name in ("g", "d", "ema", "opt_g", "opt_d"):
        for x, y in zip(jax.tree.leaves(state_a[name]), jax.tree.leaves(state_b[name])):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    _, rows = _rows(runs["b"]["csv"])
    steps = [int(r[0]) for r in rows]
    assert steps == [4, K, 8, 12]  # the stale row K+1 was dropped; no duplicates, no gaps
    ga, gb = load_generator(runs["a"]["gen"]), load_generator(runs["b"]["gen"])
    np.testing.assert_allclose(sample_tiles(ga, 2, np.arange(4)), sample_tiles(gb, 2, np.arange(4)), atol=1e-6)


def test_sample_tiles_deterministic_and_batch_independent(runs):
    gen = load_generator(runs["a"]["gen"])
    assert gen.class_names == CLASSES and gen.tile_size == 16 and gen.channels == 1
    assert gen.step == 2 * K
    seeds = np.array([11, 3, 7, 2024, 5])
    big = sample_tiles(gen, 1, seeds, batch_size=256)
    small = sample_tiles(gen, 1, seeds, batch_size=2)
    shuffled = sample_tiles(gen, 1, seeds[::-1], batch_size=3)[::-1]
    assert big.shape == (5, 16, 16, 1) and big.dtype == np.float32
    assert big.min() >= 0.0 and big.max() <= 1.0
    np.testing.assert_allclose(big, small, atol=1e-5)
    np.testing.assert_allclose(big, shuffled, atol=1e-5)
    z = jax.random.normal(jax.random.key(int(seeds[3])), (gen.z_dim,))[None]
    one = eval_forward(gen.graphdef, gen.params, gen.batch_stats, z, jnp.array([1]))
    np.testing.assert_allclose(big[3], np.asarray(one[0]), atol=1e-5)
    assert not np.allclose(big[0], sample_tiles(gen, 2, seeds[:1])[0])  # class matters
    with pytest.raises(BioaugError, match="class index"):
        sample_tiles(gen, 3, seeds)


def test_finished_run_only_rewrites_outputs(runs):
    a = runs["a"]
    before = a["csv"].read_text()
    a["png"].unlink()
    res = train_gan(runs["tiles"], runs["labels"], CLASSES, gan_section(**TINY, steps=2 * K), **runs["kw"](a))
    assert res["steps_done"] == 2 * K and a["png"].exists()
    assert a["csv"].read_text() == before


def test_raising_steps_resumes_and_continues_the_log(runs, tmp_path, caplog):
    """A run trained to 2K steps, called again with 3K: it resumes at 2K (a copy of run A)."""
    a = runs["a"]
    r = dict(root=tmp_path / "ckpt", gen=tmp_path / "gen", csv=tmp_path / "log.csv", png=tmp_path / "s.png")
    run_dir = r["root"] / Path(a["ckpt"]).name
    shutil.copytree(a["ckpt"], run_dir)
    with caplog.at_level(logging.INFO, logger="bioaug.gan"):
        res = train_gan(runs["tiles"], runs["labels"], CLASSES, gan_section(**TINY, steps=3 * K), **runs["kw"](r))
    assert res["checkpoint_dir"] == str(run_dir.resolve()) and res["steps_done"] == 3 * K
    assert f"resumed GAN training from {run_dir.resolve()} at step {2 * K}" in caplog.text
    header, rows = _rows(r["csv"])
    assert tuple(header) == CSV_HEADER
    _, rows_a = _rows(a["csv"])
    assert [int(row[0]) for row in rows] == [4, 8, 12, 16, 18]
    assert rows[:3] == rows_a  # the rows before the resume, unchanged
    assert load_generator(r["gen"]).step == 3 * K


def test_lowering_steps_trains_a_shorter_run_and_keeps_the_longer_one(runs, tmp_path, caplog):
    """A run trained to 2K steps, called again with K: a fresh K-step run beside it."""
    a = runs["a"]
    r = dict(root=tmp_path / "ckpt", gen=tmp_path / "gen", csv=tmp_path / "log.csv", png=tmp_path / "s.png")
    run_dir = r["root"] / Path(a["ckpt"]).name
    shutil.copytree(a["ckpt"], run_dir)
    with caplog.at_level(logging.INFO, logger="bioaug.gan"):
        res = train_gan(runs["tiles"], runs["labels"], CLASSES, gan_section(**TINY, steps=K), **runs["kw"](r))
    assert res["checkpoint_dir"] == f"{run_dir.resolve()}-steps{K}" and res["steps_done"] == K
    assert "resumed GAN training" not in caplog.text and load_generator(r["gen"]).step == K
    _, rows = _rows(r["csv"])
    _, rows_a = _rows(a["csv"])
    assert rows[0][:7] == rows_a[0][:7]  # the same first logged losses as the long run (deterministic)
    assert max(int(p.name) for p in run_dir.iterdir() if p.name.isdigit()) == 2 * K  # the long run is kept


def test_nonfinite_loss_raises_and_keeps_last_checkpoint(runs, tmp_path):
    b = runs["b"]
    huge = dict(TINY, steps=4 * K, lr_g=1e30, lr_d=1e30)
    # other learning rates are another run: start it from b's checkpoint (step 2K)
    ident = run_identity(gan_config(16, 1, 3, **huge), "", data_fingerprint(runs["tiles"], runs["labels"]))
    run_dir = tmp_path / "ckpt" / ident
    shutil.copytree(b["ckpt"], run_dir)
    r = dict(root=tmp_path / "ckpt", gen=tmp_path / "gen", csv=tmp_path / "log.csv", png=tmp_path / "s.png")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step (\d+)") as info:
        train_gan(runs["tiles"], runs["labels"], CLASSES, gan_section(**huge), **runs["kw"](r))
    bad = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert 2 * K < bad <= 2 * K + TINY["log_every"]
    cfg = gan_config(16, 1, 3, **huge)
    step, state = load_checkpoint(run_dir, cfg)
    assert step == 2 * K
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state["g"]))
