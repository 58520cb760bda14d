"""The exported EMA generator: its BatchNorm recalibration, writing, loading, sampling.

A generator directory holds `generator.json` (everything needed to rebuild the network)
and `state/` (Orbax: EMA parameters + BatchNorm statistics recalibrated for the EMA
weights by `recalibrate_batch_stats`). Sampling runs the generator in eval mode
(`eval_forward`), so tile i depends only on (seeds[i], class): the same seed gives the same
tile whatever the batch size or its position in the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from bioaug.runtime import BioaugError

from .networks import Generator

RECALIBRATION_BATCHES = 16
GENERATOR_FORMAT = "bioaug-gan-generator"
GENERATOR_VERSION = 1
_INT32 = (-(2**31), 2**31 - 1)


def eval_forward(graphdef, params, batch_stats, z, y) -> jax.Array:
    """(z, y) -> images in [0, 1] with eval-mode BatchNorm (traceable; jit it)."""
    g = nnx.merge(graphdef, params, batch_stats)
    return jnp.clip((g(z, y, train=False) + 1.0) * 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def make_eval_forward(graphdef) -> Callable:
    """Jitted (params, batch_stats, z, y) -> images in [0, 1]."""
    return jax.jit(lambda params, stats, z, y: eval_forward(graphdef, params, stats, z, y))


@functools.lru_cache(maxsize=8)
def _make_seed_forward(graphdef, z_dim: int) -> Callable:
    """Jitted (params, batch_stats, seeds, y) -> images; z is drawn from the seeds inside."""
    return jax.jit(lambda params, stats, seeds, y: eval_forward(graphdef, params, stats, z_from_seeds(seeds, z_dim), y))


def abstract_generator(
    z_dim: int,
    n_classes: int,
    g_channels,
    out_channels: int,
    conditional_bn: bool = False,
    output: str = "tanh",
    noise_inputs: bool = False,
    tanh_scale: float = 1.0,
    padding: str = "zeros",
    noise_variance=None,
):
    """(graphdef, abstract params, abstract batch stats) without allocating weights."""
    g = nnx.eval_shape(
        lambda: Generator(
            z_dim, n_classes, g_channels, out_channels, rngs=nnx.Rngs(0), conditional_bn=conditional_bn,
            output=output, noise_inputs=noise_inputs, tanh_scale=tanh_scale, padding=padding,
            noise_variance=noise_variance,
        )
    )  # fmt: skip
    graphdef, params, stats = nnx.split(g, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(stats)


def _noise_variance(entry):
    """generator.json's {"a": [...], "b": [...]} (gan.pixel_noise fitted) as Generator takes it."""
    return None if entry is None else (tuple(entry["a"]), tuple(entry["b"]))


def recalibrate_batch_stats(
    graphdef,
    params,
    batch_stats,
    *,
    key: jax.Array,
    classes,
    batch_size: int,
    z_dim: int,
    n_batches: int = RECALIBRATION_BATCHES,
):
    """Exact BatchNorm statistics for generator weights `params` (e.g. the EMA ones).

    Runs the generator in training mode on `n_batches` batches of random z and
    class-uniform y (from `classes`) and returns running mean/var set to the averages of
    the per-batch means and variances. `batch_stats` only gives the structure.
    """
    g = nnx.merge(graphdef, params, batch_stats, copy=True)  # wraps arrays, no compute
    for _, node in nnx.iter_graph(g):
        if isinstance(node, nnx.BatchNorm):
            node.momentum = 0.0  # running stats := this batch's stats
    run = _recalibration_fn(nnx.graphdef(g), batch_size, z_dim)
    template = jax.tree.map(jnp.zeros_like, batch_stats)
    return run(params, template, jnp.asarray(classes, jnp.int32), jax.random.split(key, n_batches))


@functools.lru_cache(maxsize=8)
def _recalibration_fn(graphdef0, batch_size: int, z_dim: int):
    def one_batch(params, template, classes, k):
        kz, ky = jax.random.split(k)
        z = jax.random.normal(kz, (batch_size, z_dim))
        y = classes[jax.random.randint(ky, (batch_size,), 0, classes.shape[0])]
        m = nnx.merge(graphdef0, params, template)
        m(z, y, train=True)
        return nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

    @jax.jit
    def run(params, template, classes, keys):
        stats = jax.lax.map(lambda k: one_batch(params, template, classes, k), keys)
        return jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)

    return run


