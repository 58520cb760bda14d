"""Training loop of the class-conditional GAN: pure jitted step, EMA, checkpoints, logs.

The whole train state is one pytree of arrays (a dict) that a single jitted, donated step
function maps to the next state: one D update then one G update. The host only talks to
the device at log and checkpoint steps. Checkpoints (Orbax) hold the complete state, so a
restarted run continues bit for bit as if it had never stopped: the batch of step k and
the device randomness of step k depend only on (seed, k).

Options of the step (all off by default): adaptive augmentation (ADA: DiffAugment per
image with a probability p steered by sign(D(real))), lazy R1 on real images, the LeCam
regulariser, the mode-seeking diversity term of G (capped at the real same-class
diversity, `mode_seeking_target`; it is part of the logged g_loss), bfloat16 compute. The
step is data-parallel over all devices of a 1-D mesh (`make_mesh`);
`maybe_initialize_distributed` joins multi-process (e.g. SLURM) runs.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import PartitionSpec as P

from bioaug.runtime import BioaugError, atomic_path, progress

from . import losses
from .augment import diff_augment
from .config import ARCHITECTURE_KEYS, GanConfig
from .input_pipeline import (ArrayTiles, BatchLoader, as_tile_source, gather_batch,
                             same_class_pair_distance)
from .networks import SpectralU, build_networks
from .sample import make_eval_forward, write_generator

CSV_HEADER = ("step", "d_loss", "g_loss", "d_real", "d_fake", "r1", "augment_p", "steps_per_s",
              "elapsed_s")
N_METRICS = 6  # sums of d_loss, g_loss, d_real, d_fake, r1 penalty; step count
# Runtime hyperparameters of the jitted step (a float32 vector, so changes don't recompile).
HYPER = ("lr_g", "lr_d", "ema_beta", "ada_target", "ada_adjust", "ada_interval", "r1_scale",
         "r1_interval", "lecam_weight", "mode_seeking_weight", "mode_seeking_target")
LECAM_DECAY = 0.99  # moving averages of D(real), D(fake) for the LeCam regulariser
DATA_AXIS = "data"  # the mesh axis the batch is split over
RECALIBRATION_BATCHES = 16
GRID_PER_CLASS = 8
RUN_META = "bioaug_gan_run.json"  # beside the Orbax step folders in checkpoint_dir

# Fixed sub-streams of the gan seed for things outside the training state.
_STREAM_RECALIBRATE = 1
_STREAM_GRID = 2


# ----------------------------------------------------------------------------- devices
def maybe_initialize_distributed(log: logging.Logger | None = None) -> bool:
    """Join a multi-process JAX run when the job was launched as several processes.

    Where SLURM started several tasks for this job step (`srun` with SLURM_NTASKS > 1,
    e.g. one task per node or per GPU), or another launcher that JAX's cluster detection
    knows (Open MPI's OMPI_COMM_WORLD_SIZE > 1, or JAX_COORDINATOR_ADDRESS with
    JAX_NUM_PROCESSES > 1), this calls `jax.distributed.initialize()`, which finds the
    coordinator, the process count and this process's id from that environment. Then
    `jax.devices()` lists the devices of all processes and the data-parallel mesh of
    `make_mesh` spans all of them; each process gathers only its rows of every batch.

    It must run before any JAX computation (it is the first thing `train_gan` does). In a
    single process (the usual case, including a one-task SLURM job) it does nothing and
    returns False; it returns True when this process is (now) part of a multi-process run.
    """
    log = log or logging.getLogger("bioaug.gan")
    if jax.distributed.is_initialized():
        return True
    env = os.environ

    def count(var: str) -> int:
        try:
            return int(env.get(var, "1") or 1)
        except ValueError:
            return 1

    slurm = "SLURM_PROCID" in env and count("SLURM_NTASKS") > 1
    mpi = count("OMPI_COMM_WORLD_SIZE") > 1
    explicit = bool(env.get("JAX_COORDINATOR_ADDRESS")) and count("JAX_NUM_PROCESSES") > 1
    if not (slurm or mpi or explicit):
        return False
    try:
        if explicit:
            jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], count("JAX_NUM_PROCESSES"),
                                       int(env.get("JAX_PROCESS_ID", "0")))
        else:
            jax.distributed.initialize()
    except RuntimeError as e:  # e.g. a JAX computation ran before this call
        raise BioaugError(f"could not start multi-process JAX ({e}); train_gan must be the "
                          f"first JAX user of the process") from None
    log.info("multi-process JAX: process %d of %d, %d devices in all (%d local)",
             jax.process_index(), jax.process_count(), jax.device_count(),
             jax.local_device_count())
    return True


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh (axis "data") over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def _shardings(mesh: jax.sharding.Mesh):
    """(replicated, batch-sharded) NamedShardings of a mesh."""
    return (jax.sharding.NamedSharding(mesh, P()),
            jax.sharding.NamedSharding(mesh, P(DATA_AXIS)))


def _check_batch_divisible(cfg: GanConfig, mesh: jax.sharding.Mesh) -> None:
    n = mesh.size
    if cfg.batch_size % n:
        raise BioaugError(
            f"gan.batch_size: {cfg.batch_size} is not divisible by the {n} devices the batch "
            f"is split over; use a multiple of {n} (e.g. {max(n, cfg.batch_size // n * n)})")


def _host(x) -> np.ndarray:
    """A replicated (or local) array as numpy, also where it spans several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


