"""Convolution kernels of the GAN, written for speed on XLA:CPU (same results as plain convs).

Three layers are *computed* differently from a plain convolution, with the same parameters
and the same result up to float rounding (tests/test_gan_features.py checks each against
`jax.lax.conv`): nearest 2x upsampling followed by a 3x3 convolution (the generator's
blocks) runs at the low resolution as one 2x2-tap matmul giving the four output phases
(`upsample_conv3x3`: 2.25x fewer FLOPs, no upsampled intermediate); a convolution with very
few input channels (the discriminator's first layer) is an im2col matmul, which XLA:CPU runs
faster than its convolution for that shape; and the input gradient of the discriminator's
4x4 stride-2 convolutions (`conv4x4_s2`, a custom VJP) is the same phase matmul instead of a
convolution over a zero-dilated input. `upsample2x` is the plain form the tests compare with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

IM2COL_MAX_PATCH = 27  # cin * k * k up to this: im2col matmul instead of lax.conv
PAD_MODES = {"zeros": "constant", "edge": "edge"}  # gan.g_padding -> jnp.pad's mode


def conv2d(x: jax.Array, w: jax.Array, stride: int, padding: int, dtype=None) -> jax.Array:
    """NHWC x HWIO convolution with symmetric zero padding (torch's `padding=`).

    Operands are cast to `dtype` (None: leave them), the result is in that dtype.
    """
    if dtype is not None:
        x, w = x.astype(dtype), w.astype(dtype)
    kh, kw, cin, cout = w.shape
    if kh * kw * cin <= IM2COL_MAX_PATCH:
        return _im2col_conv(x, w, stride, padding)
    if (kh, kw, stride, padding) == (4, 4, 2, 1) and x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        return conv4x4_s2(x, w)
    return _plain_conv(x, w, stride, padding)


def _im2col_conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    kh, kw, cin, cout = w.shape
    p = padding
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))) if p else x
    _, hp, wp, _ = xp.shape
    ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    cols = [
        xp[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    return patches @ w.reshape(kh * kw * cin, cout)


# Row (or column) taps of the four output phases of "nearest 2x upsample, then 3x3 conv":
# output row 2i+a sees input rows (i-1, i) for a = 0 with kernel rows (w0, w1 + w2) and
# rows (i, i+1) for a = 1 with kernel rows (w0 + w1, w2). _PHASE_TAPS[a, tap, kernel_row].
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def upsample_conv3x3(x: jax.Array, w: jax.Array, dtype=None, padding: str = "zeros") -> jax.Array:
    """conv3x3(nearest_upsample_2x(x), w) with padding 1, computed at x's resolution.

    `padding` "zeros" pads the upsampled image with zeros, "edge" with copies of its border
    pixels (padding x's border by one, then upsampling, gives exactly that).

    The 3x3 kernel is folded into a 2x2-tap kernel per output phase (a, b) (see
    _PHASE_TAPS); one matmul of the 2x2 patches of the padded input, (B, H+1, W+1, 4 cin)
    @ (4 cin, 4 cout), gives all four phases, which are then interleaved into the
    (B, 2H, 2W, cout) output. Same parameters and result as the plain form, 16/36 of its
    multiply-adds (plus the border), and XLA:CPU runs a matmul faster than the equivalent
    2x2 convolution (whose weight gradient it handles very slowly).
    """
    cin, cout = w.shape[2], w.shape[3]
    taps = jnp.asarray(_PHASE_TAPS, w.dtype)
    k = jnp.einsum("ahk,bwl,klio->hwiabo", taps, taps, w).reshape(4 * cin, 4 * cout)
    if dtype is not None:
        x, k = x.astype(dtype), k.astype(dtype)
    return _phase_matmul(x, k, cout, padding)


def _phase_matmul(x: jax.Array, k: jax.Array, cout: int, padding: str = "zeros") -> jax.Array:
    """(B, H, W, cin) -> (B, 2H, 2W, cout): output phase (a, b) at (i, j) is the 2x2 patch
    of the 1-padded input at (i + a, j + b) times k's (a, b) block; k is (4 cin, 4 cout)
    with rows ordered (tap row, tap col, cin) and columns (a, b, cout)."""
    b, h, wd, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=PAD_MODES[padding])
    patches = jnp.concatenate([xp[:, i : i + h + 1, j : j + wd + 1] for i in (0, 1) for j in (0, 1)], axis=-1)
    m = b * (h + 1) * (wd + 1)
    y = _matmul(patches.reshape(m, -1), k).reshape(b, h + 1, wd + 1, 2, 2, cout)
    rows = [jnp.stack([y[:, a : a + h, c : c + wd, a, c] for c in (0, 1)], axis=3) for a in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * wd, cout)


@jax.custom_vjp
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b for 2-D operands, with gradients as plain row-major matmuls.

    XLA:CPU lowers the weight gradient a^T @ g of a tall matmul as a dot contracting the
    leading dimensions, which it does not hand to YNNPACK; here a^T is materialised
    first, so both gradients are ordinary (M, K) @ (K, N) products.
    """
    return a @ b


def _matmul_fwd(a, b):
    return a @ b, (a, b)


def _matmul_bwd(res, g):
    a, b = res
    return g @ b.T, jnp.transpose(a) @ g


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _plain_conv(x, w, stride, padding):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((padding, padding), (padding, padding)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


# Kernel rows (or columns) that reach input phase a through tap t, for the input gradient
# of a 4x4 stride-2 padding-1 convolution: dx[2m] = dy[m-1] w[3] + dy[m] w[1],
# dx[2m+1] = dy[m] w[2] + dy[m+1] w[0].
_S2_TAPS = np.array([[3, 1], [2, 0]])


@jax.custom_vjp
def conv4x4_s2(x: jax.Array, w: jax.Array) -> jax.Array:
    """4x4 convolution, stride 2, padding 1 (the discriminator's downsampling conv).

    Forward and weight gradient as usual; the input gradient (a transposed convolution,
    which XLA:CPU runs as a convolution over a zero-dilated input, 4x the work) is computed
    like `upsample_conv3x3`: one matmul over 2x2 patches of the output gradient gives the
    four phases of the input gradient.
    """
    return _plain_conv(x, w, 2, 1)


def _conv4x4_s2_fwd(x, w):
    return _plain_conv(x, w, 2, 1), (x, w)


def _conv4x4_s2_bwd(res, dy):
    x, w = res
    _, w_vjp = jax.vjp(lambda w: _plain_conv(x, w, 2, 1), w)
    (dw,) = w_vjp(dy)
    wt = jnp.swapaxes(w, 2, 3)  # (kh, kw, cout, cin)
    t = _S2_TAPS
    k = wt[t[:, None, :, None], t[None, :, None, :]]  # (a, b, tap row, tap col, cout, cin)
    cout, cin = wt.shape[2], wt.shape[3]
    k = k.transpose(2, 3, 4, 0, 1, 5).reshape(4 * cout, 4 * cin).astype(dy.dtype)
    dx = _phase_matmul(dy, k, cin)
    return dx.astype(x.dtype), dw


conv4x4_s2.defvjp(_conv4x4_s2_fwd, _conv4x4_s2_bwd)


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of NHWC images."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)
