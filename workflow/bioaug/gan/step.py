"""The jitted train step: one D update then one G update, data-parallel over a mesh.

Holds the step's runtime hyperparameters (`HYPER`, `step_hyperparams`: a float32 vector,
so changing a learning rate or a regulariser's strength does not recompile), the one Adam
definition (`make_optimizer`, used by the state init and the step), `compile_key` (a
config reduced to what changes the compiled code), `make_train_step` and its cached form
`cached_train_step`, and `r1_due` (whether a step is one of lazy R1's). The step draws
the fakes, augments (DiffAugment, with ADA's probability p steered by sign(D(real))), wires
the objectives of `losses`, updates the EMA generator and p, and accumulates the logged
metrics in the state (the logged g_loss includes the mode-seeking term). With
gan.feature_discriminator, `frozen_features` puts the feature classifier into the program
for D's second head.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from . import losses
from .augment import diff_augment, random_dihedral
from .config import GanConfig
from .devices import shardings
from .input_pipeline import same_class_pair_distance
from .networks import SpectralU, graphdefs

N_METRICS = 6  # sums of d_loss, g_loss, d_real, d_fake, r1 penalty; step count
# Runtime hyperparameters of the jitted step (a float32 vector, so changes don't recompile).
HYPER = (
    "lr_g",
    "lr_d",
    "ema_beta",
    "ada_target",
    "ada_adjust",
    "ada_interval",
    "r1_scale",
    "lecam_weight",
    "mode_seeking_weight",
    "mode_seeking_target",
    "cond_start",
    "cond_end",
)


def make_optimizer(lr, betas) -> optax.GradientTransformation:
    """Adam of G or D. Its state does not depend on `lr`, so the state init builds it with
    the config's rate and the step with the traced one."""
    b1, b2 = betas
    return optax.adam(lr, b1=b1, b2=b2)


def compile_key(cfg: GanConfig) -> GanConfig:
    """cfg without the fields that do not change compiled code (cache key).

    Learning rates, the EMA decay, the ADA settings, the regulariser strengths and the
    conditional transition are step arguments, not compile-time constants, so changing them
    (e.g. on resume) does not recompile; only turning R1 / LeCam on or off does.
    """
    return dataclasses.replace(
        cfg,
        steps=1,
        log_every=1,
        checkpoint_every=1,
        seed=0,
        lr_g=1.0,
        lr_d=1.0,
        ema_half_life_steps=1.0,
        augment_p=0.0,
        ada_target=0.5,
        ada_interval=1,
        ada_kimg=1.0,
        r1_gamma=float(cfg.r1_gamma > 0),
        r1_interval=1,
        lecam_weight=float(cfg.lecam_weight > 0),
        mode_seeking_weight=float(cfg.mode_seeking_weight > 0),
        conditional_transition=None,
    )


def cached_train_step(
    cfg: GanConfig, classes: tuple[int, ...], mesh: jax.sharding.Mesh | None = None, feature_net=None
):
    """`make_train_step` for cfg, shared (not recompiled) by configs of one `compile_key`
    (with gan.feature_discriminator it is built anew: `feature_net`'s weights are constants
    of the program; without, `feature_net` is not used)."""
    key = compile_key(cfg)
    if cfg.feature_discriminator:
        return make_train_step(key, *graphdefs(key), np.asarray(classes), mesh, feature_net)
    return _cached_train_step(key, tuple(int(c) for c in classes), mesh)


@functools.lru_cache(maxsize=8)
def _cached_train_step(cfg: GanConfig, classes: tuple[int, ...], mesh: jax.sharding.Mesh | None = None):
    g_def, d_def = graphdefs(cfg)
    return make_train_step(cfg, g_def, d_def, np.asarray(classes), mesh)


def mode_seeking_target(tiles, labels: np.ndarray, seed: int) -> float:
    """The cap of the mode-seeking term: how far apart two real tiles of one class are
    (mean |x_a - x_b| in the generator's [-1, 1] range) per mean latent distance."""
    return 2.0 * same_class_pair_distance(tiles, labels, seed) / losses.LATENT_PAIR_DISTANCE


def step_hyperparams(cfg: GanConfig, mode_seeking_cap: float = math.inf) -> jax.Array:
    """The runtime hyperparameters of the step, in the order of `HYPER`; `mode_seeking_cap`
    is `mode_seeking_target` of the training tiles (inf: MSGAN's uncapped term)."""
    values = {
        "lr_g": cfg.lr_g,
        "lr_d": cfg.lr_d,
        "ema_beta": cfg.ema_beta,
        "ada_target": cfg.ada_target,
        "ada_adjust": cfg.ada_adjust,
        "ada_interval": cfg.ada_interval,
        "r1_scale": 0.5 * cfg.r1_gamma * cfg.r1_interval,  # lazy R1 (StyleGAN2)
        "lecam_weight": cfg.lecam_weight,
        "mode_seeking_weight": cfg.mode_seeking_weight,
        "mode_seeking_target": mode_seeking_cap,
        # the conditional transition: G and D unconditional up to cond_start, fully
        # conditional from cond_end (off: 0, 0 = conditional from the first step)
        "cond_start": (cfg.conditional_transition or (0, 0))[0],
        "cond_end": (cfg.conditional_transition or (0, 0))[1],
    }
    return jnp.asarray([values[k] for k in HYPER], jnp.float32)