# ----------------------------------------------------------------------------- state
def _structural(cfg: GanConfig) -> GanConfig:
    """cfg without the fields that do not change compiled code (cache key).

    Learning rates, the EMA decay, the ADA settings and the regulariser strengths are
    step arguments, not compile-time constants, so changing them (e.g. on resume) does
    not recompile; only turning R1 / LeCam on or off does.
    """
    return dataclasses.replace(cfg, steps=1, log_every=1, checkpoint_every=1, seed=0,
                               lr_g=1.0, lr_d=1.0, ema_half_life_steps=1.0,
                               augment_p=0.0, ada_target=0.5, ada_interval=1, ada_kimg=1.0,
                               r1_gamma=float(cfg.r1_gamma > 0), r1_interval=1,
                               lecam_weight=float(cfg.lecam_weight > 0),
                               mode_seeking_weight=float(cfg.mode_seeking_weight > 0))


@functools.lru_cache(maxsize=8)
def _graphdefs_and_init(cfg: GanConfig):
    g_abs, d_abs = nnx.eval_shape(lambda: build_networks(cfg, jax.random.key(0)))
    g_def, d_def = nnx.graphdef(g_abs), nnx.graphdef(d_abs)
    tx_g, tx_d = make_optimizers(cfg)

    @jax.jit
    def init(key, augment_p):
        k_init, k_train = jax.random.split(key)
        g, d = build_networks(cfg, k_init)
        g_params, g_stats = nnx.state(g, nnx.Param, nnx.BatchStat)
        d_params, d_sn = nnx.state(d, nnx.Param, SpectralU)
        g_params, g_stats = nnx.to_pure_dict(g_params), nnx.to_pure_dict(g_stats)
        d_params, d_sn = nnx.to_pure_dict(d_params), nnx.to_pure_dict(d_sn)
        state = {
            "g": {"params": g_params, "batch_stats": g_stats},
            "d": {"params": d_params, "sn": d_sn},
            "opt_g": tx_g.init(g_params),
            "opt_d": tx_d.init(d_params),
            "ema": jax.tree.map(jnp.copy, g_params),
            "key": jax.random.key_data(k_train),
            "step": jnp.zeros((), jnp.int32),
            "nonfinite": jnp.full((), -1, jnp.int32),  # first step with a non-finite loss
            "metrics": jnp.zeros((N_METRICS,), jnp.float32),  # sums since the last log; count
            "aug_p": jnp.asarray(augment_p, jnp.float32),     # ADA augmentation probability
            "ada_acc": jnp.zeros((2,), jnp.float32),  # sum of sign(D(real)), count, this interval
            "lecam": jnp.zeros((2,), jnp.float32),    # moving averages of D(real), D(fake)
        }
        return state

    return g_def, d_def, init


def init_train_state(cfg: GanConfig, mesh: jax.sharding.Mesh | None = None):
    """Fresh (graphdef_g, graphdef_d, state) for a config, initialised from cfg.seed.

    One compiled init (not op by op). The non-partitionable threefry lowering is pinned:
    it compiles about 3x faster on CPU, and pinning keeps the initial weights independent
    of the global `jax_threefry_partitionable` setting. With a mesh, the state is
    replicated over it.
    """
    g_def, d_def, init = _graphdefs_and_init(_structural(cfg))
    initial_p = cfg.augment_p if cfg.ada else (1.0 if cfg.diffaugment else 0.0)
    with jax.threefry_partitionable(False):
        state = init(jax.random.key(cfg.seed), np.float32(initial_p))
    if mesh is not None:
        state = jax.device_put(state, _shardings(mesh)[0])
    return g_def, d_def, state


