"""GAN losses on raw discriminator logits (one per image)."""

from __future__ import annotations

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
