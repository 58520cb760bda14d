"""Tests of the GAN's optional features and their building blocks (tiny networks, ~20 s).

Derived config values (ADA speed), the equivalence of the fast convolution forms with
plain convolutions, adaptive DiffAugment, R1, LeCam, bfloat16 compute, the memory-mapped
tile sources and the background batch loader.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bioaug.gan import devices as D
from bioaug.gan import load_generator, sample_tiles, train_gan
from bioaug.gan import state as ST
from bioaug.gan import step as S
from bioaug.gan.augment import diff_augment, random_dihedral
from bioaug.gan.input_pipeline import ArrayTiles, BatchLoader, ShardedTiles, class_balanced_indices, gather_batch
from bioaug.gan.ops import conv2d, upsample2x, upsample_conv3x3
from bioaug.gan.train import _with_feature_net
from gan_reference import gan_config, gan_section

TINY = dict(batch_size=8, z_dim=16, g_channels=[16, 8], d_channels=[8, 16], seed=3, log_every=2, checkpoint_every=4)


def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0] * (n - 10) + [1] * 7 + [2] * 3)
    return rng.random((n, 16, 16, 1), dtype=np.float32), labels


def train_tiny_gan(tmp_path, steps: int, channels: int = 1, feature_net=None, **overrides):
    """train_gan on `_data()` (its channel repeated to `channels`) with TINY and `overrides`;
    (the result, the exported generator loaded back)."""
    tiles, labels = _data()
    tiles = np.concatenate([tiles] * channels, axis=-1)
    res = train_gan(
        tiles, labels, ["a", "b", "c"], gan_section(**{**TINY, "steps": steps, **overrides}),
        checkpoint_root=tmp_path / "ck", generator_dir=tmp_path / "gen", log_csv=tmp_path / "log.csv",
        samples_png=tmp_path / "s.png", feature_net=feature_net,
    )  # fmt: skip
    return res, load_generator(tmp_path / "gen")


def _steps(cfg_dict, n, data=None, hyper=None):
    """Run n train steps directly; return the state and the per-step metric rows. `hyper`:
    runtime hyperparameters to override (the same compiled step)."""
    tiles, labels = data or _data()
    cfg = gan_config(16, 1, 3, **{**TINY, **cfg_dict})
    mesh = D.make_mesh()
    rep, bat = D.shardings(mesh)
    _, _, state = ST.init_train_state(cfg, mesh)
    step = S.cached_train_step(cfg, (0, 1, 2), mesh)
    hyper = jax.device_put(S.step_hyperparams(dataclasses.replace(cfg, **(hyper or {}))), rep)
    rows = []
    for idx in itertools.islice(class_balanced_indices(labels, cfg.batch_size, cfg.seed), n):
        before = np.asarray(state["metrics"]).copy()
        x, y = jax.device_put(tiles[idx], bat), jax.device_put(labels[idx].astype(np.int32), bat)
        state = step(state, x, y, hyper, S.r1_due(cfg, len(rows) + 1))
        rows.append(np.asarray(state["metrics"]) - before)
    return cfg, state, np.array(rows)


# ----------------------------------------------------------------------------- config
def test_ada_speed():
    cfg = gan_config(32, 1, 2)
    # a short run: p can cross [0, 1] in a tenth of its images; a long one: in 500k images
    assert cfg.ada_images == pytest.approx(0.1 * cfg.steps * cfg.batch_size)
    long = gan_config(32, 1, 2, steps=10**7)
    assert long.ada_images == 500_000
    fixed = gan_config(32, 1, 2, ada_kimg=2, batch_size=16, ada_interval=4)
    assert fixed.ada_adjust == pytest.approx(16 * 4 / 2000)
    assert gan_config(32, 1, 2, ada_kimg=None).ada_kimg is None


# ----------------------------------------------------------------------------- conv forms
def _plain_conv(x, w, stride, pad):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _edge_padded_conv(x, w):
    return _plain_conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"), w, 1, 0)


@pytest.mark.parametrize("padding", ["zeros", "edge"])
@pytest.mark.parametrize("cin, cout, size", [(5, 3, 3)])
def test_upsample_conv_matches_upsample_then_conv(cin, cout, size, padding):
    """The fused form equals nearest 2x then a padded 3x3 conv, values and gradients; with
    "edge", the upsampled image is padded with copies of its border pixels."""
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (2, size, size + 1, cin)) + 3.0  # far from 0: a zero frame would show
    w = jax.random.normal(kw, (3, 3, cin, cout))
    if padding == "zeros":
        ref = lambda x, w: _plain_conv(upsample2x(x), w, 1, 1)  # noqa: E731
    else:
        ref = lambda x, w: _edge_padded_conv(upsample2x(x), w)  # noqa: E731
        other = _plain_conv(upsample2x(x), w, 1, 1)
        assert float(jnp.abs(ref(x, w) - other)[:, 0].min()) > 1e-3  # the two paddings differ on every edge pixel
    fast = jax.jit(lambda x, w: upsample_conv3x3(x, w, padding=padding))
    np.testing.assert_allclose(fast(x, w), ref(x, w), rtol=1e-4, atol=1e-4)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    g_ref = jax.grad(loss(ref), argnums=(0, 1))(x, w)
    g_fast = jax.jit(jax.grad(loss(lambda x, w: upsample_conv3x3(x, w, padding=padding)), argnums=(0, 1)))(x, w)
    for a, b in zip(g_fast, g_ref):  # float32 sums of |x| ~ 3 in another order
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_strided_conv_custom_gradient_matches_lax():
    from bioaug.gan.ops import conv4x4_s2

    kx, kw = jax.random.split(jax.random.key(2))
    x = jax.random.normal(kx, (2, 6, 8, 3))
    w = jax.random.normal(kw, (4, 4, 3, 5))
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
    got = jax.jit(jax.grad(loss(conv4x4_s2), argnums=(0, 1)))(x, w)
    want = jax.grad(loss(lambda x, w: _plain_conv(x, w, 2, 1)), argnums=(0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin, k, stride, pad", [(3, 3, 1, 1), (8, 4, 2, 1)])
def test_conv2d_matches_lax_conv(cin, k, stride, pad):
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 8, 8, cin))
    w = jax.random.normal(kw, (k, k, cin, 6))
    np.testing.assert_allclose(conv2d(x, w, stride, pad), _plain_conv(x, w, stride, pad), rtol=1e-4, atol=1e-4)
    out = conv2d(x, w, stride, pad, jnp.bfloat16)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _plain_conv(x, w, stride, pad), rtol=0.05, atol=0.15)


# ----------------------------------------------------------------------------- ADA
def test_random_dihedral_draws_each_of_the_8_symmetries_alike():
    img = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)  # no symmetry of its own
    group = {np.rot90(f, k).tobytes() for f in (img[0, ..., 0], img[0, ::-1, :, 0]) for k in range(4)}
    out = np.asarray(random_dihedral(jnp.repeat(jnp.asarray(img), 8000, 0), jax.random.key(1)))[..., 0]
    seen, counts = np.unique(out.reshape(8000, -1), axis=0, return_counts=True)
    assert {np.ascontiguousarray(r.reshape(3, 3)).tobytes() for r in seen} == group
    assert counts.min() > 8000 / 8 * 0.85 and counts.max() < 8000 / 8 * 1.15
    with pytest.raises(ValueError, match="square"):
        random_dihedral(jnp.zeros((2, 4, 3, 1)), jax.random.key(0))


def test_real_symmetry_acts_on_the_real_tiles_only():
    """With tiles that are their own rotations the dihedral option changes nothing (its draws
    come from their own key, so D, G and the fakes see exactly what they saw without it);
    with asymmetric tiles it does change the step."""
    tiles, labels = _data()
    # the max over the 8 symmetries of each tile is exactly invariant under all of them
    sym = np.max([np.rot90(f, k, axes=(1, 2)) for f in (tiles, tiles[:, ::-1]) for k in range(4)], axis=0)
    assert np.array_equal(sym, np.rot90(sym, 1, axes=(1, 2))) and np.array_equal(sym, sym[:, ::-1])
    rows = {k: _steps({"real_symmetry": k}, 3, (sym, labels))[2] for k in ("none", "dihedral")}
    np.testing.assert_array_equal(rows["none"], rows["dihedral"])
    rows = {k: _steps({"real_symmetry": k}, 3, (tiles, labels))[2] for k in ("none", "dihedral")}
    assert not np.allclose(rows["none"][:, 0], rows["dihedral"][:, 0])  # D's loss saw other reals


def test_diffaugment_probability():
    x = jax.random.uniform(jax.random.key(0), (64, 16, 16, 1), minval=-1, maxval=1)
    k = jax.random.key(4)
    policy = ("translation", "cutout")
    f = jax.jit(lambda x, k, p: diff_augment(x, k, policy, p))
    np.testing.assert_array_equal(f(x, k, 0.0), x)
    np.testing.assert_array_equal(f(x, k, 1.0), diff_augment(x, k, policy))
    half = np.asarray(f(x, k, 0.5))
    untouched = np.mean([np.array_equal(half[i], x[i]) for i in range(64)])
    assert 0.1 < untouched < 0.45  # ~ (1 - 0.5)^2 of the images keep both off


# One compiled step with every option on (ADA, lazy R1, LeCam) serves the next tests: the
# strengths are runtime values, so variants with a negligible R1 or LeCam share its code.
ALL_ON = dict(ada=True, augment_p=0.5, ada_interval=2, ada_kimg=0.08, r1_gamma=10.0, r1_interval=2, lecam_weight=1.0)
OFF = 1e-30  # "off" without another compile


@pytest.fixture(scope="module")
def all_on():
    return {
        name: _steps({**ALL_ON, **patch}, 2)
        for name, patch in (("all", {}), ("no_r1", {"r1_gamma": OFF}), ("no_lecam", {"lecam_weight": OFF}))
    }


def test_ada_p_moves_by_its_step(all_on):
    cfg, s, _ = all_on["all"]
    assert cfg.ada_adjust == pytest.approx(0.2)
    assert round(abs(float(s["aug_p"]) - 0.5), 5) == 0.2  # one adjustment, after step 2
    assert float(s["ada_acc"][1]) == 0.0  # the interval's counts were reset


def test_lazy_r1_only_on_its_steps(all_on):
    _, _, m = all_on["all"]
    _, _, no_r1 = all_on["no_r1"]
    r1 = m[:, 4]
    assert r1[0] == 0 and r1[1] > 0  # r1_interval 2: steps 2, 4, ...
    # step 1 has no R1: identical; step 2's D loss adds gamma/2 * interval * penalty
    np.testing.assert_allclose(m[0], no_r1[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m[1, 0], no_r1[1, 0] + 10.0 * r1[1], rtol=1e-4)


def test_lecam_moving_averages_and_loss(all_on):
    _, s, m = all_on["all"]
    _, _, no_lecam = all_on["no_lecam"]
    np.testing.assert_allclose(m[0, 2:4], no_lecam[0, 2:4], rtol=1e-5)  # same D(real), D(fake)
    assert m[0, 0] > no_lecam[0, 0]  # plus the (positive) regulariser
    # the moving averages: 0.99 * 0.99 * 0 + ... after two steps, from zeros
    ema = np.zeros(2)
    for row in m:
        ema = 0.99 * ema + 0.01 * row[2:4]
    np.testing.assert_allclose(np.asarray(s["lecam"]), ema, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- diversity
def test_mode_seeking_term_values():
    from bioaug.gan.losses import MODE_SEEKING_EPS, mode_seeking

    z = jnp.asarray([[0.0, 0.0], [1.0, 3.0], [2.0, 2.0], [2.0, 0.0]])  # |dz| means 2 and 1
    same = jnp.ones((4, 3, 3, 1))
    assert float(mode_seeking(same, z)) == pytest.approx(1.0 / MODE_SEEKING_EPS)  # collapsed
    x = jnp.concatenate(
        [jnp.zeros((1, 3, 3, 1)), jnp.full((1, 3, 3, 1), 0.6), jnp.zeros((1, 3, 3, 1)), jnp.full((1, 3, 3, 1), 0.3)]
    )
    # mean |dx| over both pairs 0.45, mean |dz| 1.5: 1 / (0.3 + eps)
    assert float(mode_seeking(x, z)) == pytest.approx(1.0 / (0.3 + MODE_SEEKING_EPS), rel=1e-5)
    # further-apart images for the same latents: a smaller term (what G is pushed towards)
    assert float(mode_seeking(2 * x, z)) < float(mode_seeking(x, z))
    # capped at the real diversity: zero, and no push, once the pairs are that far apart
    assert float(mode_seeking(x, z, 0.2)) == 0.0
    assert float(jnp.abs(jax.grad(lambda a: mode_seeking(a, z, 0.2))(x)).max()) == 0.0
    assert float(mode_seeking(x, z, 0.6)) == pytest.approx(
        1 / (0.3 + MODE_SEEKING_EPS) - 1 / (0.6 + MODE_SEEKING_EPS), rel=1e-5
    )


def test_mode_seeking_cap_is_the_real_same_class_distance():
    from bioaug.gan.input_pipeline import same_class_pair_distance
    from bioaug.gan.losses import LATENT_PAIR_DISTANCE

    # class 0: tiles 0 and 1 (distance 1); class 1: 0.2 and 0.4 (0.2); class 2: one tile
    values = np.array([0.0, 1.0, 0.2, 0.4, 0.7], np.float32)
    tiles = np.broadcast_to(values[:, None, None, None], (5, 3, 3, 2)).copy()
    labels = np.array([0, 0, 1, 1, 2])
    assert same_class_pair_distance(tiles, labels, seed=0) == pytest.approx(0.6)
    assert S.mode_seeking_target(tiles, labels, 0) == pytest.approx(1.2 / LATENT_PAIR_DISTANCE)
    assert same_class_pair_distance(tiles[[0, 2, 4]], np.array([0, 1, 2]), seed=0) == 0.0
    # E|a - b| for a, b ~ N(0, 1), the latent side of the ratio
    r = np.random.default_rng(0).standard_normal((2, 200_000))
    assert np.mean(np.abs(r[0] - r[1])) == pytest.approx(LATENT_PAIR_DISTANCE, rel=0.01)


def test_class_batchnorm_is_batchnorm_until_its_class_table_moves():
    from flax import nnx

    from bioaug.gan.networks import BN_EPSILON, BN_MOMENTUM, ClassBatchNorm

    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 3)) * 2.0 + 1.0
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    plain = nnx.BatchNorm(3, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=nnx.Rngs(0))
    cond = ClassBatchNorm(3, 3, True, rngs=nnx.Rngs(0))
    want = plain(x, use_running_average=False)
    np.testing.assert_allclose(cond(x, y, train=True), want, rtol=1e-6, atol=1e-6)
    table = np.zeros((3, 6), np.float32)
    table[1, :3], table[1, 3:] = 1.0, 0.5  # class 1: gain x2, shift +0.5
    cond.class_affine.embedding[...] = jnp.asarray(table)
    got = np.asarray(cond(x, y, train=True))
    np.testing.assert_allclose(got[y != 1], np.asarray(want)[np.asarray(y) != 1], atol=1e-6)
    np.testing.assert_allclose(got[y == 1], 2 * np.asarray(want)[np.asarray(y) == 1] + 0.5, rtol=1e-5, atol=1e-5)
    # without `conditional` it has exactly BatchNorm's parameters (the reference layout)
    flat = ClassBatchNorm(3, 3, False, rngs=nnx.Rngs(0))
    assert jax.tree.structure(nnx.state(flat, nnx.Param)) == jax.tree.structure(nnx.state(plain, nnx.Param))


@pytest.fixture(scope="module")
def feature_nets():
    """Feature networks of `_data()`'s classes: two of 2 channels (init seeds 0 and 1, as
    options_run's tiles) and one of 1. Untrained: the feature head works on any frozen network,
    and training one costs a compile."""
    from flax import nnx

    from bioaug.classifier.train import TrainedClassifier, _init_model

    def net(channels, seed):
        model = _init_model(channels, 3, ("small_cnn", (8, 16)), "float32", jax.random.key(seed))
        model.eval()
        graphdef, state = nnx.split(model)
        return TrainedClassifier(graphdef=graphdef, state=state, class_names=["a", "b", "c"], best_epoch=0)

    return net(2, 0), net(2, 1), net(1, 0)


# Options that combine: one tiny training run serves the tests of all of them (a train_gan
# costs a compile of its own; several of them, tens of seconds of the suite).
OPTIONS_RUN = {
    "conditional_bn": True,
    "mode_seeking_weight": 1.0,
    "feature_discriminator": True,
    "noise_inputs": True,
    "tanh_scale": 1.25,
}


@pytest.fixture(scope="module")
def options_run(tmp_path_factory, feature_nets):
    """One 4-step train_gan on 2-channel tiles with every option of OPTIONS_RUN (the feature
    discriminator on feature_nets[0]): (result, exported generator, the run's GanConfig)."""
    path = tmp_path_factory.mktemp("options")
    res, gen = train_tiny_gan(path, 4, channels=2, feature_net=feature_nets[0], **OPTIONS_RUN)
    cfg = dataclasses.replace(gan_config(16, 2, 3, **TINY, **{**OPTIONS_RUN, "steps": 4}), feature_dim=16)
    return res, gen, cfg


def test_conditional_bn_and_mode_seeking_train_and_sample(options_run):
    res, gen, cfg = options_run
    assert res["steps_done"] == 4 and np.isfinite(res["g_loss"])
    assert gen.meta["conditional_bn"] is True
    a, b = sample_tiles(gen, 0, np.arange(6)), sample_tiles(gen, 1, np.arange(6))
    np.testing.assert_array_equal(a, sample_tiles(gen, 0, np.arange(6)))  # deterministic
    assert a.shape == (6, 16, 16, 2) and not np.array_equal(a, b)
    # the per-class tables were trained (they start at zero)
    _, state = ST.load_checkpoint(res["checkpoint_dir"], cfg)
    assert float(np.abs(np.asarray(state["g"]["params"]["bn0"]["class_affine"]["embedding"])).max()) > 0
    # the mode-seeking term (>= 0) is part of G's logged loss
    # (its weight is a runtime hyperparameter: one compiled step, the weight 1 or 0)
    _, _, plain = _steps({"conditional_bn": True, "mode_seeking_weight": 1.0}, 1, hyper={"mode_seeking_weight": 0.0})
    _, _, with_ms = _steps({"conditional_bn": True, "mode_seeking_weight": 1.0}, 1)
    assert with_ms[0, 1] > plain[0, 1]


def test_conditional_transition_starts_unconditional_and_ends_conditional():
    """gan.conditional_transition [start, end]: at cond 0 neither G nor D sees the class, and
    training leaves every class table as it was; from `end` on, G and D are the conditional
    networks of a run without it."""
    from bioaug.gan.networks import build_networks

    steps = np.asarray(S.conditioning(np.array([1.0, 2, 3, 4, 5, 9]), 2.0, 4.0))
    np.testing.assert_allclose(steps, [0, 0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(np.asarray(S.conditioning(np.array([1.0, 2, 100]), 0.0, 0.0)), 1.0)  # off

    cfg = gan_config(16, 1, 3, **{**TINY, "conditional_bn": True})
    g, d = build_networks(cfg, jax.random.key(0))
    for bn in (g.bn0, *(b.bn for b in g.blocks)):  # class tables as after training (they start at 0)
        bn.class_affine.embedding[...] = jax.random.normal(jax.random.key(1), bn.class_affine.embedding.shape)
    z = jax.random.normal(jax.random.key(2), (6, cfg.z_dim))
    ya, yb = jnp.asarray([0, 1, 2, 0, 1, 2]), jnp.asarray([2, 2, 1, 1, 0, 0])
    for cond in (0.0, 1.0):
        same_g = np.array_equal(g(z, ya, train=True, cond=cond), g(z, yb, train=True, cond=cond))
        x = g(z, ya, train=False)
        same_d = np.array_equal(d(x, ya, update_sn=False, cond=cond), d(x, yb, update_sn=False, cond=cond))
        assert same_g == same_d == (cond == 0.0), cond
    np.testing.assert_array_equal(g(z, ya, train=False, cond=1.0), g(z, ya, train=False))  # sampling: 1

    def class_tables(state):  # every parameter indexed by the class: embeddings, conditional BN
        leaves = jax.tree_util.tree_flatten_with_path({"g": state["g"]["params"], "d": state["d"]["params"]})[0]
        names = {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}
        return {k: v for k, v in names.items() if "['embed']" in k or "class_affine" in k}

    transition = {"conditional_bn": True, "conditional_transition": [2, 4]}
    _, _, init = ST.init_train_state(gan_config(16, 1, 3, **{**TINY, **transition}), D.make_mesh())
    before = class_tables(init)
    _, two, m2 = _steps(transition, 2)  # steps 1 and 2: cond 0
    _, three, _ = _steps(transition, 3)  # step 3: cond 0.5
    _, plain, m_plain = _steps({"conditional_bn": True}, 2)
    assert np.isfinite(m2).all() and len(before) == 5
    for name, table in class_tables(two).items():
        np.testing.assert_array_equal(table, before[name], err_msg=name)
    for name, table in class_tables(three).items():
        assert not np.array_equal(table, before[name]), name
    assert not np.allclose(m2[:, 0], m_plain[:, 0])  # the conditional run's D loss differs


def test_linear_output_is_the_same_network_without_its_tanh(tmp_path):
    """g_output: linear drops only the last tanh (same parameters from the same key); its raw
    output leaves [-1, 1], the exported generator samples within [0, 1] and remembers it."""
    from flax import nnx

    from bioaug.gan.networks import build_networks

    key = jax.random.key(0)
    g_tanh, _ = build_networks(gan_config(16, 1, 3, **TINY), key)
    g_lin, _ = build_networks(gan_config(16, 1, 3, **TINY, g_output="linear"), key)
    z, y = jax.random.normal(jax.random.key(1), (8, TINY["z_dim"])), jnp.arange(8) % 3
    raw = g_lin(z, y, train=False)
    np.testing.assert_allclose(np.tanh(np.asarray(raw)), np.asarray(g_tanh(z, y, train=False)), atol=1e-6)
    with pytest.raises(ValueError, match="output"):
        build_networks(gan_config(16, 1, 3, **TINY, g_output="sigmoid"), key)
    # trained a few steps with the raw output too wide for the data: samples are clipped
    g_lin.out.bias[...] = jnp.full_like(g_lin.out.bias[...], 3.0)
    assert float(g_lin(z, y, train=False).max()) > 1.0
    assert nnx.graphdef(g_lin) != nnx.graphdef(g_tanh)
    res, gen = train_tiny_gan(tmp_path, steps=4, g_output="linear")
    assert res["steps_done"] == 4 and np.isfinite(res["g_loss"])
    assert gen.meta["g_output"] == "linear" and gen.meta["noise_variance"] is None  # pixel_noise: none
    x = sample_tiles(gen, 0, np.arange(64))
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0


def test_tanh_scale_stretches_the_output_and_samples_stay_in_the_data_range(options_run):
    """gan.tanh_scale s: G's output is s * tanh (same parameters from the same key), so it can
    pass the data's -1 and 1; the exported generator remembers s and samples within [0, 1]."""
    from flax import nnx

    from bioaug.gan.networks import build_networks

    key = jax.random.key(0)
    g_one, _ = build_networks(gan_config(16, 1, 3, **TINY), key)
    g_wide, _ = build_networks(gan_config(16, 1, 3, **TINY, tanh_scale=1.25), key)
    z, y = jax.random.normal(jax.random.key(1), (8, TINY["z_dim"])), jnp.arange(8) % 3
    np.testing.assert_allclose(g_wide(z, y, train=False), 1.25 * g_one(z, y, train=False), rtol=1e-6, atol=1e-6)
    g_wide.out.bias[...] = jnp.full_like(g_wide.out.bias[...], 3.0)  # pushed to the top: past 1
    assert 1.0 < float(g_wide(z, y, train=False).max()) < 1.25
    res, gen, _ = options_run
    assert res["steps_done"] == 4 and np.isfinite(res["g_loss"])
    assert gen.meta["tanh_scale"] == 1.25
    assert nnx.merge(gen.graphdef, gen.params, gen.batch_stats).tanh_scale == 1.25
    x = sample_tiles(gen, 0, np.arange(64))
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.std() > 0


def test_noise_inputs_start_silent_are_per_pixel_and_a_function_of_z(options_run):
    """noise_inputs: the strengths start at zero (the same images as without them, same
    weights otherwise); with strengths set, each sample gets its own per-pixel noise, drawn
    from its z (the same z: the same image, in train and eval mode; another z: other noise);
    training moves the strengths, and the exported generator samples with them."""
    from flax import nnx

    from bioaug.gan.networks import build_networks

    key = jax.random.key(0)
    g_plain, _ = build_networks(gan_config(16, 2, 3, **TINY), key)
    g_noise, _ = build_networks(gan_config(16, 2, 3, **TINY, noise_inputs=True), key)
    z, y = jax.random.normal(jax.random.key(1), (8, TINY["z_dim"])), jnp.arange(8) % 3
    np.testing.assert_allclose(np.asarray(g_noise(z, y, train=False)), np.asarray(g_plain(z, y, train=False)),
                               atol=1e-6)  # fmt: skip
    g_noise.out_noise_strength[...] = jnp.full((2,), 0.5)
    for block in g_noise.blocks:
        block.noise_strength[...] = jnp.full(block.noise_strength[...].shape, 0.3)
    a, b = np.asarray(g_noise(z, y, train=False)), np.asarray(g_noise(z, y, train=False))
    np.testing.assert_array_equal(a, b)  # deterministic in (z, y)
    diff = a - np.asarray(g_plain(z, y, train=False))
    assert np.abs(diff).mean() > 0.05
    # high-frequency: neighbouring pixels' differences are nearly uncorrelated with each other
    d = diff[..., 0].reshape(8, -1)
    assert abs(np.corrcoef(diff[:, :, 1:, 0].ravel(), diff[:, :, :-1, 0].ravel())[0, 1]) < 0.6
    assert not np.allclose(d[0], d[1])  # each sample its own noise
    # the same z in another batch (other neighbours): the same image
    z2 = jnp.concatenate([z[:1], jax.random.normal(jax.random.key(2), (3, TINY["z_dim"]))])
    np.testing.assert_allclose(np.asarray(g_noise(z2, y[:4], train=False))[0], a[0], atol=1e-6)
    n_plain = sum(p.size for p in jax.tree.leaves(nnx.state(g_plain, nnx.Param)))
    n_noise = sum(p.size for p in jax.tree.leaves(nnx.state(g_noise, nnx.Param)))
    assert n_noise - n_plain == sum(TINY["g_channels"]) + 2
    res, gen, _ = options_run
    assert res["steps_done"] == 4 and np.isfinite(res["g_loss"])
    assert gen.meta["noise_inputs"] is True
    strengths = np.asarray(gen.params["out_noise_strength"])
    assert strengths.shape == (2,) and np.abs(strengths).max() > 0  # trained away from zero
    x = sample_tiles(gen, 0, np.arange(16))
    np.testing.assert_array_equal(x, sample_tiles(gen, 0, np.arange(16)))
    assert x.min() >= 0.0 and x.max() <= 1.0


# ----------------------------------------------------------------------------- input
def test_sharded_tiles_and_loader(tmp_path):
    rng = np.random.default_rng(0)
    parts, rows, arrays = [], [], []
    for i, n in enumerate((7, 12, 5)):
        a = rng.random((n, 4, 4, 2), dtype=np.float32)
        np.save(tmp_path / f"s{i}.npy", a)
        arrays.append(a)
        rows.append(np.sort(rng.choice(n, size=n // 2 + 1, replace=False)))
        parts.append(tmp_path / f"s{i}.npy")
    src = ShardedTiles.from_npys(parts, rows)
    full = np.concatenate([a[r] for a, r in zip(arrays, rows)])
    assert src.shape == full.shape and len(src) == len(full)
    idx = rng.integers(0, len(full), 40)
    np.testing.assert_array_equal(src.gather(idx), full[idx])
    mm = ArrayTiles(np.load(parts[1], mmap_mode="r"))
    assert not mm.in_memory
    np.testing.assert_array_equal(mm.gather(np.array([3, 1, 3])), arrays[1][[3, 1, 3]])

    labels = rng.integers(0, 3, len(full))
    want = [
        gather_batch(full, labels, i) for i in itertools.islice(class_balanced_indices(labels, 6, 9, start_step=4), 5)
    ]
    with BatchLoader(src, labels, 6, 9, start_step=4, prefetch=2) as loader:
        got = [next(loader) for _ in range(5)]
    for (xa, ya), (xb, yb) in zip(want, got):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)

    bad = full.copy()
    bad[:] = np.nan
    with BatchLoader(bad, labels, 6, 9, check_finite=True) as loader:
        with pytest.raises(FloatingPointError):
            next(loader)


def test_train_gan_from_memory_mapped_shards(tmp_path):
    """train_gan on memory-mapped shards takes the steps the in-memory path takes."""
    tiles, labels = _data()
    np.save(tmp_path / "a.npy", tiles[:13])
    np.save(tmp_path / "b.npy", tiles[13:])
    src = ShardedTiles.from_npys([tmp_path / "a.npy", tmp_path / "b.npy"])
    cfg = {**TINY, "steps": 4}
    res = train_gan(
        src,
        labels,
        ["a", "b", "c"],
        gan_section(**cfg),
        checkpoint_root=tmp_path / "ck",
        generator_dir=tmp_path / "gen",
        log_csv=tmp_path / "log.csv",
        samples_png=tmp_path / "s.png",
    )
    assert res["steps_done"] == 4 and (tmp_path / "gen" / "generator.json").exists()
    _, state = ST.load_checkpoint(res["checkpoint_dir"], gan_config(16, 1, 3, **cfg))
    _, in_memory, _ = _steps({"steps": 4}, 4, (tiles, labels))  # the same 4 batches
    for a, b in zip(jax.tree.leaves(state["g"]), jax.tree.leaves(in_memory["g"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert float(state["aug_p"]) == 1.0  # without ADA: every image augmented
    # the same data, held either way, has the same fingerprint (resume does not warn)
    assert ST.data_fingerprint(ArrayTiles(tiles), labels) == ST.data_fingerprint(src, labels)


def test_sharded_tiles_match_load_tiles(tmp_path):
    import pandas as pd

    from bioaug.formats.shards import load_tiles
    from bioaug.gan.input_pipeline import sharded_tiles
    from helpers import write_shard

    rng = np.random.default_rng(2)
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(12)],
            "label": list("abcab" * 2 + "cc"),
            "split": ["train", "val", "train", "train"] * 3,
        }
    )
    shards = []
    for s, ids in enumerate((range(0, 7), range(7, 12))):
        meta = pd.DataFrame(
            {
                "tile_id": [f"t{k}" for k in ids],
                "item_id": [f"i{k}" for k in ids],
                "label": items["label"].iloc[list(ids)].tolist(),
                "image": ["img"] * len(ids),
            }
        )
        npy = tmp_path / f"shard{s}.npy"
        write_shard(
            npy,
            rng.random((len(ids), 4, 4, 1), dtype=np.float32),
            meta,
            pd.DataFrame(columns=["image", "channel", "low", "high"]),
        )
        shards.append(npy)
    x, y, rows = load_tiles(shards, items)
    src, y2, rows2 = sharded_tiles(shards, items)
    np.testing.assert_array_equal(src.gather(np.arange(len(src))), x)
    np.testing.assert_array_equal(y2, y)
    pd.testing.assert_frame_equal(rows2, rows)


# ----------------------------------------------------------------------------- runtime
def test_configure_jax_respects_user_xla_flags():
    code = (
        "import os, jax\nfrom bioaug.runtime import configure_jax, XLA_CPU_FLAGS\n"
        "configure_jax()\nprint(repr(os.environ.get('XLA_FLAGS')), repr(XLA_CPU_FLAGS))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    unset = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert unset.returncode == 0, unset.stderr
    flags, expected = unset.stdout.strip().split(" ", 1)
    expected = eval(expected)  # noqa: S307 - a tuple of str we printed
    assert eval(flags) == (" ".join(expected) if expected else None)  # noqa: S307
    env["XLA_FLAGS"] = "--xla_cpu_enable_fast_math=false"
    user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert user.returncode == 0, user.stderr
    assert user.stdout.startswith("'--xla_cpu_enable_fast_math=false'")
    # flags set by configure_jax after `import jax` reach XLA (an unknown one is fatal there)
    probe = (
        "import jax, bioaug.runtime as r\nr.XLA_CPU_FLAGS = ('--xla_no_such_flag_bioaug=1',)\n"
        "r.configure_jax()\nimport jax.numpy as jnp\nprint(jnp.ones(2).sum())\n"
    )
    del env["XLA_FLAGS"]
    dead = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert dead.returncode != 0 and "xla_no_such_flag_bioaug" in dead.stderr


def test_compilation_cache_survives_a_move_and_follows_jax_compilation_cache_dir(tmp_path, monkeypatch):
    """A results/ folder copied elsewhere keeps its compiled programs (on the CPU no cache key
    holds the cache's own path), and JAX_COMPILATION_CACHE_DIR replaces results/.jax-cache."""
    from bioaug.runtime import JAX_CACHE_DIR, jax_cache_dir

    code = (
        "import sys, jax, jax.numpy as jnp\nfrom bioaug.runtime import configure_jax\n"
        "configure_jax(sys.argv[1])\njax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())\nprint(float(f(jnp.ones((8, 8)))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_PLATFORMS"] = "cpu"

    def run_with(cache):
        proc = subprocess.run([sys.executable, "-c", code, str(cache)], capture_output=True, text=True, env=env)
        assert proc.returncode == 0 and float(proc.stdout) == pytest.approx(64 * np.tanh(8.0)), proc.stderr

    first, moved = tmp_path / "a" / ".jax-cache", tmp_path / "b" / ".jax-cache"
    run_with(first)
    shutil.copytree(first, moved)
    run_with(moved)
    entries = sorted(p.name for p in first.iterdir())
    assert entries and any("lambda" in e for e in entries)
    assert sorted(p.name for p in moved.iterdir()) == entries  # every key hit: nothing new written

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert jax_cache_dir() == JAX_CACHE_DIR == Path("results/.jax-cache")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "shared"))
    assert jax_cache_dir() == tmp_path / "shared"


def test_checkpoint_of_an_older_layout_restores(tmp_path):
    """A checkpoint without the ADA / LeCam entries (and a shorter metrics vector) resumes:
    what it has is restored, the rest starts fresh."""
    import orbax.checkpoint as ocp

    cfg = gan_config(16, 1, 3, **TINY)
    _, _, state = ST.init_train_state(cfg)
    old = {k: v for k, v in state.items() if k not in ("aug_p", "ada_acc", "lecam")}
    old["metrics"] = np.zeros(5, np.float32)
    old["step"] = np.int32(7)
    mgr = ocp.CheckpointManager(tmp_path)
    mgr.save(7, args=ocp.args.StandardSave(old))
    mgr.wait_until_finished()
    try:
        restored = ST.restore_train_state(mgr, 7, state, D.make_mesh())
    finally:
        mgr.close()
    assert restored.keys() == state.keys() and int(restored["step"]) == 7
    assert float(restored["aug_p"]) == 1.0 and restored["metrics"].shape == (S.N_METRICS,)
    for a, b in zip(jax.tree.leaves(restored["g"]), jax.tree.leaves(state["g"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_edge_padding_draws_no_frame():
    """gan.g_padding edge: every G conv pads with copies of the border pixels, so a G whose
    4x4 map is spatially constant draws a constant tile, where zero padding draws a frame at
    the tile's edge. (Its export: test_noise_model's training test.)"""
    from bioaug.gan.networks import build_networks

    key = jax.random.key(0)
    z, y = jax.random.normal(jax.random.key(1), (4, TINY["z_dim"])), jnp.arange(4) % 3
    spread = {}
    for padding in ("zeros", "edge"):
        g, _ = build_networks(gan_config(16, 1, 3, **TINY, g_padding=padding), key)
        g.fc.kernel[...] = jnp.zeros_like(g.fc.kernel[...])  # the 4x4 map: the bias alone, the same everywhere
        g.fc.bias[...] = jax.random.normal(jax.random.key(2), g.fc.bias.shape)
        g.fc.bias[...] = jnp.tile(g.fc.bias[...][: TINY["g_channels"][0]], 16)  # one value per channel
        out = np.asarray(g(z, y, train=False))
        spread[padding] = float((out - out[:, 8:9, 8:9]).std())  # against the tile's centre pixel
    assert spread["edge"] < 1e-6 < 1e-3 < spread["zeros"], spread
    with pytest.raises(ValueError, match="padding"):
        build_networks(gan_config(16, 1, 3, **TINY, g_padding="reflect"), key)


# ----------------------------------------------------------------------------- feature discriminator
def test_feature_discriminator_trains_a_second_head_whose_gradient_reaches_g(options_run, feature_nets):
    """gan.feature_discriminator: D gets a head on the frozen feature classifier's features;
    it trains, G's gradient flows through the frozen network, and the run's identity
    includes the network."""
    from flax import nnx

    from bioaug.gan.networks import graphdefs

    # through train_gan (options_run): feature_dim comes from the network; the head trains
    # (its output bias has no hinge gradient while the logits are inside the margin: the
    # weights' gradients are checked); the export samples as usual
    res, gen, cfg = options_run
    assert np.isfinite(res["d_loss"]) and np.isfinite(res["g_loss"])
    meta = json.loads((Path(res["checkpoint_dir"]) / ST.RUN_META).read_text())
    assert meta["config"]["feature_discriminator"] is True and meta["config"]["feature_dim"] == 16
    _, state = ST.load_checkpoint(res["checkpoint_dir"], cfg)
    head_grads = state["opt_d"][0].mu["feature_head"]  # Adam's moving mean of the head's gradients
    for layer in ("fc1", "fc2", "lin"):
        assert np.abs(np.asarray(head_grads[layer]["kernel"])).max() > 0, layer
    assert sample_tiles(gen, 0, np.arange(3)).shape == (3, 16, 16, 2)

    # the trained D: (pixel head, feature head) logits; G's gradient reaches the image through
    # the frozen network (the step's features_of); no features, no logits
    d = nnx.merge(graphdefs(cfg)[1], state["d"]["params"], state["d"]["sn"])
    features_of = S.frozen_features(feature_nets[0])
    x, y = jax.random.uniform(jax.random.key(1), (4, 16, 16, 2), minval=-1.0, maxval=1.0), jnp.arange(4) % 3
    logits, grad = jax.jit(
        lambda x: (
            d(x, y, update_sn=False, features=features_of(x)),
            jax.grad(lambda x: d(x, y, update_sn=False, features=features_of(x))[:, 1].sum())(x),
        )  # fmt: skip
    )(x)
    assert logits.shape == (4, 2) and np.isfinite(np.asarray(grad)).all() and float(jnp.abs(grad).max()) > 0
    with pytest.raises(ValueError, match="features"):
        jax.eval_shape(lambda x: d(x, y, update_sn=False), x)

    # another feature network: another run (its checkpoints are not resumed)
    keys = [_with_feature_net(cfg, n, ["a", "b", "c"], "items", logging.getLogger())[1] for n in feature_nets[:2]]
    assert keys[0] != keys[1] and all(k.startswith("items\nfeature_net:") for k in keys)


def test_feature_discriminator_needs_a_matching_feature_classifier(tmp_path, feature_nets):
    from bioaug.runtime import BioaugError

    tiles, labels = _data()
    section = gan_section(**TINY, steps=2, feature_discriminator=True)
    run = lambda names, net: train_gan(  # noqa: E731
        tiles, labels, names, section, checkpoint_root=tmp_path / "ck", generator_dir=tmp_path / "gen",
        log_csv=tmp_path / "log.csv", samples_png=tmp_path / "s.png", feature_net=net,
    )  # fmt: skip
    with pytest.raises(BioaugError, match="feature_discriminator.*no feature classifier"):
        run(["a", "b", "c"], None)
    with pytest.raises(BioaugError, match=r"classes \['a', 'b', 'c'\].*\['a', 'b', 'x'\]"):
        run(["a", "b", "x"], feature_nets[2])
    with pytest.raises(BioaugError, match="takes 2 channel"):
        run(["a", "b", "c"], feature_nets[0])  # 2 channels, the tiles 1
    assert not (tmp_path / "ck").exists()  # refused before any checkpoint