def make_optimizers(cfg: GanConfig):
    b1, b2 = cfg.betas
    return optax.adam(cfg.lr_g, b1=b1, b2=b2), optax.adam(cfg.lr_d, b1=b1, b2=b2)


@functools.lru_cache(maxsize=8)
def _cached_train_step(cfg: GanConfig, classes: tuple[int, ...],
                       mesh: jax.sharding.Mesh | None = None):
    g_def, d_def, _ = _graphdefs_and_init(cfg)
    return make_train_step(cfg, g_def, d_def, np.asarray(classes), mesh)


def mode_seeking_target(tiles, labels: np.ndarray, seed: int) -> float:
    """The cap of the mode-seeking term: how far apart two real tiles of one class are
    (mean |x_a - x_b| in the generator's [-1, 1] range) per mean latent distance."""
    return 2.0 * same_class_pair_distance(tiles, labels, seed) / losses.LATENT_PAIR_DISTANCE


def step_hyperparams(cfg: GanConfig, mode_seeking_cap: float = math.inf) -> jax.Array:
    """The runtime hyperparameters of the step, in the order of `HYPER`; `mode_seeking_cap`
    is `mode_seeking_target` of the training tiles (inf: MSGAN's uncapped term)."""
    values = {"lr_g": cfg.lr_g, "lr_d": cfg.lr_d, "ema_beta": cfg.ema_beta,
              "ada_target": cfg.ada_target, "ada_adjust": cfg.ada_adjust,
              "ada_interval": cfg.ada_interval,
              "r1_scale": 0.5 * cfg.r1_gamma * cfg.r1_interval,  # lazy R1 (StyleGAN2)
              "r1_interval": cfg.r1_interval, "lecam_weight": cfg.lecam_weight,
              "mode_seeking_weight": cfg.mode_seeking_weight,
              "mode_seeking_target": mode_seeking_cap}
    return jnp.asarray([values[k] for k in HYPER], jnp.float32)