def conditioning(step_no, start, end):
    """How class-conditional G and D are at step `step_no` (1-based) of a conditional
    transition over steps [start, end]: 0 up to start, rising linearly to 1 at end (0, 0: 1
    from the first step)."""
    return jnp.clip((step_no - start) / jnp.maximum(end - start, 1.0), 0.0, 1.0)


def r1_due(cfg: GanConfig, step_no: int) -> bool:
    """Whether step `step_no` (1-based) is one of lazy R1's: every r1_interval-th step."""
    return cfg.r1_gamma > 0 and step_no % cfg.r1_interval == 0


def frozen_features(feature_net):
    """x (images in [-1, 1]) -> the features of (x + 1) / 2 by `feature_net` (a
    `classifier.TrainedClassifier`, in eval mode): differentiable in x, so G's gradient flows
    through it; its weights are constants, never trained here."""
    graphdef, weights = feature_net.graphdef, feature_net.state

    def features_of(x):
        return nnx.merge(graphdef, weights, copy=True).features((x + 1.0) * 0.5)

    return features_of


def make_train_step(
    cfg: GanConfig, g_def, d_def, classes: np.ndarray, mesh: jax.sharding.Mesh | None = None, feature_net=None
):
    """The jitted step: (state, real x in [0, 1], real y, hyper, r1_now) -> state; `state` is
    donated.

    With `cfg.feature_discriminator`, `feature_net` (a `classifier.TrainedClassifier`, the
    real-trained feature classifier) is frozen into the program: D's feature head judges its
    features of the images D sees (mapped back to [0, 1]), and G's gradient flows through it.

    `hyper` is `step_hyperparams(cfg)`. `r1_now` (a static bool, `r1_due(cfg, step)`) picks
    one of two compiled programs, the D update with or without the R1 penalty, on the host as
    StyleGAN2 does: as one program with a `lax.cond` between the two gradients, XLA:CPU ran
    every step 15x slower (6.2 s against 0.42 s; R1 on every step without the cond: 0.54 s).

    `classes` are the labels present in the training set; fake labels are drawn uniformly
    from them (the real batches are class-balanced too).

    With a mesh (`make_mesh`), the step is data-parallel: the state is replicated, the real
    batch and the fake batches are split over the mesh's "data" axis, and XLA inserts the
    all-reduces of the gradients and of the BatchNorm statistics (which stay those of the
    whole batch). The same code runs on 1 CPU, 1 GPU or several devices.
    """
    policy = tuple(cfg.diffaugment)
    ada = bool(cfg.ada) and bool(policy)
    use_r1, use_lecam = cfg.r1_gamma > 0, cfg.lecam_weight > 0
    use_ms = cfg.mode_seeking_weight > 0
    dihedral = cfg.real_symmetry == "dihedral"
    classes = jnp.asarray(classes, jnp.int32)
    z_dim, kind = cfg.z_dim, cfg.loss
    if mesh is not None:
        replicated, batched = shardings(mesh)
        shard = lambda a: jax.lax.with_sharding_constraint(a, batched)  # noqa: E731
    else:
        shard = lambda a: a  # noqa: E731

    def run_g(params, stats, z, y, cond):
        g = nnx.merge(g_def, params, stats)
        x = g(z, y, train=True, cond=cond)
        return x, nnx.to_pure_dict(nnx.state(g, nnx.BatchStat))

    if cfg.feature_discriminator and feature_net is None:
        raise ValueError("gan.feature_discriminator needs the feature classifier (feature_net)")
    features_of = frozen_features(feature_net) if cfg.feature_discriminator else None

    def run_d(params, sn, x, y, cond):
        d = nnx.merge(d_def, params, sn) if sn else nnx.merge(d_def, params)
        features = features_of(x) if features_of is not None else None
        logits = d(x, y, update_sn=True, cond=cond, features=features)
        return logits, (nnx.to_pure_dict(nnx.state(d, SpectralU)) if sn else sn)

    def draw(key, b, pairs=False):
        """b latent vectors and class-uniform labels; with `pairs`, rows 2i and 2i+1 share
        their label (and sit on one device), for the mode-seeking term."""
        kz, ky = jax.random.split(key)
        z = shard(jax.random.normal(kz, (b, z_dim)))
        n = b // 2 if pairs else b
        y = classes[jax.random.randint(ky, (n,), 0, classes.shape[0])]
        return z, shard(jnp.repeat(y, 2) if pairs else y)

    def augment(x, key, p):
        return diff_augment(x, key, policy, p if ada else None)

    def step(state, real_x, real_y, hyper, r1_now: bool):
        h = dict(zip(HYPER, hyper))
        b = real_x.shape[0]
        tx_g = make_optimizer(h["lr_g"], cfg.betas)
        tx_d = make_optimizer(h["lr_d"], cfg.betas)
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        k_fake_d, k_aug_d, k_fake_g, k_aug_g = jax.random.split(key, 4)
        real = real_x * 2.0 - 1.0
        if dihedral:  # its own key: the other draws stay those of a run without it
            real = random_dihedral(real, jax.random.fold_in(key, 11))
        p = state["aug_p"]
        step_no = state["step"] + 1
        g_params, g_stats = state["g"]["params"], state["g"]["batch_stats"]
        d_params, sn = state["d"]["params"], state["d"]["sn"]  # sn is {} without spectral norm
        cond = conditioning(step_no, h["cond_start"], h["cond_end"])
        g_at = lambda params, stats, z, y: run_g(params, stats, z, y, cond)  # noqa: E731
        d_at = lambda params, sn, x, y: run_d(params, sn, x, y, cond)  # noqa: E731

        # ---- D update: real and fake in one batch (D has no batch-dependent layers),
        # interleaved (real 0, fake 0, real 1, ...) so each device's rows of the fused
        # batch are its own real and fake rows: no data moves between devices.
        z, yf = draw(k_fake_d, b)
        fake, g_stats = g_at(g_params, g_stats, z, yf)
        x_all = jnp.stack([real, jax.lax.stop_gradient(fake)], axis=1).reshape(2 * b, *real.shape[1:])
        x_all = augment(shard(x_all), k_aug_d, p)
        y_all = shard(jnp.stack([real_y, yf], axis=1).reshape(2 * b))
        # lazy R1: only on r1_due steps (r1_scale includes the interval's factor)
        r1 = {"r1_scale": h["r1_scale"]} if use_r1 and r1_now else {}
        (d_loss, (sn, lr, lf, lecam, r1_penalty)), d_grads = losses.d_value_and_grad(
            d_at,
            d_params,
            sn,
            x_all,
            y_all,
            kind=kind,
            lecam_avg=state["lecam"],
            lecam_weight=h["lecam_weight"] if use_lecam else None,
            **r1,
        )
        upd, opt_d = tx_d.update(d_grads, state["opt_d"], d_params)
        d_params = optax.apply_updates(d_params, upd)
        d_real, d_fake = jnp.mean(lr), jnp.mean(lf)

        # ---- G update through the updated D (D's parameters are constants here).
        z2, yf2 = draw(k_fake_g, b, pairs=use_ms)
        ms = {}
        if use_ms:
            ms = {"mode_seeking_weight": h["mode_seeking_weight"], "mode_seeking_target": h["mode_seeking_target"]}
        (g_loss, (g_stats, sn)), g_grads = losses.g_value_and_grad(
            g_at,
            d_at,
            g_params,
            g_stats,
            d_params,
            sn,
            z2,
            yf2,
            augment=lambda x: augment(x, k_aug_g, p),
            kind=kind,
            **ms,
        )
        upd, opt_g = tx_g.update(g_grads, state["opt_g"], g_params)
        g_params = optax.apply_updates(g_params, upd)
        beta = h["ema_beta"]
        ema = jax.tree.map(lambda e, q: beta * e + (1.0 - beta) * q, state["ema"], g_params)

        # ---- ADA: every ada_interval steps move p by ada_adjust towards E[sign(D(real))]
        # = ada_target (StyleGAN2-ADA's r_t heuristic).
        # (the pixel head's sign: augmentation is what keeps it from memorising the tiles)
        acc = state["ada_acc"] + jnp.stack([jnp.sum(jnp.sign(lr[:, 0])), jnp.float32(b)])
        aug_p = p
        if ada:
            adjust_now = (step_no % h["ada_interval"].astype(jnp.int32)) == 0
            r_t = acc[0] / jnp.maximum(acc[1], 1.0)
            moved = jnp.clip(p + jnp.sign(r_t - h["ada_target"]) * h["ada_adjust"], 0.0, 1.0)
            aug_p = jnp.where(adjust_now, moved, p)
            acc = jnp.where(adjust_now, jnp.zeros_like(acc), acc)

        finite = jnp.isfinite(d_loss) & jnp.isfinite(g_loss)
        nonfinite = jnp.where((state["nonfinite"] < 0) & ~finite, step_no, state["nonfinite"])
        metrics = state["metrics"] + jnp.stack([d_loss, g_loss, d_real, d_fake, r1_penalty, jnp.float32(1)])
        return {
            "g": {"params": g_params, "batch_stats": g_stats},
            "d": {"params": d_params, "sn": sn},
            "opt_g": opt_g,
            "opt_d": opt_d,
            "ema": ema,
            "key": state["key"],
            "step": step_no,
            "nonfinite": nonfinite,
            "metrics": metrics,
            "aug_p": aug_p,
            "ada_acc": acc,
            "lecam": lecam,
        }

    if mesh is None:
        return jax.jit(step, donate_argnums=0, static_argnums=4)
    return jax.jit(
        step,
        donate_argnums=0,
        static_argnums=4,
        in_shardings=(replicated, batched, batched, replicated),
        out_shardings=replicated,
    )
