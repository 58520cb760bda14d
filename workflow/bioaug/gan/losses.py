"""The GAN's whole objective: losses on raw logits, regularisers, D's and G's objectives.

The loss kinds (hinge, non-saturating) of D and G, the LeCam regulariser with its moving
averages, lazy R1 on the images D sees and the capped mode-seeking term of G, and the two
objectives the train step differentiates (`d_value_and_grad`, `g_value_and_grad`; a D with
a feature head gives two logits per image, and every loss is a mean over both). Those
take the networks as callables, `run_d(params, sn, x, y) -> (logits, sn')` and
`run_g(params, batch_stats, z, y) -> (images, batch_stats')`, so this module needs no
network code; a regulariser that is off is None (not traced), its strength otherwise a
traced step argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

LECAM_DECAY = 0.99  # moving averages of D(real), D(fake) for the LeCam regulariser


def d_loss(kind: str, real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Discriminator loss: hinge (SNGAN/BigGAN) or non-saturating (logistic)."""
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    if kind == "nonsaturating":
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_loss(kind: str, fake_logits: jax.Array) -> jax.Array:
    """Generator loss: -E[D(G(z))] for hinge, -log sigmoid(D(G(z))) for non-saturating."""
    if kind == "hinge":
        return -jnp.mean(fake_logits)
    if kind == "nonsaturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    raise ValueError(f"unknown GAN loss {kind!r}")


def lecam_reg(real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array, ema_fake: jax.Array) -> jax.Array:
    """LeCam regulariser (Tseng et al., 2021), as in its reference implementation.

    Pulls D(real) towards the moving average of D(fake) and D(fake) towards that of
    D(real): E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2].
    """
    return jnp.mean(jnp.square(jax.nn.relu(real_logits - ema_fake))) + jnp.mean(
        jnp.square(jax.nn.relu(ema_real - fake_logits))
    )


MODE_SEEKING_EPS = 1e-5


