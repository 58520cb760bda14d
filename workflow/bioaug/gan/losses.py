"""GAN losses on raw discriminator logits (one per image)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


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


def lecam_reg(real_logits: jax.Array, fake_logits: jax.Array, ema_real: jax.Array,
              ema_fake: jax.Array) -> jax.Array:
    """LeCam regulariser (Tseng et al., 2021), as in its reference implementation.

    Pulls D(real) towards the moving average of D(fake) and D(fake) towards that of
    D(real): E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2].
    """
    return (jnp.mean(jnp.square(jax.nn.relu(real_logits - ema_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(ema_real - fake_logits))))


MODE_SEEKING_EPS = 1e-5


def mode_seeking(images: jax.Array, z: jax.Array, target: jax.Array | float = jnp.inf) -> jax.Array:
    """Mode-seeking term of MSGAN (Mao et al., 2019), capped at the data's diversity; G
    minimises it.

    Rows 2i and 2i+1 of `images` are G(z_2i, y) and G(z_2i+1, y) for one class y. With
    ratio = mean |x_a - x_b| / mean |z_a - z_b|, the term is 1 / (min(ratio, target) + eps)
    minus its value at the cap: large when G maps distinct latents to one image (mode
    collapse within a class), zero with no gradient once the pairs differ as much as
    `target` says real tiles of one class do (see `train.mode_seeking_target`), so G is pushed towards
    the real diversity, not past it into noise (the uncapped term, target=inf, is MSGAN's).
    """
    x = images.astype(jnp.float32).reshape(images.shape[0] // 2, 2, -1)
    zz = z.reshape(z.shape[0] // 2, 2, -1)
    ratio = (jnp.mean(jnp.abs(x[:, 0] - x[:, 1]))
             / jnp.mean(jnp.abs(zz[:, 0] - zz[:, 1])))
    floor = jnp.where(jnp.isfinite(target), 1.0 / (target + MODE_SEEKING_EPS), 0.0)
    return 1.0 / (jnp.minimum(ratio, target) + MODE_SEEKING_EPS) - floor


# E|a - b| for independent a, b ~ N(0, 1): the mean latent distance of a pair of z.
LATENT_PAIR_DISTANCE = 2.0 / math.sqrt(math.pi)

