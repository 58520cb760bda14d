"""The GAN's layers and networks (Flax NNX, NHWC): Generator, projection Discriminator.

Holds the spectrally normalised layers (`SNConv`, `SNLinear`, `SNEmbed`; spectral norm is
functional: the stored weight is never modified, each training forward runs one power
iteration from a persistent `SpectralU` vector and uses weight / sigma, unlike
`nnx.SpectralNorm` in Flax 0.12, which overwrites the weight), the class-conditional
BatchNorm, the up/down blocks, `build_networks` for a GanConfig and the BatchNorm constants.
With `conditional_bn` off the architecture matches /work/shared/bench/torch_reference_gan.py
layer for layer (the benchmark's PyTorch peer). `compute_dtype` is the dtype of the conv /
matmul operands (the kernels are in `ops`); parameters, BatchNorm statistics, spectral norm
and the logits stay float32.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from .ops import PAD_MODES, conv2d, upsample_conv3x3

if TYPE_CHECKING:
    from .config import GanConfig

BN_MOMENTUM = 0.9  # flax convention (= torch momentum 0.1)
BN_EPSILON = 1e-5

# PyTorch's default init for Conv/Linear weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
embed_init = nnx.initializers.normal(1.0)  # torch nn.Embedding: N(0, 1)


class SpectralU(nnx.Variable):
    """Power-iteration vector of a spectrally normalised weight (state, not a trained parameter)."""


def _l2normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def spectral_normalize(w: jax.Array, u: jax.Array, update: bool) -> tuple[jax.Array, jax.Array]:
    """Return (w / sigma, u') with sigma the power-iteration estimate of w's top singular value.

    `w` is any weight whose last axis is the output axis; it is seen as the matrix
    (prod(other axes), out) and `u` has length `out`. With `update`, one power-iteration
    step refines u (as PyTorch's spectral_norm does in training mode); without it the stored
    u is used as is. u and v are constants for the gradient (stop_gradient), sigma is not.
    """
    mat = w.reshape(-1, w.shape[-1])
    mat_sg = jax.lax.stop_gradient(mat)
    u = jax.lax.stop_gradient(u)
    v = _l2normalize(mat_sg @ u)
    if update:  # PyTorch's order: v from the old u, then u from v; sigma = v^T W u
        u = _l2normalize(mat_sg.T @ v)
    sigma = v @ (mat @ u)
    return w / sigma, u


class _SNWeight(nnx.Module):
    """Mixin: a `kernel` Param, optionally spectrally normalised through a SpectralU `u`."""

    kernel: nnx.Param

    def _init_sn(self, n_out: int, spectral_norm: bool, rngs: nnx.Rngs) -> None:
        self.spectral_norm = spectral_norm
        if spectral_norm:
            self.u = SpectralU(_l2normalize(jax.random.normal(rngs.params(), (n_out,))))

    def weight(self, update_sn: bool) -> jax.Array:
        """The weight the layer computes with (normalised when spectral norm is on)."""
        w = self.kernel[...]
        if not self.spectral_norm:
            return w
        w, u = spectral_normalize(w, self.u[...], update_sn)
        if update_sn:
            self.u[...] = u
        return w


class SNConv(_SNWeight):
    """Conv with explicit symmetric padding (the same as torch's `padding=`), HWIO kernel."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: int,
        *,
        spectral_norm: bool,
        rngs: nnx.Rngs,
        dtype=None,
    ):
        self.kernel = nnx.Param(torch_default_init(rngs.params(), (kernel, kernel, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))
        self.stride = stride
        self.padding = padding
        self.dtype = dtype
        self._init_sn(cout, spectral_norm, rngs)

    def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
        y = conv2d(x, self.weight(update_sn), self.stride, self.padding, self.dtype)
        return y + self.bias[...].astype(y.dtype)


class SNLinear(_SNWeight):
    def __init__(self, cin: int, cout: int, *, spectral_norm: bool, rngs: nnx.Rngs):
        self.kernel = nnx.Param(torch_default_init(rngs.params(), (cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))
        self._init_sn(cout, spectral_norm, rngs)

    def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
        return x @ self.weight(update_sn) + self.bias[...]


class SNEmbed(_SNWeight):
    """Embedding table (n_classes, features); spectral norm over the whole table."""

    def __init__(self, n: int, features: int, *, spectral_norm: bool, rngs: nnx.Rngs):
        self.kernel = nnx.Param(embed_init(rngs.params(), (n, features)))
        self._init_sn(features, spectral_norm, rngs)

    def __call__(self, y: jax.Array, update_sn: bool) -> jax.Array:
        return jnp.take(self.weight(update_sn), y, axis=0)


class ClassBatchNorm(nnx.BatchNorm):
    """BatchNorm whose scale and shift also depend on the class (conditional BN, as in
    SNGAN-projection / BigGAN): BN(x) * (1 + gain[y]) + bias[y].

    The class table starts at zero, so at initialisation this is a plain BatchNorm; without
    `conditional` it *is* the plain BatchNorm (the reference architecture, same parameter
    layout). Conditioning every layer, not only the input, lets each class keep its own
    shape and colour statistics instead of one shared set that the class embedding must steer.
    """

    def __init__(self, n: int, n_classes: int, conditional: bool, *, rngs: nnx.Rngs):
        super().__init__(n, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)
        self.conditional = conditional
        if conditional:
            self.class_affine = nnx.Embed(n_classes, 2 * n, embedding_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: jax.Array, y: jax.Array, train: bool, cond: jax.Array | float = 1.0) -> jax.Array:
        h = super().__call__(x, use_running_average=not train)
        if not self.conditional:
            return h
        gain, bias = jnp.split(self.class_affine(y) * cond, 2, axis=-1)
        shape = (-1,) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return h * (1.0 + gain.reshape(shape)) + bias.reshape(shape)


CAMERA_NOISE_STREAM = 1000  # pixel_noise's stream of a sample's noise (noise inputs use 0, 1, ...)


def noise_keys(z: jax.Array) -> jax.Array:
    """One PRNG key per row of z, made from the bits of its first two entries: the per-pixel
    noise of a sample is then a function of its z alone (sampling stays deterministic in
    (z, y), and every caller of G keeps its signature), and independent across samples."""
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(z[:, :2]).astype(jnp.float32), jnp.uint32)
    return jax.vmap(jax.random.wrap_key_data)(bits)


def pixel_noise(keys: jax.Array, layer: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise of `shape` (H, W, C) per sample, layer `layer`'s own stream."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, layer), shape))(keys)


class UpBlock(nnx.Module):
    """nearest 2x, conv3x3, [+ per-pixel noise], (class-conditional) BN, ReLU; the first two
    as one `upsample_conv3x3`.

    `self.conv` is an `nnx.Conv` only as the holder of its kernel and bias; it is never
    called. With `noise`, a single-channel noise image times a learned per-channel strength
    (zero at initialisation) is added after the conv, as StyleGAN's noise inputs.
    """

    def __init__(self, cin: int, cout: int, n_classes: int, conditional_bn: bool, *, rngs: nnx.Rngs, dtype=None,
                 noise: bool = False, padding: str = "zeros"):  # fmt: skip
        self.padding = padding
        self.conv = nnx.Conv(cin, cout, (3, 3), padding=((1, 1), (1, 1)), kernel_init=torch_default_init, rngs=rngs)
        self.bn = ClassBatchNorm(cout, n_classes, conditional_bn, rngs=rngs)
        self.dtype = dtype
        self.noise_strength = nnx.Param(jnp.zeros((cout,), jnp.float32)) if noise else None

    def __call__(self, x: jax.Array, y: jax.Array, train: bool, noise: jax.Array | None = None,
                 cond: jax.Array | float = 1.0) -> jax.Array:  # fmt: skip
        x = upsample_conv3x3(x, self.conv.kernel[...], self.dtype, self.padding)
        x = x.astype(jnp.float32) + self.conv.bias[...]
        if self.noise_strength is not None:
            x = x + noise * self.noise_strength[...]
        return jax.nn.relu(self.bn(x, y, train, cond))


class Generator(nnx.Module):
    """(z, y) -> image in [-1, 1] of size 4 * 2**len(g_channels).

    concat(z, Embed(y)) -> Linear -> 4x4xg_channels[0] -> BN, ReLU ->
    [nearest 2x, conv3x3, BN, ReLU] per entry of g_channels -> conv3x3 -> tanh.
    With `conditional_bn` every BN also gets a class-dependent scale and shift
    (`ClassBatchNorm`); without it this is the reference network of ../shared/bench.
    `output="linear"` drops the final tanh (StyleGAN2's linear output, clipped only when
    sampling): fluorescence tiles are mostly dark background at -1, where tanh saturates and
    passes D's gradient on at a few percent, so G learns the background last.
    `noise_inputs` adds per-pixel Gaussian noise with learned per-channel strengths (zero at
    initialisation) after every upsampling conv and to the output (StyleGAN's noise inputs):
    real micrographs carry pixel-independent shot and read noise that upsampling convolutions
    from a 4x4 map cannot draw. The noise of a sample is drawn from its z (`noise_keys`).
    `tanh_scale` > 1 stretches the tanh output beyond [-1, 1] (clipped to the data range when
    sampling): the data's dark background (just above -1) and saturated pixels (at 1) then sit
    where tanh still passes gradient, not on its flat tails.
    `noise_variance` ((a per channel), (b per channel), in [0, 1] units; None: off) adds a
    camera's shot and read noise to the output, variance a * I + b at intensity I
    (noise_model.py), drawn from z like the noise inputs; the output is then clipped to the
    data's [-1, 1], as real tiles are by their normalisation. The noise's scale passes no
    gradient: G is trained to draw the clean image under it.
    `padding` is how every G conv pads: "zeros" (the reference network), or "edge", copies
    of the border pixels, so that no conv sees a dark frame at the tile's edge that real
    tiles (crops of larger fields) do not have.
    `train=True` normalises with batch statistics (and updates the running ones);
    `train=False` uses the running statistics, so each sample depends only on its (z, y).
    `cond` in [0, 1] scales every class-dependent input (the embedding and the conditional BN
    terms): 0 is an unconditional G, 1 (sampling) the class-conditional one; training ramps it
    up over `gan.conditional_transition` (Shahbazi et al., "Collapse by Conditioning", 2022).
    """

    def __init__(
        self,
        z_dim: int,
        n_classes: int,
        g_channels: Sequence[int],
        out_channels: int,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        conditional_bn: bool = False,
        output: str = "tanh",
        noise_inputs: bool = False,
        tanh_scale: float = 1.0,
        padding: str = "zeros",
        noise_variance: tuple[Sequence[float], Sequence[float]] | None = None,
    ):
        g_channels = tuple(int(c) for c in g_channels)
        if output not in G_OUTPUTS:
            raise ValueError(f"generator output must be one of {G_OUTPUTS}, got {output!r}")
        if padding not in PAD_MODES:
            raise ValueError(f"generator padding must be one of {tuple(PAD_MODES)}, got {padding!r}")
        self.padding = padding
        if noise_variance is not None:
            noise_variance = tuple(tuple(float(v) for v in part) for part in noise_variance)
            if len(noise_variance) != 2 or any(len(part) != out_channels for part in noise_variance):
                raise ValueError(
                    f"noise_variance: expected (a, b) with {out_channels} value(s) each, got {noise_variance}"
                )
        self.noise_variance = noise_variance
        self.output = output
        self.tanh_scale = float(tanh_scale)
        self.dtype = dtype
        self.z_dim, self.n_classes, self.c0 = z_dim, n_classes, g_channels[0]
        self.embed = nnx.Embed(n_classes, z_dim, embedding_init=embed_init, rngs=rngs)
        self.fc = nnx.Linear(2 * z_dim, 16 * g_channels[0], kernel_init=torch_default_init, rngs=rngs)
        self.bn0 = ClassBatchNorm(g_channels[0], n_classes, conditional_bn, rngs=rngs)
        blocks, cin = [], g_channels[0]
        for c in g_channels:
            blocks.append(
                UpBlock(cin, c, n_classes, conditional_bn, rngs=rngs, dtype=dtype, noise=noise_inputs, padding=padding)
            )
            cin = c
        self.blocks = nnx.List(blocks)
        self.out = nnx.Conv(
            cin, out_channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=torch_default_init, rngs=rngs
        )
        self.out_noise_strength = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if noise_inputs else None

    def __call__(self, z: jax.Array, y: jax.Array, *, train: bool, cond: jax.Array | float = 1.0) -> jax.Array:
        keys = noise_keys(z) if self.out_noise_strength is not None else None
        h = self.fc(jnp.concatenate([z, self.embed(y) * cond], axis=-1))
        h = h.reshape(-1, 4, 4, self.c0)
        h = jax.nn.relu(self.bn0(h, y, train, cond))
        for i, block in enumerate(self.blocks):
            side = 2 * h.shape[1]
            noise = pixel_noise(keys, i, (side, side, 1)) if keys is not None else None
            h = block(h, y, train, noise, cond)
        if self.padding == "zeros":
            y = conv2d(h, self.out.kernel[...], 1, 1, self.dtype)
        else:
            y = conv2d(
                jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=PAD_MODES[self.padding]),
                self.out.kernel[...],
                1,
                0,
                self.dtype,
            )
        y = y.astype(jnp.float32) + self.out.bias[...]
        if keys is not None:  # pixel-independent noise in every output channel
            y = y + pixel_noise(keys, len(self.blocks), y.shape[1:]) * self.out_noise_strength[...]
        y = jnp.tanh(y) * self.tanh_scale if self.output == "tanh" else y
        if self.noise_variance is not None:
            y = self._camera_noise(y, noise_keys(z))
        return y

    def _camera_noise(self, y: jax.Array, keys: jax.Array) -> jax.Array:
        """y (in [-1, 1] units) plus noise of variance a * I + b at I = (y + 1) / 2, clipped."""
        a, b = (jnp.asarray(v, jnp.float32) for v in self.noise_variance)
        level = jnp.clip((jax.lax.stop_gradient(y) + 1.0) * 0.5, 0.0, 1.0)
        sigma = 2.0 * jnp.sqrt(a * level + b)  # [-1, 1] units are twice [0, 1]'s
        return jnp.clip(y + sigma * pixel_noise(keys, CAMERA_NOISE_STREAM, y.shape[1:]), -1.0, 1.0)


class DownBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, *, spectral_norm: bool, rngs: nnx.Rngs, dtype=None):
        self.conv1 = SNConv(cin, cout, 3, 1, 1, spectral_norm=spectral_norm, rngs=rngs, dtype=dtype)
        self.conv2 = SNConv(cout, cout, 4, 2, 1, spectral_norm=spectral_norm, rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array, update_sn: bool) -> jax.Array:
        x = jax.nn.leaky_relu(self.conv1(x, update_sn), 0.1)
        return jax.nn.leaky_relu(self.conv2(x, update_sn), 0.1)


class FeatureHead(nnx.Module):
    """The feature discriminator's head (`gan.feature_discriminator`): a projection
    discriminator on a frozen network's features of the image, not on its pixels.

    features (N, F) -> [Linear(F, W), LReLU 0.2] x 2 -> Linear(1)(h) + cond * <Embed(y), h>,
    spectral norm as D's. The features are those of the real-trained feature classifier (the
    projected-GAN idea, Sauer et al. 2021: a D on a fixed network's features converges in
    far fewer steps; here the network knows the classes, so the projection asks G's tiles to
    carry their class in the features that tell the classes apart).
    """

    def __init__(self, feature_dim: int, n_classes: int, spectral_norm: bool, *, rngs: nnx.Rngs, width: int = 256):
        self.fc1 = SNLinear(feature_dim, width, spectral_norm=spectral_norm, rngs=rngs)
        self.fc2 = SNLinear(width, width, spectral_norm=spectral_norm, rngs=rngs)
        self.lin = SNLinear(width, 1, spectral_norm=spectral_norm, rngs=rngs)
        self.embed = SNEmbed(n_classes, width, spectral_norm=spectral_norm, rngs=rngs)

    def __call__(self, f: jax.Array, y: jax.Array, update_sn: bool, cond: jax.Array | float = 1.0) -> jax.Array:
        h = jax.nn.leaky_relu(self.fc1(f.astype(jnp.float32), update_sn), 0.2)
        h = jax.nn.leaky_relu(self.fc2(h, update_sn), 0.2)
        return self.lin(h, update_sn)[:, 0] + cond * jnp.sum(self.embed(y, update_sn) * h, axis=-1)


class Discriminator(nnx.Module):
    """Projection discriminator: (image in [-1, 1], y) -> one logit per image.

    [conv3x3 s1, LReLU 0.1, conv4x4 s2, LReLU 0.1] per entry of d_channels -> global sum
    pool -> Linear(1)(h) + cond * <Embed(y), h>. Spectral norm on every conv, the linear and the
    embedding when enabled; `update_sn=True` (training) runs one power iteration per layer.
    `cond` 0 makes D unconditional (the start of a conditional transition), 1 the projection D.

    With `feature_dim` > 0, a second head (`FeatureHead`) judges `features` (N, feature_dim),
    a frozen network's features of the same images, and D returns (N, 2) logits: pixel head,
    feature head. Each head is its own discriminator; the objectives average their losses.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        d_channels: Sequence[int],
        spectral_norm: bool,
        *,
        rngs: nnx.Rngs,
        dtype=None,
        feature_dim: int = 0,
    ):
        blocks, cin = [], in_channels
        for c in d_channels:
            blocks.append(DownBlock(cin, int(c), spectral_norm=spectral_norm, rngs=rngs, dtype=dtype))
            cin = int(c)
        self.blocks = nnx.List(blocks)
        self.lin = SNLinear(cin, 1, spectral_norm=spectral_norm, rngs=rngs)
        self.embed = SNEmbed(n_classes, cin, spectral_norm=spectral_norm, rngs=rngs)
        self.feature_head = (
            FeatureHead(int(feature_dim), n_classes, spectral_norm, rngs=rngs) if feature_dim > 0 else None
        )

    def __call__(
        self,
        x: jax.Array,
        y: jax.Array,
        *,
        update_sn: bool = True,
        cond: jax.Array | float = 1.0,
        features: jax.Array | None = None,
    ) -> jax.Array:
        h = x
        for block in self.blocks:
            h = block(h, update_sn)
        h = jnp.sum(h.astype(jnp.float32), axis=(1, 2))
        logits = self.lin(h, update_sn)[:, 0] + cond * jnp.sum(self.embed(y, update_sn) * h, axis=-1)
        if self.feature_head is None:
            return logits
        if features is None:
            raise ValueError("this discriminator has a feature head: pass the images' features")
        return jnp.stack([logits, self.feature_head(features, y, update_sn, cond)], axis=-1)


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
G_OUTPUTS = ("tanh", "linear")


def build_networks(cfg: GanConfig, key: jax.Array) -> tuple[Generator, Discriminator]:
    """Fresh G and D for a GanConfig, initialised from `key` (parameters always float32)."""
    kg, kd = jax.random.split(key)
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    g = Generator(
        cfg.z_dim,
        cfg.n_classes,
        cfg.g_channels,
        cfg.channels,
        rngs=nnx.Rngs(params=kg),
        dtype=dtype,
        conditional_bn=cfg.conditional_bn,
        output=cfg.g_output,
        noise_inputs=cfg.noise_inputs,
        tanh_scale=cfg.tanh_scale,
        padding=cfg.g_padding,
        noise_variance=cfg.noise_variance,
    )
    d = Discriminator(
        cfg.channels,
        cfg.n_classes,
        cfg.d_channels,
        cfg.spectral_norm,
        rngs=nnx.Rngs(params=kd),
        dtype=dtype,
        feature_dim=cfg.feature_dim if cfg.feature_discriminator else 0,
    )
    return g, d


@functools.lru_cache(maxsize=8)
def graphdefs(cfg: GanConfig):
    """(graphdef of G, graphdef of D) for a GanConfig, without allocating weights."""
    g_abs, d_abs = nnx.eval_shape(lambda: build_networks(cfg, jax.random.key(0)))
    return nnx.graphdef(g_abs), nnx.graphdef(d_abs)


def count_params(module: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
