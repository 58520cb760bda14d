"""The downstream classifiers in Flax NNX: a small VGG-style CNN (the laptop default) and a
ResNet (ResNet-18 and its narrower / shallower variants: the judge users deploy).

SmallCNN:
Each entry of ``channels`` is one block: conv3x3 -> BatchNorm -> ReLU -> conv3x3 ->
BatchNorm -> ReLU -> 2x2 max-pool. The head is global average pooling -> dropout(0.2)
-> Linear(n_classes). Inputs are NHWC float tiles in [0, 1]; the output is logits.

Train/eval behaviour follows NNX's usual mechanism: ``model.train()`` makes BatchNorm use
batch statistics (and update its running averages) and enables dropout; ``model.eval()``
switches to running averages and disables dropout. These flags are static attributes, so
they live in the ``GraphDef`` returned by ``nnx.split`` (a train-mode and an eval-mode
split of the same model have different graphdefs but identically structured states).

``dtype`` is the compute dtype of every layer (bfloat16: mixed precision for GPUs / TPUs):
parameters stay float32, BatchNorm reduces in float32, and the logits and features are
returned as float32 whatever the compute dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

DROPOUT_RATE = 0.2
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype_name(dtype) -> str:
    return jnp.dtype(dtype).name


class ConvBlock(nnx.Module):
    """Two conv3x3-BN-ReLU layers followed by a 2x2 max-pool (halves H and W)."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        # BatchNorm follows each conv, so the conv bias would be redundant.
        conv = functools.partial(nnx.Conv, kernel_size=(3, 3), padding="SAME", use_bias=False, dtype=dtype, rngs=rngs)
        self.conv1 = conv(in_channels, out_channels)
        self.bn1 = nnx.BatchNorm(out_channels, momentum=0.9, dtype=dtype, rngs=rngs)
        self.conv2 = conv(out_channels, out_channels)
        self.bn2 = nnx.BatchNorm(out_channels, momentum=0.9, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


class SmallCNN(nnx.Module):
    """Small CNN classifier for (N, H, W, C) tiles; returns (N, n_classes) logits.

    Args:
      in_channels: C of the input tiles.
      n_classes: number of output logits.
      channels: output width of each block; H and W must be at least ``2 ** len(channels)``.
      rngs: ``nnx.Rngs`` used for parameter initialisation (and a default dropout stream).
      dtype: compute dtype (float32 or bfloat16); parameters are float32 either way.
    """

    def __init__(self, in_channels: int, n_classes: int, channels: list[int], *, rngs: nnx.Rngs,
                 dtype=jnp.float32):  # fmt: skip
        if in_channels < 1 or n_classes < 1:
            raise ValueError(f"SmallCNN needs in_channels >= 1 and n_classes >= 1, got {in_channels}, {n_classes}")
        if not channels:
            raise ValueError("SmallCNN needs at least one entry in channels")
        self.in_channels = int(in_channels)
        self.n_classes = int(n_classes)
        self.channels = tuple(int(c) for c in channels)
        self.compute_dtype = _dtype_name(dtype)
        blocks = []
        c_in = self.in_channels
        for c_out in self.channels:
            blocks.append(ConvBlock(c_in, c_out, rngs=rngs, dtype=dtype))
            c_in = c_out
        self.blocks = nnx.List(blocks)
        self.dropout = nnx.Dropout(DROPOUT_RATE, rngs=rngs)
        self.head = nnx.Linear(c_in, self.n_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits for a batch of NHWC tiles.

        ``dropout_key`` (a JAX key), when given, drives the dropout mask in train mode
        instead of the module's own RNG stream — the pure/jitted training step uses it so
        all randomness comes from explicit keys.
        """
        x = self.features(x)
        x = self.dropout(x, rngs=dropout_key)
        return self.head(x).astype(jnp.float32)

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate-layer features (after global average pooling), shape (N, channels[-1]).

        This is the domain feature space of the GAN quality metrics and the memorisation audit.
        """
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class BasicBlock(nnx.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (a strided 1x1
    conv + BN where the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        bn = functools.partial(nnx.BatchNorm, momentum=0.9, dtype=dtype, rngs=rngs)
        # padding 1 on every side (not "SAME", which pads a strided conv on the far side only):
        # PyTorch's / torchvision's alignment, so their ResNet weights compute the same thing here
        self.conv1 = nnx.Conv(in_channels, out_channels, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                              use_bias=False, dtype=dtype, rngs=rngs)  # fmt: skip
        self.bn1 = bn(out_channels)
        self.conv2 = nnx.Conv(out_channels, out_channels, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                              rngs=rngs)  # fmt: skip
        # zero-init the last BN scale: each block starts as the identity (Goyal et al. 2017)
        self.bn2 = bn(out_channels, scale_init=nnx.initializers.zeros)
        self.projects = stride != 1 or in_channels != out_channels
        if self.projects:  # the shortcut changes shape: a strided 1x1 conv + BN
            self.project = nnx.Conv(in_channels, out_channels, (1, 1), strides=stride, use_bias=False, dtype=dtype,
                                    rngs=rngs)  # fmt: skip
            self.project_bn = bn(out_channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = self.project_bn(self.project(x)) if self.projects else x
        return nnx.relu(y + shortcut)


class ResNet(nnx.Module):
    """ResNet for small tiles (ResNet-18 with ``blocks=(2, 2, 2, 2)``): a 3x3 stem (no
    max-pool: 32-128 px tiles have few pixels to spare), stages of basic blocks of width
    ``width * 2**i``, each after the first halving H and W, global average pooling,
    dropout, a linear head. Any number of input channels.

    The same interface as SmallCNN (``channels`` is the width of each stage, so
    ``channels[-1]`` is the feature dimension).
    """

    def __init__(self, in_channels: int, n_classes: int, width: int, blocks: list[int], *, rngs: nnx.Rngs,
                 dtype=jnp.float32):  # fmt: skip
        if in_channels < 1 or n_classes < 1:
            raise ValueError(f"ResNet needs in_channels >= 1 and n_classes >= 1, got {in_channels}, {n_classes}")
        if width < 1 or not blocks or min(blocks) < 1:
            raise ValueError(f"ResNet needs width >= 1 and at least one stage of >= 1 block, got {width}, {blocks}")
        self.in_channels, self.n_classes = int(in_channels), int(n_classes)
        self.width, self.blocks_per_stage = int(width), tuple(int(b) for b in blocks)
        self.channels = tuple(self.width * 2**i for i in range(len(self.blocks_per_stage)))
        self.compute_dtype = _dtype_name(dtype)
        self.stem = nnx.Conv(self.in_channels, self.width, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                             rngs=rngs)  # fmt: skip
        self.stem_bn = nnx.BatchNorm(self.width, momentum=0.9, dtype=dtype, rngs=rngs)
        layers, c_in = [], self.width
        for i, (c_out, n) in enumerate(zip(self.channels, self.blocks_per_stage)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1, rngs=rngs, dtype=dtype))
                c_in = c_out
        self.layers = nnx.List(layers)
        self.dropout = nnx.Dropout(DROPOUT_RATE, rngs=rngs)
        self.head = nnx.Linear(c_in, self.n_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        return self.head(self.dropout(self.features(x), rngs=dropout_key)).astype(jnp.float32)

    def features(self, x: jax.Array) -> jax.Array:
        """Penultimate-layer features (after global average pooling), shape (N, channels[-1])."""
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for layer in self.layers:
            x = layer(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def min_tile_size(architecture: str, channels=(), blocks=()) -> int:
    """The smallest tile side a network can take: SmallCNN pools once per block, ResNet
    halves once per stage after the first."""
    return 2 ** len(channels) if architecture == "small_cnn" else 2 ** max(len(blocks) - 1, 0)