def write_generator(directory: Path, params, batch_stats, meta: dict[str, Any]) -> None:
    """Write a generator directory (call inside `atomic_path`; `directory` must not exist)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True)
    # Written by one process (in a multi-process run, process 0 alone exports): Orbax's
    # default would wait at a barrier for all processes and hang.
    me = jax.process_index()
    ckptr = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    )
    try:
        # as numpy: Orbax refuses host-local jax arrays where several processes exist
        state = jax.tree.map(np.asarray, {"params": params, "batch_stats": batch_stats})
        ckptr.save(directory / "state", state)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    meta = {"format": GENERATOR_FORMAT, "version": GENERATOR_VERSION, **meta}
    (directory / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")


@dataclasses.dataclass(eq=False)
class GeneratorHandle:
    """A loaded EMA generator ready to sample from."""

    path: Path
    meta: dict[str, Any]
    graphdef: Any
    params: Any
    batch_stats: Any
    _forward: Callable = dataclasses.field(repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def tile_size(self) -> int:
        return int(self.meta["tile_size"])

    @property
    def channels(self) -> int:
        return int(self.meta["out_channels"])

    @property
    def z_dim(self) -> int:
        return int(self.meta["z_dim"])

    @property
    def n_classes(self) -> int:
        return int(self.meta["n_classes"])

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])


def load_generator(generator_dir: Path) -> GeneratorHandle:
    """Load a generator directory written by `train_gan`."""
    generator_dir = Path(generator_dir).resolve()
    meta_path = generator_dir / "generator.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise BioaugError(f"{meta_path}: missing; is {generator_dir} a trained generator?") from None
    except json.JSONDecodeError as e:
        raise BioaugError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format") != GENERATOR_FORMAT:
        raise BioaugError(f"{meta_path}: not a bioaug generator (format {meta.get('format')!r})")
    if meta.get("version") != GENERATOR_VERSION:
        raise BioaugError(
            f"{meta_path}: generator format version {meta.get('version')!r}, "
            f"this bioaug reads version {GENERATOR_VERSION}"
        )
    try:
        graphdef, params, stats = abstract_generator(
            int(meta["z_dim"]),
            int(meta["n_classes"]),
            meta["g_channels"],
            int(meta["out_channels"]),
            bool(meta.get("conditional_bn", False)),
            str(meta.get("g_output", "tanh")),
            bool(meta.get("noise_inputs", False)),
            float(meta.get("tanh_scale", 1.0)),
            str(meta.get("g_padding", "zeros")),  # generators exported before the option
            _noise_variance(meta.get("noise_variance")),
        )
    except KeyError as e:
        raise BioaugError(f"{meta_path}: missing field {e}") from None
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), {"params": params, "batch_stats": stats}
    )
    ckptr = ocp.StandardCheckpointer()
    try:
        restored = ckptr.restore(generator_dir / "state", target)
    finally:
        ckptr.close()
    return GeneratorHandle(
        path=generator_dir,
        meta=meta,
        graphdef=graphdef,
        params=restored["params"],
        batch_stats=restored["batch_stats"],
        _forward=_make_seed_forward(graphdef, int(meta["z_dim"])),
    )


def z_from_seeds(seeds: jax.Array, z_dim: int) -> jax.Array:
    """z_i = normal(key(seeds[i]), (z_dim,)), vectorised (traceable)."""
    return jax.vmap(lambda s: jax.random.normal(jax.random.key(s), (z_dim,)))(seeds)


def _padded_batch_size(n: int, batch_size: int) -> int:
    """batch_size, or for small requests the next power of two >= n (few distinct compiles)."""
    if n >= batch_size:
        return batch_size
    return min(batch_size, max(8, 1 << (n - 1).bit_length()))


def sample_tiles(gen: GeneratorHandle, class_index: int, seeds: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Draw one tile per seed for `class_index`: float32 (n, H, W, C) in [0, 1].

    Deterministic per seed (z_i = jax.random.normal(jax.random.key(int(seeds[i])), (z_dim,)),
    eval-mode EMA generator), so tile i does not depend on the batch it was drawn in.
    Batches are jitted with a fixed size; the last one is padded.
    """
    if not 0 <= int(class_index) < gen.n_classes:
        raise BioaugError(
            f"class index {class_index} out of range for a generator with "
            f"{gen.n_classes} classes ({', '.join(gen.class_names)})"
        )
    if batch_size < 1:
        raise BioaugError(f"generate.batch_size: must be >= 1, got {batch_size}")
    seeds = np.asarray(seeds).reshape(-1)
    n = seeds.size
    h, c = gen.tile_size, gen.channels
    if n == 0:
        return np.zeros((0, h, h, c), np.float32)
    if not np.issubdtype(seeds.dtype, np.integer):
        raise BioaugError(f"seeds must be integers, got dtype {seeds.dtype}")
    if not jax.config.jax_enable_x64 and (seeds.min() < _INT32[0] or seeds.max() > _INT32[1]):
        raise BioaugError("seeds must fit in int32 (enable jax x64 for larger seeds)")
    seed_dtype = np.int64 if jax.config.jax_enable_x64 else np.int32
    bs = _padded_batch_size(n, batch_size)
    out = np.empty((n, h, h, c), np.float32)
    y = jnp.full((bs,), int(class_index), jnp.int32)
    for lo in range(0, n, bs):
        chunk = seeds[lo : lo + bs].astype(seed_dtype)
        m = chunk.size
        if m < bs:
            chunk = np.concatenate([chunk, np.zeros(bs - m, seed_dtype)])
        imgs = gen._forward(gen.params, gen.batch_stats, chunk, y)
        out[lo : lo + m] = np.asarray(imgs)[:m]
    return out