def make_train_step(cfg: GanConfig, g_def, d_def, classes: np.ndarray,
                    mesh: jax.sharding.Mesh | None = None):
    """The jitted step: (state, real x in [0, 1], real y, hyper) -> state; `state` is donated.

    `hyper` is `step_hyperparams(cfg)`. `classes` are the labels present in the training
    set; fake labels are drawn uniformly from them (the real batches are class-balanced too).

    With a mesh (`make_mesh`), the step is data-parallel: the state is replicated, the real
    batch and the fake batches are split over the mesh's "data" axis, and XLA inserts the
    all-reduces of the gradients and of the BatchNorm statistics (which stay those of the
    whole batch). The same code runs on 1 CPU, 1 GPU or several devices.
    """
    b1, b2 = cfg.betas
    policy = tuple(cfg.diffaugment)
    ada = bool(cfg.ada) and bool(policy)
    use_r1, use_lecam = cfg.r1_gamma > 0, cfg.lecam_weight > 0
    use_ms = cfg.mode_seeking_weight > 0
    classes = jnp.asarray(classes, jnp.int32)
    z_dim, kind = cfg.z_dim, cfg.loss
    if mesh is not None:
        replicated, batched = _shardings(mesh)
        shard = lambda a: jax.lax.with_sharding_constraint(a, batched)  # noqa: E731
    else:
        shard = lambda a: a  # noqa: E731

    def run_g(params, stats, z, y):
        g = nnx.merge(g_def, params, stats)
        x = g(z, y, train=True)
        return x, nnx.to_pure_dict(nnx.state(g, nnx.BatchStat))

    def run_d(params, sn, x, y):
        d = nnx.merge(d_def, params, sn) if sn else nnx.merge(d_def, params)
        logits = d(x, y, update_sn=True)
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

    def step(state, real_x, real_y, hyper):
        h = dict(zip(HYPER, hyper))
        b = real_x.shape[0]
        tx_g = optax.adam(h["lr_g"], b1=b1, b2=b2)
        tx_d = optax.adam(h["lr_d"], b1=b1, b2=b2)
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        k_fake_d, k_aug_d, k_fake_g, k_aug_g = jax.random.split(key, 4)
        real = real_x * 2.0 - 1.0
        p = state["aug_p"]
        step_no = state["step"] + 1
        g_params, g_stats = state["g"]["params"], state["g"]["batch_stats"]
        d_params, sn = state["d"]["params"], state["d"]["sn"]  # sn is {} without spectral norm

        # ---- D update: real and fake in one batch (D has no batch-dependent layers),
        # interleaved (real 0, fake 0, real 1, ...) so each device's rows of the fused
        # batch are its own real and fake rows: no data moves between devices.
        z, yf = draw(k_fake_d, b)
        fake, g_stats = run_g(g_params, g_stats, z, yf)
        x_all = jnp.stack([real, jax.lax.stop_gradient(fake)], axis=1).reshape(2 * b, *real.shape[1:])
        x_all = augment(shard(x_all), k_aug_d, p)
        y_all = shard(jnp.stack([real_y, yf], axis=1).reshape(2 * b))
        lecam_old = state["lecam"]

        def d_objective(dp, x):
            logits, new_sn = run_d(dp, sn, x, y_all)
            pairs = logits.reshape(b, 2)
            lr, lf = pairs[:, 0], pairs[:, 1]
            loss = losses.d_loss(kind, lr, lf)
            means = jax.lax.stop_gradient(jnp.stack([jnp.mean(lr), jnp.mean(lf)]))
            lecam = LECAM_DECAY * lecam_old + (1.0 - LECAM_DECAY) * means
            if use_lecam:
                loss = loss + h["lecam_weight"] * losses.lecam_reg(lr, lf, lecam[0], lecam[1])
            return loss, (new_sn, lr, lf, lecam)

        def d_loss_plain(dp):
            loss, aux = d_objective(dp, x_all)
            return loss, (*aux, jnp.zeros((), jnp.float32))

        def d_loss_r1(dp):
            # R1 on the images D sees (augmented reals, as in StyleGAN2-ADA): the gradient
            # of sum(D(real)) with respect to the fused input is zero on the fake rows.
            def real_sum(x):
                loss, aux = d_objective(dp, x)
                return jnp.sum(aux[1]), (loss, aux)

            grad_x, (loss, aux) = jax.grad(real_sum, has_aux=True)(x_all)
            penalty = jnp.sum(jnp.square(grad_x.astype(jnp.float32))) / b
            return loss + h["r1_scale"] * penalty, (*aux, penalty)

        plain = jax.value_and_grad(d_loss_plain, has_aux=True)
        if use_r1:  # lazy: only every r1_interval steps (r1_scale includes that factor)
            with_r1 = jax.value_and_grad(d_loss_r1, has_aux=True)
            do_r1 = (step_no % h["r1_interval"].astype(jnp.int32)) == 0
            (d_loss, (sn, lr, lf, lecam, r1)), d_grads = jax.lax.cond(do_r1, with_r1, plain,
                                                                       d_params)
        else:
            (d_loss, (sn, lr, lf, lecam, r1)), d_grads = plain(d_params)
        upd, opt_d = tx_d.update(d_grads, state["opt_d"], d_params)
        d_params = optax.apply_updates(d_params, upd)
        d_real, d_fake = jnp.mean(lr), jnp.mean(lf)

        # ---- G update through the updated D (D's parameters are constants here).
        z2, yf2 = draw(k_fake_g, b, pairs=use_ms)

        def g_loss_fn(gp):
            x, new_stats = run_g(gp, g_stats, z2, yf2)
            logits, new_sn = run_d(d_params, sn, augment(x, k_aug_g, p), yf2)
            loss = losses.g_loss(kind, logits)
            if use_ms:
                loss = loss + h["mode_seeking_weight"] * losses.mode_seeking(
                    x, z2, h["mode_seeking_target"])
            return loss, (new_stats, new_sn)

        (g_loss, (g_stats, sn)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
        upd, opt_g = tx_g.update(g_grads, state["opt_g"], g_params)
        g_params = optax.apply_updates(g_params, upd)
        beta = h["ema_beta"]
        ema = jax.tree.map(lambda e, q: beta * e + (1.0 - beta) * q, state["ema"], g_params)

        # ---- ADA: every ada_interval steps move p by ada_adjust towards E[sign(D(real))]
        # = ada_target (StyleGAN2-ADA's r_t heuristic).
        acc = state["ada_acc"] + jnp.stack([jnp.sum(jnp.sign(lr)), jnp.float32(b)])
        aug_p = p
        if ada:
            adjust_now = (step_no % h["ada_interval"].astype(jnp.int32)) == 0
            r_t = acc[0] / jnp.maximum(acc[1], 1.0)
            moved = jnp.clip(p + jnp.sign(r_t - h["ada_target"]) * h["ada_adjust"], 0.0, 1.0)
            aug_p = jnp.where(adjust_now, moved, p)
            acc = jnp.where(adjust_now, jnp.zeros_like(acc), acc)

        finite = jnp.isfinite(d_loss) & jnp.isfinite(g_loss)
        nonfinite = jnp.where((state["nonfinite"] < 0) & ~finite, step_no, state["nonfinite"])
        metrics = state["metrics"] + jnp.stack([d_loss, g_loss, d_real, d_fake, r1,
                                                jnp.float32(1)])
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
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0, in_shardings=(replicated, batched, batched, replicated),
                   out_shardings=replicated)