def mode_seeking(images: jax.Array, z: jax.Array, target: jax.Array | float = jnp.inf) -> jax.Array:
    """Mode-seeking term of MSGAN (Mao et al., 2019), capped at the data's diversity; G
    minimises it.

    Rows 2i and 2i+1 of `images` are G(z_2i, y) and G(z_2i+1, y) for one class y. With
    ratio = mean |x_a - x_b| / mean |z_a - z_b|, the term is 1 / (min(ratio, target) + eps)
    minus its value at the cap: large when G maps distinct latents to one image (mode
    collapse within a class), zero with no gradient once the pairs differ as much as
    `target` says real tiles of one class do (see `step.mode_seeking_target`), so G is pushed
    towards the real diversity, not past it into noise (the uncapped term, target=inf, is MSGAN's).
    """
    x = images.astype(jnp.float32).reshape(images.shape[0] // 2, 2, -1)
    zz = z.reshape(z.shape[0] // 2, 2, -1)
    ratio = jnp.mean(jnp.abs(x[:, 0] - x[:, 1])) / jnp.mean(jnp.abs(zz[:, 0] - zz[:, 1]))
    floor = jnp.where(jnp.isfinite(target), 1.0 / (target + MODE_SEEKING_EPS), 0.0)
    return 1.0 / (jnp.minimum(ratio, target) + MODE_SEEKING_EPS) - floor


# E|a - b| for independent a, b ~ N(0, 1): the mean latent distance of a pair of z.
LATENT_PAIR_DISTANCE = 2.0 / math.sqrt(math.pi)


# ----------------------------------------------------------------------------- objectives
def d_objective(
    run_d: Callable,
    d_params,
    sn,
    x: jax.Array,
    y: jax.Array,
    *,
    kind: str,
    lecam_avg: jax.Array,
    lecam_weight: jax.Array | None = None,
):
    """D's loss on the fused batch `x` (rows 2i real, 2i+1 fake; labels `y`).

    Returns (loss, (sn', D(real), D(fake), lecam_avg')): the LeCam moving averages move
    towards this batch's mean logits; with `lecam_weight` the regulariser against the
    updated averages is added. D(real) and D(fake) are (b, heads): a D with a feature head
    gives two logits per image, and the losses are means over both heads.
    """
    logits, new_sn = run_d(d_params, sn, x, y)
    pairs = logits.reshape(logits.shape[0] // 2, 2, -1)
    lr, lf = pairs[:, 0], pairs[:, 1]
    loss = d_loss(kind, lr, lf)
    means = jax.lax.stop_gradient(jnp.stack([jnp.mean(lr), jnp.mean(lf)]))
    lecam = LECAM_DECAY * lecam_avg + (1.0 - LECAM_DECAY) * means
    if lecam_weight is not None:
        loss = loss + lecam_weight * lecam_reg(lr, lf, lecam[0], lecam[1])
    return loss, (new_sn, lr, lf, lecam)


def d_loss_plain(run_d: Callable, d_params, sn, x, y, **objective):
    """`d_objective` with a zero R1 penalty appended to its aux."""
    loss, aux = d_objective(run_d, d_params, sn, x, y, **objective)
    return loss, (*aux, jnp.zeros((), jnp.float32))


def d_loss_r1(run_d: Callable, d_params, sn, x, y, *, r1_scale: jax.Array, **objective):
    """`d_objective` plus r1_scale * R1, R1 = E_real ||grad_x D(x)||^2 (penalty in the aux).

    R1 is taken on the images D sees (augmented reals, as in StyleGAN2-ADA): the gradient
    of sum(D(real)) with respect to the fused input is zero on the fake rows.
    """

    def real_sum(x):
        loss, aux = d_objective(run_d, d_params, sn, x, y, **objective)
        return jnp.sum(aux[1]), (loss, aux)

    grad_x, (loss, aux) = jax.grad(real_sum, has_aux=True)(x)
    penalty = jnp.sum(jnp.square(grad_x.astype(jnp.float32))) / (x.shape[0] // 2)
    return loss + r1_scale * penalty, (*aux, penalty)


def d_value_and_grad(run_d: Callable, d_params, sn, x, y, *, kind: str, lecam_avg, lecam_weight=None, r1_scale=None):
    """((loss, (sn', D(real), D(fake), lecam_avg', R1 penalty)), gradient) of D's objective.

    With `r1_scale` (lazy R1's steps; it includes the interval's factor), the penalised
    objective; without, the plain one with a zero penalty.
    """
    objective = {"kind": kind, "lecam_avg": lecam_avg, "lecam_weight": lecam_weight}
    if r1_scale is None:
        loss = lambda dp: d_loss_plain(run_d, dp, sn, x, y, **objective)  # noqa: E731
    else:
        loss = lambda dp: d_loss_r1(run_d, dp, sn, x, y, r1_scale=r1_scale, **objective)  # noqa: E731
    return jax.value_and_grad(loss, has_aux=True)(d_params)


def g_objective(
    run_g: Callable,
    run_d: Callable,
    g_params,
    g_stats,
    d_params,
    sn,
    z: jax.Array,
    y: jax.Array,
    *,
    augment: Callable,
    kind: str,
    mode_seeking_weight=None,
    mode_seeking_target=None,
):
    """G's loss through D (D's parameters are constants here) on G(z, y), augmented by
    `augment` as D's inputs are; with `mode_seeking_weight`, plus the mode-seeking term
    (rows 2i, 2i+1 share their class). Returns (loss, (batch_stats', sn'))."""
    x, new_stats = run_g(g_params, g_stats, z, y)
    logits, new_sn = run_d(d_params, sn, augment(x), y)
    loss = g_loss(kind, logits)
    if mode_seeking_weight is not None:
        loss = loss + mode_seeking_weight * mode_seeking(x, z, mode_seeking_target)
    return loss, (new_stats, new_sn)


def g_value_and_grad(run_g: Callable, run_d: Callable, g_params, g_stats, d_params, sn, z, y, **objective):
    """((loss, (batch_stats', sn')), gradient with respect to g_params) of `g_objective`."""
    return jax.value_and_grad(
        lambda gp: g_objective(run_g, run_d, gp, g_stats, d_params, sn, z, y, **objective), has_aux=True
    )(g_params)
