"""Training loop of the class-conditional GAN: pure jitted step, EMA, checkpoints, logs.

The whole train state is one pytree of arrays (a dict) that a single jitted, donated step
function maps to the next state: one D update then one G update. The host only talks to
the device at log and checkpoint steps. Checkpoints (Orbax) hold the complete state, so a
restarted run continues bit for bit as if it had never stopped: the batch of step k and
the device randomness of step k depend only on (seed, k).
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
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from bioaug.runtime import BioaugError, atomic_path, progress

from . import losses
from .augment import diff_augment
from .config import ARCHITECTURE_KEYS, GanConfig
from .input_pipeline import class_balanced_indices, gather_batch
from .networks import SpectralU, build_networks
from .sample import make_eval_forward, write_generator

CSV_HEADER = ("step", "d_loss", "g_loss", "d_real", "d_fake", "steps_per_s", "elapsed_s")
RECALIBRATION_BATCHES = 16
GRID_PER_CLASS = 8
RUN_META = "bioaug_gan_run.json"  # beside the Orbax step folders in checkpoint_dir

# Fixed sub-streams of the gan seed for things outside the training state.
_STREAM_RECALIBRATE = 1
_STREAM_GRID = 2


# ----------------------------------------------------------------------------- state
def _structural(cfg: GanConfig) -> GanConfig:
    """cfg without the fields that do not change compiled code (cache key).

    Learning rates and the EMA decay are step arguments, not compile-time constants, so
    changing them (e.g. on resume) does not recompile.
    """
    return dataclasses.replace(cfg, steps=1, log_every=1, checkpoint_every=1, seed=0,
                               lr_g=1.0, lr_d=1.0, ema_half_life_steps=1.0)


@functools.lru_cache(maxsize=8)
def _graphdefs_and_init(cfg: GanConfig):
    g_abs, d_abs = nnx.eval_shape(lambda: build_networks(cfg, jax.random.key(0)))
    g_def, d_def = nnx.graphdef(g_abs), nnx.graphdef(d_abs)
    tx_g, tx_d = make_optimizers(cfg)

    @jax.jit
    def init(key):
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
            "metrics": jnp.zeros((5,), jnp.float32),   # sums of d_loss, g_loss, d_real, d_fake; count
        }
        return state

    return g_def, d_def, init


def init_train_state(cfg: GanConfig):
    """Fresh (graphdef_g, graphdef_d, state) for a config, initialised from cfg.seed.

    One compiled init (not op by op). The non-partitionable threefry lowering is pinned:
    it compiles about 3x faster on CPU, and pinning keeps the initial weights independent
    of the global `jax_threefry_partitionable` setting.
    """
    g_def, d_def, init = _graphdefs_and_init(_structural(cfg))
    with jax.threefry_partitionable(False):
        state = init(jax.random.key(cfg.seed))
    return g_def, d_def, state


def make_optimizers(cfg: GanConfig):
    b1, b2 = cfg.betas
    return optax.adam(cfg.lr_g, b1=b1, b2=b2), optax.adam(cfg.lr_d, b1=b1, b2=b2)


@functools.lru_cache(maxsize=8)
def _cached_train_step(cfg: GanConfig, classes: tuple[int, ...]):
    g_def, d_def, _ = _graphdefs_and_init(cfg)
    return make_train_step(cfg, g_def, d_def, np.asarray(classes))


def step_hyperparams(cfg: GanConfig) -> jax.Array:
    """The runtime hyperparameters of the step: [lr_g, lr_d, ema_beta]."""
    return jnp.asarray([cfg.lr_g, cfg.lr_d, cfg.ema_beta], jnp.float32)


def make_train_step(cfg: GanConfig, g_def, d_def, classes: np.ndarray):
    """The jitted step: (state, real x in [0, 1], real y, hyper) -> state; `state` is donated.

    `hyper` is `step_hyperparams(cfg)`. `classes` are the labels present in the training
    set; fake labels are drawn uniformly from them (the real batches are class-balanced too).
    """
    b1, b2 = cfg.betas
    policy = tuple(cfg.diffaugment)
    classes = jnp.asarray(classes, jnp.int32)
    z_dim, kind = cfg.z_dim, cfg.loss

    def run_g(params, stats, z, y):
        g = nnx.merge(g_def, params, stats)
        x = g(z, y, train=True)
        return x, nnx.to_pure_dict(nnx.state(g, nnx.BatchStat))

    def run_d(params, sn, x, y):
        d = nnx.merge(d_def, params, sn) if sn else nnx.merge(d_def, params)
        logits = d(x, y, update_sn=True)
        return logits, (nnx.to_pure_dict(nnx.state(d, SpectralU)) if sn else sn)

    def draw(key, b):
        kz, ky = jax.random.split(key)
        z = jax.random.normal(kz, (b, z_dim))
        y = classes[jax.random.randint(ky, (b,), 0, classes.shape[0])]
        return z, y

    def step(state, real_x, real_y, hyper):
        b = real_x.shape[0]
        tx_g, tx_d = optax.adam(hyper[0], b1=b1, b2=b2), optax.adam(hyper[1], b1=b1, b2=b2)
        beta = hyper[2]
        key = jax.random.fold_in(jax.random.wrap_key_data(state["key"]), state["step"])
        k_fake_d, k_aug_d, k_fake_g, k_aug_g = jax.random.split(key, 4)
        real = real_x * 2.0 - 1.0
        g_params, g_stats = state["g"]["params"], state["g"]["batch_stats"]
        d_params, sn = state["d"]["params"], state["d"]["sn"]  # sn is {} without spectral norm

        # ---- D update: real and fake in one batch (D has no batch-dependent layers).
        z, yf = draw(k_fake_d, b)
        fake, g_stats = run_g(g_params, g_stats, z, yf)
        x_all = diff_augment(jnp.concatenate([real, jax.lax.stop_gradient(fake)]), k_aug_d, policy)
        y_all = jnp.concatenate([real_y, yf])

        def d_loss_fn(dp):
            logits, new_sn = run_d(dp, sn, x_all, y_all)
            lr, lf = logits[:b], logits[b:]
            return losses.d_loss(kind, lr, lf), (new_sn, jnp.mean(lr), jnp.mean(lf))

        (d_loss, (sn, d_real, d_fake)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params)
        upd, opt_d = tx_d.update(d_grads, state["opt_d"], d_params)
        d_params = optax.apply_updates(d_params, upd)

        # ---- G update through the updated D (D's parameters are constants here).
        z2, yf2 = draw(k_fake_g, b)

        def g_loss_fn(gp):
            x, new_stats = run_g(gp, g_stats, z2, yf2)
            logits, new_sn = run_d(d_params, sn, diff_augment(x, k_aug_g, policy), yf2)
            return losses.g_loss(kind, logits), (new_stats, new_sn)

        (g_loss, (g_stats, sn)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
        upd, opt_g = tx_g.update(g_grads, state["opt_g"], g_params)
        g_params = optax.apply_updates(g_params, upd)
        ema = jax.tree.map(lambda e, p: beta * e + (1.0 - beta) * p, state["ema"], g_params)

        step_no = state["step"] + 1
        finite = jnp.isfinite(d_loss) & jnp.isfinite(g_loss)
        nonfinite = jnp.where((state["nonfinite"] < 0) & ~finite, step_no, state["nonfinite"])
        metrics = state["metrics"] + jnp.stack([d_loss, g_loss, d_real, d_fake, jnp.float32(1)])
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
        }

    return jax.jit(step, donate_argnums=0)


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
def _restore(mgr: ocp.CheckpointManager, step: int, template):
    """Restore a train state shaped like `template`, placed like a fresh one.

    Orbax restores arrays committed to a device when given shardings; jit treats those
    as a different signature from the uncommitted arrays of a fresh run (a full
    recompile), so go through host memory and let jnp.asarray place them uncommitted on
    the default device (the state is small; this happens once per run).
    """
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    restored = mgr.restore(step, args=ocp.args.StandardRestore(abstract))
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)


def _data_fingerprint(tiles: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tiles.shape, str(tiles.dtype))).encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    stride = max(1, len(tiles) // 4096)  # enough to notice other data, cheap for big sets
    h.update(np.ascontiguousarray(tiles[::stride]).tobytes())
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
    """Rewrite the log keeping rows with step <= keep_upto; return the last kept elapsed_s."""
    rows: list[dict[str, str]] = []
    if keep_upto > 0 and path.exists():
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                try:
                    if int(row["step"]) <= keep_upto:
                        rows.append(row)
                except (KeyError, TypeError, ValueError):
                    continue
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_HEADER, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    try:
        return float(rows[-1]["elapsed_s"]) if rows else 0.0
    except (KeyError, ValueError):
        return 0.0


def _validate_data(tiles, labels, class_names, cfg: GanConfig | dict):
    tiles = np.asarray(tiles)
    labels = np.asarray(labels)
    if tiles.ndim != 4 or tiles.shape[1] != tiles.shape[2] or len(tiles) == 0:
        raise BioaugError(f"GAN training tiles: expected a non-empty (N, H, H, C) array, "
                          f"got shape {tiles.shape}")
    if labels.shape != (len(tiles),) or not np.issubdtype(labels.dtype, np.integer):
        raise BioaugError(f"GAN training labels: expected {len(tiles)} integer labels, got "
                          f"shape {labels.shape} dtype {labels.dtype}")
    n_classes = len(class_names)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise BioaugError(f"GAN training labels: values must be in [0, {n_classes}) for classes "
                          f"{list(class_names)}, got range [{labels.min()}, {labels.max()}]")
    tiles = tiles.astype(np.float32, copy=False)
    if isinstance(cfg, dict):
        cfg = GanConfig.from_dict(cfg, tiles.shape[1], tiles.shape[3], n_classes)
    elif (cfg.tile_size, cfg.channels, cfg.n_classes) != (tiles.shape[1], tiles.shape[3], n_classes):
        raise BioaugError(
            f"GanConfig is for {cfg.tile_size} px, {cfg.channels} channel(s), {cfg.n_classes} classes "
            f"but the tiles are {tiles.shape[1]} px, {tiles.shape[3]} channel(s) with {n_classes} classes")
    if len(tiles) <= 1_000_000 and not np.isfinite(tiles).all():
        raise BioaugError("GAN training tiles contain NaN or Inf values")
    return tiles, labels.astype(np.int32), cfg


# ----------------------------------------------------------------------------- entry point
def train_gan(tiles: np.ndarray, labels: np.ndarray, class_names: list[str],
              cfg: GanConfig | dict, *, checkpoint_dir: Path, generator_dir: Path,
              log_csv: Path, samples_png: Path, log: logging.Logger | None = None) -> dict:
    """Train (or resume training) the GAN and export the EMA generator.

    tiles: float32 (N, H, W, C) in [0, 1]; labels: ints in [0, len(class_names)).
    Resumes automatically from the latest checkpoint in `checkpoint_dir`. Writes
    `generator_dir` (EMA generator, Orbax + generator.json), `samples_png` (8 EMA samples
    per class) and `log_csv`. Raises FloatingPointError if a loss became non-finite (the
    last finite checkpoint is kept). Returns steps_done, steps_per_s, d_loss, g_loss, seconds.
    """
    log = log or logging.getLogger("bioaug.gan")
    t_start = time.perf_counter()
    tiles, labels, cfg = _validate_data(tiles, labels, class_names, cfg)
    class_names = [str(c) for c in class_names]
    classes = np.unique(labels)
    missing = [class_names[i] for i in range(cfg.n_classes) if i not in set(classes.tolist())]
    if missing:
        log.warning("no training tiles for class(es) %s: the generator cannot learn them",
                    ", ".join(missing))
    checkpoint_dir = Path(checkpoint_dir).resolve()
    log_csv = Path(log_csv)

    g_def, d_def, state = init_train_state(cfg)
    fingerprint = _data_fingerprint(tiles, labels)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    mgr = ocp.CheckpointManager(
        checkpoint_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    bar = None
    csv_file = None
    try:
        start = 0
        latest = mgr.latest_step()
        if latest is not None:
            _check_resume(checkpoint_dir / RUN_META, cfg, fingerprint, latest, log)
            if latest > cfg.steps:
                raise BioaugError(
                    f"gan.steps: {cfg.steps}, but {checkpoint_dir} holds a checkpoint at step "
                    f"{latest}; raise gan.steps or delete the folder to train from scratch")
            state = _restore(mgr, latest, state)
            start = int(state["step"])
            log.info("resumed GAN training from %s at step %d", checkpoint_dir, start)
        _write_json_atomic(checkpoint_dir / RUN_META, {"config": cfg.to_dict(), "data": fingerprint})
        elapsed_offset = _prepare_csv(log_csv, start)

        step_fn = _cached_train_step(_structural(cfg), tuple(int(c) for c in classes))
        hyper = step_hyperparams(cfg)
        sampler = class_balanced_indices(labels, cfg.batch_size, cfg.seed, start_step=start)
        last = {"d_loss": math.nan, "g_loss": math.nan}
        steps_per_s = math.nan
        if start < cfg.steps:
            csv_file = open(log_csv, "a", newline="")
            writer = csv.writer(csv_file)
            bar = progress(total=cfg.steps - start, desc="train_gan")
            t_run = time.perf_counter()
            t_mark, step_mark = t_run, start
            t_timed, steps_timed = 0.0, 0  # excludes the first (compiling) step
            for done in range(start + 1, cfg.steps + 1):
                x, y = gather_batch(tiles, labels, next(sampler))
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
                bad = int(state["nonfinite"])
                if bad >= 0:
                    raise FloatingPointError(
                        f"GAN training diverged: non-finite loss at step {bad} (noticed at step "
                        f"{done}); the last finite checkpoint (step {mgr.latest_step()}) in "
                        f"{checkpoint_dir} is kept. Lower gan.lr_d / gan.lr_g or check the tiles.")
                if is_log:
                    m = np.asarray(state["metrics"], np.float64)
                    avg = m[:4] / max(m[4], 1.0)
                    now = time.perf_counter()
                    if done > step_mark:
                        steps_per_s = (done - step_mark) / (now - t_mark)
                        t_timed += now - t_mark
                        steps_timed += done - step_mark
                    t_mark, step_mark = now, done
                    elapsed = elapsed_offset + now - t_start
                    writer.writerow([done, f"{avg[0]:.6g}", f"{avg[1]:.6g}", f"{avg[2]:.6g}",
                                     f"{avg[3]:.6g}", f"{steps_per_s:.4g}", f"{elapsed:.2f}"])
                    csv_file.flush()
                    last = {"d_loss": float(avg[0]), "g_loss": float(avg[1])}
                    log.info("GAN step %d/%d  d_loss %.4f  g_loss %.4f  D(real) %.3f  D(fake) %.3f"
                             "  %.2f steps/s", done, cfg.steps, *avg, steps_per_s)
                    bar.set_postfix(d_loss=f"{avg[0]:.3f}", g_loss=f"{avg[1]:.3f}")
                    state = {**state, "metrics": jnp.zeros((5,), jnp.float32)}
                if is_ckpt:
                    mgr.save(done, args=ocp.args.StandardSave(state))
            mgr.wait_until_finished()
            if steps_timed:
                steps_per_s = steps_timed / t_timed
        else:
            log.info("GAN already trained to step %d; rewriting its outputs", start)

        _export(cfg, g_def, state, classes, class_names, Path(generator_dir), Path(samples_png))
    finally:
        if bar is not None:
            bar.close()
        if csv_file is not None:
            csv_file.close()
        mgr.close()
    return {
        "steps_done": int(state["step"]),
        "steps_per_s": steps_per_s,
        "d_loss": last["d_loss"],
        "g_loss": last["g_loss"],
        "seconds": time.perf_counter() - t_start,
    }


def _export(cfg: GanConfig, g_def, state, classes, class_names, generator_dir: Path,
            samples_png: Path) -> None:
    """Write the EMA generator (recalibrated BatchNorm) and the per-class sample grid."""
    from bioaug.viz import save_class_grid

    step = int(state["step"])
    base = jax.random.key(cfg.seed)
    params = state["ema"]
    stats = recalibrate_batch_stats(
        g_def, params, state["g"]["batch_stats"],
        key=jax.random.fold_in(base, _STREAM_RECALIBRATE), classes=classes,
        batch_size=cfg.batch_size, z_dim=cfg.z_dim)
    meta = {
        "z_dim": cfg.z_dim, "n_classes": cfg.n_classes, "g_channels": list(cfg.g_channels),
        "out_channels": cfg.channels, "tile_size": cfg.tile_size, "class_names": class_names,
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
