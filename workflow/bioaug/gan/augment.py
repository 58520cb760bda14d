"""DiffAugment (Zhao et al., 2020): differentiable augmentation of real AND fake images.

Pure JAX, per-sample randomness, images NHWC in [-1, 1]. Applying the same family of
augmentations to what D sees of both real and fake images (in the D and in the G update)
keeps D from memorising a small training set without leaking augmentations into G.

With a probability `p` (adaptive augmentation, StyleGAN2-ADA), each listed augmentation is
applied to each image independently with probability p, so p = 0 is the identity and
p = 1 the plain DiffAugment.

`random_dihedral` is not a DiffAugment: it is a dataset augmentation of the real tiles only
(StyleGAN2-ADA's --mirror, extended to the 8 symmetries of the square), right where a tile's
orientation carries no information (cells lying anywhere in a field). It multiplies the
real set D sees by up to 8 and G must draw every orientation, since the fakes are not
flipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

TRANSLATION_RATIO = 0.125  # shift by up to 1/8 of the size
CUTOUT_RATIO = 0.5  # one square of half the size


def rand_color(x: jax.Array, key: jax.Array) -> jax.Array:
    """Per-sample brightness, saturation (only with >= 3 channels) and contrast."""
    b = x.shape[0]
    kb, ks, kc = jax.random.split(key, 3)
    x = x + (jax.random.uniform(kb, (b, 1, 1, 1), x.dtype) - 0.5)
    if x.shape[-1] >= 3:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        x = (x - mean) * (jax.random.uniform(ks, (b, 1, 1, 1), x.dtype) * 2.0) + mean
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (jax.random.uniform(kc, (b, 1, 1, 1), x.dtype) + 0.5) + mean


def rand_translation(x: jax.Array, key: jax.Array, ratio: float = TRANSLATION_RATIO) -> jax.Array:
    """Shift each image by an integer offset in [-s, s] per axis (s = ratio * size); zero fill."""
    b, h, w, _ = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    if sh == 0 and sw == 0:
        return x
    ky, kx = jax.random.split(key)
    dy = jax.random.randint(ky, (b,), -sh, sh + 1)
    dx = jax.random.randint(kx, (b,), -sw, sw + 1)
    padded = jnp.pad(x, ((0, 0), (sh, sh), (sw, sw), (0, 0)))

    def shift(img, oy, ox):  # out[i, j] = img[i - oy, j - ox]
        return jax.lax.dynamic_slice(img, (sh - oy, sw - ox, 0), (h, w, img.shape[-1]))

    return jax.vmap(shift)(padded, dy, dx)


def rand_cutout(x: jax.Array, key: jax.Array, ratio: float = CUTOUT_RATIO) -> jax.Array:
    """Zero one square of `ratio` * size per image, centred anywhere (clipped at the border)."""
    b, h, w, _ = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (b, 1, 1, 1), 0, h + (1 - ch % 2))
    cx = jax.random.randint(kx, (b, 1, 1, 1), 0, w + (1 - cw % 2))
    y0, x0 = cy - ch // 2, cx - cw // 2
    yy = jnp.arange(h).reshape(1, h, 1, 1)
    xx = jnp.arange(w).reshape(1, 1, w, 1)
    inside = (yy >= y0) & (yy < y0 + ch) & (xx >= x0) & (xx < x0 + cw)
    return jnp.where(inside, jnp.zeros((), x.dtype), x)


def random_dihedral(x: jax.Array, key: jax.Array) -> jax.Array:
    """Each square image (NHWC) under one of the 8 rotations / reflections of the square,
    drawn uniformly per image: a left-right flip, an up-down flip and a transpose, each with
    probability 1/2 (their 8 combinations are the dihedral group, each equally likely)."""
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"random_dihedral needs square images, got {x.shape[1]}x{x.shape[2]}")
    flips = jax.random.bernoulli(key, 0.5, (3, x.shape[0], 1, 1, 1))
    x = jnp.where(flips[0], x[:, :, ::-1], x)
    x = jnp.where(flips[1], x[:, ::-1], x)
    return jnp.where(flips[2], jnp.swapaxes(x, 1, 2), x)


_FUNCS = {"color": rand_color, "translation": rand_translation, "cutout": rand_cutout}


def diff_augment(x: jax.Array, key: jax.Array, policy: Sequence[str], p: jax.Array | float | None = None) -> jax.Array:
    """Apply the listed augmentations, always in the order color, translation, cutout.

    Each augmentation draws from its own sub-key, so the result does not depend on the
    order of `policy`; an empty policy is the identity. With `p` (a scalar, may be
    traced), each augmentation is applied per image with probability p (independently
    per augmentation); `p=None` applies them to every image.
    """
    if not policy:
        return x
    keys = jax.random.split(key, len(_FUNCS))
    for (name, fn), k in zip(_FUNCS.items(), keys):
        if name in policy:
            y = fn(x, k)
            if p is None:
                x = y
            else:
                use = jax.random.uniform(jax.random.fold_in(k, 7), (x.shape[0], 1, 1, 1)) < p
                x = jnp.where(use, y, x)
    return x