# ----------------------------------------------------------------------------- batch norm
def recalibrate_batch_stats(graphdef, params, batch_stats, *, key: jax.Array, classes,
                            batch_size: int, z_dim: int,
                            n_batches: int = RECALIBRATION_BATCHES):
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


def load_checkpoint(checkpoint_dir: Path, cfg: GanConfig, step: int | None = None):
    """(step, train state) of a checkpoint (the latest by default); for inspection and tests."""
    _, _, template = init_train_state(cfg)
    mgr = ocp.CheckpointManager(Path(checkpoint_dir).resolve(),
                                options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise BioaugError(f"{checkpoint_dir}: no GAN checkpoint")
        return step, _restore(mgr, step, template)
    finally:
        mgr.close()


# ----------------------------------------------------------------------------- helpers
def _restore(mgr: ocp.CheckpointManager, step: int, template, mesh=None):
    """Restore a train state shaped like `template`, placed like a fresh one.

    With a mesh, Orbax places every array replicated on it directly (what the jitted step
    expects, so no recompile). Without one, go through host memory and let jnp.asarray
    place them uncommitted on the default device (jit treats committed arrays as another
    signature). Entries a checkpoint of an older bioaug lacks (e.g. the ADA probability)
    keep the template's (fresh) values.
    """
    sharding = _shardings(mesh)[0] if mesh is not None else None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            template)
    try:
        restored = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception:  # an older checkpoint: restore the entries it has with today's shapes
        item_dir = Path(mgr.directory) / str(step) / "default"
        meta = ocp.StandardCheckpointHandler().metadata(item_dir)
        shapes = lambda tree: sorted(tuple(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
        same = lambda k: shapes(meta[k]) == shapes(abstract[k])  # noqa: E731 (keys: '0' vs 0)
        keep = {k: v for k, v in abstract.items() if k in meta.keys() and same(k)}
        if not {"g", "d", "opt_g", "opt_d", "ema", "step"} <= keep.keys():
            raise
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(
                item_dir, args=ocp.args.PyTreeRestore(
                    item=keep, restore_args=ocp.checkpoint_utils.construct_restore_args(keep),
                    partial_restore=True))
    if mesh is None:
        restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)
    return {k: restored[k] if k in restored else template[k] for k in template}


def _data_fingerprint(tiles, labels: np.ndarray) -> str:
    """A hash of the data's shape, labels and a strided sample of tiles (memory maps and
    tile sources included: the same tiles give the same fingerprint however they are held)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(tiles.shape), "float32")).encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    stride = max(1, len(tiles) // 4096)  # enough to notice other data, cheap for big sets
    sample = np.arange(0, len(tiles), stride)
    h.update(np.ascontiguousarray(gather_batch(tiles, labels, sample)[0]).tobytes())
    return h.hexdigest()


def _check_resume(meta_path: Path, cfg: GanConfig, fingerprint: str, latest: int, log) -> None:
    """Refuse a checkpoint of another architecture; warn about other changes."""
    try:
        old = json.loads(meta_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    old_cfg, new_cfg = old.get("config", {}), cfg.to_dict()
    arch = [k for k in ARCHITECTURE_KEYS if k in old_cfg and old_cfg[k] != new_cfg[k]]
    if arch:
        raise BioaugError(
            f"{meta_path.parent}: the checkpoint (step {latest}) was trained with other "
            + ", ".join(f"gan.{k}={old_cfg[k]!r} (now {new_cfg[k]!r})" for k in arch)
            + "; delete this folder to train from scratch")
    ignore = {"steps", "log_every", "checkpoint_every"}
    other = [k for k in new_cfg if k not in ignore and k in old_cfg and old_cfg[k] != new_cfg[k]]
    if other:
        log.warning("resuming from step %d with changed settings: %s", latest,
                    ", ".join(f"gan.{k} {old_cfg[k]!r} -> {new_cfg[k]!r}" for k in other))
    if old.get("data") not in (None, fingerprint):
        log.warning("resuming from step %d on different training tiles than the checkpoint's",
                    latest)


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _prepare_csv(path: Path, keep_upto: int) -> float:
    """Rewrite the log keeping rows with step <= keep_upto; return the last kept elapsed_s.

    Rows are kept once each (the first of a step), complete rows only, so a log cut off
    mid-row or holding rows logged after the checkpoint by a killed run is repaired.
    """
    rows: list[dict[str, str]] = []
    seen: set[int] = set()
    if keep_upto > 0 and path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(row["step"])
                    float(row["elapsed_s"])
                except (KeyError, TypeError, ValueError):
                    continue
                if step <= keep_upto and step not in seen:
                    seen.add(step)
                    rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_HEADER, extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    try:
        return float(rows[-1]["elapsed_s"]) if rows else 0.0
    except (KeyError, ValueError):
        return 0.0


def _validate_data(tiles, labels, class_names, cfg: GanConfig | dict):
    """(tile source, int32 labels, GanConfig); arrays that are in memory are checked in full,
    memory-mapped tiles and tile sources per batch (by the loader)."""
    source = as_tile_source(tiles)
    labels = np.asarray(labels)
    shape = tuple(source.shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[0] == 0:
        raise BioaugError(f"GAN training tiles: expected a non-empty (N, H, H, C) array, "
                          f"got shape {shape}")
    if labels.shape != (shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise BioaugError(f"GAN training labels: expected {shape[0]} integer labels, got "
                          f"shape {labels.shape} dtype {labels.dtype}")
    n_classes = len(class_names)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise BioaugError(f"GAN training labels: values must be in [0, {n_classes}) for classes "
                          f"{list(class_names)}, got range [{labels.min()}, {labels.max()}]")
    if isinstance(source, ArrayTiles) and source.in_memory:
        source = ArrayTiles(source.array.astype(np.float32, copy=False))
        if len(source) <= 1_000_000 and not np.isfinite(source.array).all():
            raise BioaugError("GAN training tiles contain NaN or Inf values")
    if isinstance(cfg, dict):
        cfg = GanConfig.from_dict(cfg, shape[1], shape[3], n_classes)
    elif (cfg.tile_size, cfg.channels, cfg.n_classes) != (shape[1], shape[3], n_classes):
        raise BioaugError(
            f"GanConfig is for {cfg.tile_size} px, {cfg.channels} channel(s), {cfg.n_classes} classes "
            f"but the tiles are {shape[1]} px, {shape[3]} channel(s) with {n_classes} classes")
    return source, labels.astype(np.int32), cfg


# ----------------------------------------------------------------------------- entry point
def train_gan(tiles, labels: np.ndarray, class_names: list[str],
              cfg: GanConfig | dict, *, checkpoint_dir: Path, generator_dir: Path,
              log_csv: Path, samples_png: Path, log: logging.Logger | None = None,
              devices=None) -> dict:
    """Train (or resume training) the GAN and export the EMA generator.

    tiles: float32 (N, H, W, C) in [0, 1], as an in-memory array, a memory-mapped one
    (`np.load(path, mmap_mode="r")`) or a tile source such as
    `input_pipeline.ShardedTiles` (rows of several memory-mapped shards, never loaded
    whole); labels: ints in [0, len(class_names)). Batches are gathered by a background
    thread two steps ahead. All devices (`devices`, default `jax.devices()`) train
    data-parallel; gan.batch_size must be divisible by their number. Under a multi-process
    launcher (SLURM with several tasks) JAX's distributed runtime is started first
    (`maybe_initialize_distributed`).

    Resumes automatically from the latest checkpoint in `checkpoint_dir`. Writes
    `generator_dir` (EMA generator, Orbax + generator.json), `samples_png` (8 EMA samples
    per class) and `log_csv`. Raises FloatingPointError if a loss became non-finite (the
    last finite checkpoint is kept). Returns steps_done, steps_per_s, d_loss, g_loss, seconds.
    """
    log = log or logging.getLogger("bioaug.gan")
    maybe_initialize_distributed(log)
    t_start = time.perf_counter()
    tiles, labels, cfg = _validate_data(tiles, labels, class_names, cfg)
    class_names = [str(c) for c in class_names]
    classes = np.unique(labels)
    missing = [class_names[i] for i in range(cfg.n_classes) if i not in set(classes.tolist())]
    if missing:
        log.warning("no training tiles for class(es) %s: the generator cannot learn them",
                    ", ".join(missing))
    mesh = make_mesh(devices)
    _check_batch_divisible(cfg, mesh)
    replicated, batched = _shardings(mesh)
    n_proc, proc = jax.process_count(), jax.process_index()
    is_main = proc == 0
    rows = None
    if n_proc > 1:  # each process gathers its own rows of the (globally sampled) batch
        if cfg.batch_size % n_proc:
            raise BioaugError(f"gan.batch_size: {cfg.batch_size} is not divisible by the "
                              f"{n_proc} processes")
        per = cfg.batch_size // n_proc
        rows = slice(proc * per, (proc + 1) * per)
    checkpoint_dir = Path(checkpoint_dir).resolve()
    log_csv = Path(log_csv)
    # The log is kept beside the checkpoints (not a declared output, so Snakemake does not
    # delete it when a job fails or is preempted) and published to log_csv at the end:
    # a resumed run then still has every row from before its checkpoint.
    work_csv = Path(checkpoint_dir).resolve() / "train_log.csv"

    g_def, d_def, state = init_train_state(cfg, mesh)
    fingerprint = _data_fingerprint(tiles, labels)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    mgr = ocp.CheckpointManager(
        checkpoint_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    bar = None
    csv_file = None
    loader = None
    try:
        start = 0
        latest = mgr.latest_step()
        if latest is not None:
            _check_resume(checkpoint_dir / RUN_META, cfg, fingerprint, latest, log)
            if latest > cfg.steps:
                raise BioaugError(
                    f"gan.steps: {cfg.steps}, but {checkpoint_dir} holds a checkpoint at step "
                    f"{latest}; raise gan.steps or delete the folder to train from scratch")
            state = _restore(mgr, latest, state, mesh)
            start = int(_host(state["step"]))
            log.info("resumed GAN training from %s at step %d", checkpoint_dir, start)
        if is_main:
            _write_json_atomic(checkpoint_dir / RUN_META,
                               {"config": cfg.to_dict(), "data": fingerprint})
            elapsed_offset = _prepare_csv(work_csv, start)
        else:
            elapsed_offset = 0.0

        step_fn = _cached_train_step(_structural(cfg), tuple(int(c) for c in classes), mesh)
        cap = (mode_seeking_target(tiles, labels, cfg.seed) if cfg.mode_seeking_weight > 0
               else math.inf)
        if math.isfinite(cap):
            log.info("mode-seeking term capped at a latent/pixel distance ratio of %.3f "
                     "(that of real same-class pairs)", cap)
        hyper = jax.device_put(step_hyperparams(cfg, cap), replicated)
        zero_metrics = np.zeros((N_METRICS,), np.float32)  # put anew each time (donated)
        global_shape = lambda a: (cfg.batch_size,) + a.shape[1:]  # noqa: E731

        def place(x, y):
            return (jax.make_array_from_process_local_data(batched, x, global_shape(x)),
                    jax.make_array_from_process_local_data(batched, y, global_shape(y)))

        last = {"d_loss": math.nan, "g_loss": math.nan}
        steps_per_s = math.nan
        if start < cfg.steps:
            loader = BatchLoader(tiles, labels, cfg.batch_size, cfg.seed, start_step=start,
                                 place=place, prefetch=2,
                                 check_finite=not getattr(tiles, "in_memory", False), rows=rows)
            if is_main:
                csv_file = open(work_csv, "a", newline="")
                writer = csv.writer(csv_file)
            bar = progress(total=cfg.steps - start, desc="train_gan")
            t_run = time.perf_counter()
            t_mark, step_mark = t_run, start
            t_timed, steps_timed = 0.0, 0  # excludes the first (compiling) step
            for done in range(start + 1, cfg.steps + 1):
                try:
                    x, y = next(loader)
                except FloatingPointError as e:
                    raise BioaugError(str(e)) from None
                state = step_fn(state, x, y, hyper)
                bar.update(1)
                if done == start + 1:  # one sync after compiling, so steps/s are honest
                    jax.block_until_ready(state["step"])
                    now = time.perf_counter()
                    log.info("GAN step compiled and ran in %.1f s", now - t_run)
                    t_mark, step_mark = now, done
                is_log = done % cfg.log_every == 0 or done == cfg.steps
                is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
                if not (is_log or is_ckpt):
                    continue
                bad = int(_host(state["nonfinite"]))
                if bad >= 0:
                    raise FloatingPointError(
                        f"GAN training diverged: non-finite loss at step {bad} (noticed at step "
                        f"{done}); the last finite checkpoint (step {mgr.latest_step()}) in "
                        f"{checkpoint_dir} is kept. Lower gan.lr_d / gan.lr_g or check the tiles.")
                if is_log:
                    m = _host(state["metrics"]).astype(np.float64)
                    avg = m[:5] / max(m[5], 1.0)
                    aug_p = float(_host(state["aug_p"]))
                    now = time.perf_counter()
                    if done > step_mark:
                        steps_per_s = (done - step_mark) / (now - t_mark)
                        t_timed += now - t_mark
                        steps_timed += done - step_mark
                    t_mark, step_mark = now, done
                    elapsed = elapsed_offset + now - t_start
                    if csv_file is not None:
                        writer.writerow([done, *(f"{v:.6g}" for v in avg), f"{aug_p:.6g}",
                                         f"{steps_per_s:.4g}", f"{elapsed:.2f}"])
                        csv_file.flush()
                    last = {"d_loss": float(avg[0]), "g_loss": float(avg[1])}
                    log.info("GAN step %d/%d  d_loss %.4f  g_loss %.4f  D(real) %.3f  D(fake) %.3f"
                             "  R1 %.3g  p %.3f  %.2f steps/s", done, cfg.steps, *avg, aug_p,
                             steps_per_s)
                    bar.set_postfix(d_loss=f"{avg[0]:.3f}", g_loss=f"{avg[1]:.3f}")
                    state = {**state, "metrics": jax.device_put(zero_metrics, replicated)}
                if is_ckpt:
                    mgr.save(done, args=ocp.args.StandardSave(state))
            mgr.wait_until_finished()
            if steps_timed:
                steps_per_s = steps_timed / t_timed
        else:
            log.info("GAN already trained to step %d; rewriting its outputs", start)

        if is_main:
            _export(cfg, g_def, state, classes, class_names, Path(generator_dir),
                    Path(samples_png))
            if csv_file is not None:
                csv_file.close()
                csv_file = None
            if not work_csv.exists():
                _prepare_csv(work_csv, 0)
            with atomic_path(log_csv) as tmp:
                shutil.copyfile(work_csv, tmp)
    finally:
        if loader is not None:
            loader.close()
        if bar is not None:
            bar.close()
        if csv_file is not None:
            csv_file.close()
        mgr.close()
    return {
        "steps_done": int(_host(state["step"])),
        "steps_per_s": steps_per_s,
        "d_loss": last["d_loss"],
        "g_loss": last["g_loss"],
        "seconds": time.perf_counter() - t_start,
    }


def _export(cfg: GanConfig, g_def, state, classes, class_names, generator_dir: Path,
            samples_png: Path) -> None:
    """Write the EMA generator (recalibrated BatchNorm) and the per-class sample grid.

    Works on host copies of the (replicated) EMA weights, on the default device.
    """
    from bioaug.viz import save_class_grid

    step = int(_host(state["step"]))
    base = jax.random.key(cfg.seed)
    params = jax.tree.map(lambda a: jnp.asarray(_host(a)), state["ema"])
    batch_stats = jax.tree.map(lambda a: jnp.asarray(_host(a)), state["g"]["batch_stats"])
    stats = recalibrate_batch_stats(
        g_def, params, batch_stats,
        key=jax.random.fold_in(base, _STREAM_RECALIBRATE), classes=classes,
        batch_size=cfg.batch_size, z_dim=cfg.z_dim)
    meta = {
        "z_dim": cfg.z_dim, "n_classes": cfg.n_classes, "g_channels": list(cfg.g_channels),
        "conditional_bn": cfg.conditional_bn, "out_channels": cfg.channels,
        "tile_size": cfg.tile_size, "class_names": class_names,
        "step": step, "seed": cfg.seed, "trained_classes": [int(c) for c in classes],
        "gan_config": cfg.to_dict(),
    }
    with atomic_path(generator_dir) as tmp:
        write_generator(tmp, params, stats, meta)

    forward = make_eval_forward(g_def)
    z = jax.random.normal(jax.random.fold_in(base, _STREAM_GRID), (GRID_PER_CLASS, cfg.z_dim))
    rows = [np.asarray(forward(params, stats, z, jnp.full((GRID_PER_CLASS,), c, jnp.int32)))
            for c in range(cfg.n_classes)]
    with atomic_path(samples_png) as tmp:
        save_class_grid(tmp, class_names, rows, title=f"EMA generator, step {step}")
