"""`train_gan`: the training loop of the class-conditional GAN, its log, and the export.

The loop feeds the jitted step (`step`) with class-balanced batches gathered in the
background (`input_pipeline`), talks to the device only at log and checkpoint steps,
saves Orbax checkpoints in the run's folder (`state.run_identity`) and resumes from the
latest one, so a restarted or extended run continues bit for bit (the batch and the device
randomness of step k depend only on (seed, k)). The CSV log lives beside the checkpoints
and is published at the end; the EMA generator and a per-class sample grid are exported by
process 0.
"""

from __future__ import annotations

import csv
import dataclasses
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
import orbax.checkpoint as ocp

from bioaug.classifier.init_weights import weight_state
from bioaug.runtime import BioaugError, atomic_path, log_devices, progress

from .config import GanConfig
from .devices import check_batch_divisible, make_mesh, maybe_initialize_distributed, process_rows, shardings, to_host
from .input_pipeline import ArrayTiles, BatchLoader, as_tile_source
from .noise_model import fit_from_source
from .sample import make_eval_forward, recalibrate_batch_stats, write_generator
from .state import RUN_META, data_fingerprint, init_train_state, restore_train_state, run_folder, run_identity
from .step import N_METRICS, cached_train_step, frozen_features, mode_seeking_target, r1_due, step_hyperparams

CSV_HEADER = ("step", "d_loss", "g_loss", "d_real", "d_fake", "r1", "augment_p", "steps_per_s", "elapsed_s")
GRID_PER_CLASS = 8

# Fixed sub-streams of the gan seed for things outside the training state.
_STREAM_RECALIBRATE = 1
_STREAM_GRID = 2


# ----------------------------------------------------------------------------- entry point
def train_gan(
    tiles,
    labels: np.ndarray,
    class_names: list[str],
    cfg: GanConfig | dict,
    *,
    checkpoint_root: Path,
    generator_dir: Path,
    log_csv: Path,
    samples_png: Path,
    data_key: str = "",
    log: logging.Logger | None = None,
    devices=None,
    feature_net=None,
) -> dict:
    """Train (or resume training) the GAN and export the EMA generator.

    tiles: float32 (N, H, W, C) in [0, 1], as an in-memory array, a memory-mapped one
    (`np.load(path, mmap_mode="r")`) or a tile source such as
    `input_pipeline.ShardedTiles` (rows of several memory-mapped shards, never loaded
    whole); labels: ints in [0, len(class_names)). Batches are gathered by a background
    thread two steps ahead. All devices (`devices`, default `jax.devices()`) train
    data-parallel; gan.batch_size must be divisible by their number. Under a multi-process
    launcher (SLURM with several tasks) JAX's distributed runtime is started first
    (`maybe_initialize_distributed`).

    `cfg` is a GanConfig for these tiles or a validated `gan` section. The run's checkpoints
    are in `checkpoint_root / run_identity(cfg, data_key, data fingerprint)`: `data_key` is
    the caller's identity of the training data (e.g. its item ids). Training resumes from
    the folder's latest checkpoint, also after gan.steps was raised; a lowered gan.steps
    trains a shorter run afresh (`state.run_folder`). Writes `generator_dir`
    (EMA generator, Orbax + generator.json), `samples_png` (8 EMA samples per class) and
    `log_csv`. Raises FloatingPointError if a loss became non-finite (the last finite
    checkpoint is kept). Returns steps_done, steps_per_s, d_loss, g_loss, seconds and
    checkpoint_dir (the run's folder, a str).

    With `gan.feature_discriminator`, `feature_net` is the real-trained feature classifier
    (`classifier.TrainedClassifier` of the same classes and channels) whose features D's
    second head judges; its weights are part of the run's identity.
    """
    log = log or logging.getLogger("bioaug.gan")
    maybe_initialize_distributed(log)
    log_devices(log)
    t_start = time.perf_counter()
    tiles, labels, cfg = _validate_data(tiles, labels, class_names, cfg)
    if cfg.pixel_noise == "fitted" and cfg.noise_variance is None:
        a, b = fit_from_source(tiles)
        cfg = dataclasses.replace(cfg, noise_variance=(a, b))
        log.info("pixel noise fitted to the real tiles, variance a * I + b per channel: a %s, b %s",
                 [f"{v:.3g}" for v in a], [f"{v:.3g}" for v in b])  # fmt: skip
    class_names = [str(c) for c in class_names]
    cfg, data_key = _with_feature_net(cfg, feature_net, class_names, data_key, log)
    classes = np.unique(labels)
    missing = [class_names[i] for i in range(cfg.n_classes) if i not in set(classes.tolist())]
    if missing:
        log.warning("no training tiles for class(es) %s: the generator cannot learn them", ", ".join(missing))
    mesh = make_mesh(devices)
    check_batch_divisible(cfg, mesh)
    replicated, batched = shardings(mesh)
    is_main = jax.process_index() == 0
    rows = process_rows(cfg)  # each process gathers its own rows of the (global) batch
    log_csv = Path(log_csv)

    g_def, d_def, state = init_train_state(cfg, mesh)
    fingerprint = data_fingerprint(tiles, labels)
    checkpoint_dir = run_folder(Path(checkpoint_root), run_identity(cfg, data_key, fingerprint), cfg.steps)
    # The log is kept beside the checkpoints (not a declared output, so Snakemake does not
    # delete it when a job fails or is preempted) and published to log_csv at the end:
    # a resumed run then still has every row from before its checkpoint.
    work_csv = checkpoint_dir / "train_log.csv"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    mgr = ocp.CheckpointManager(checkpoint_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    bar = None
    csv_file = None
    loader = None
    try:
        start = 0
        latest = mgr.latest_step()
        if latest is None:
            log.info("GAN checkpoints in %s (a new run)", checkpoint_dir)
        else:
            state = restore_train_state(mgr, latest, state, mesh)
            start = int(to_host(state["step"]))
            log.info("resumed GAN training from %s at step %d", checkpoint_dir, start)
        if is_main:
            _write_json_atomic(checkpoint_dir / RUN_META, {"config": cfg.to_dict(), "data": fingerprint})
            elapsed_offset = _prepare_csv(work_csv, start)
        else:
            elapsed_offset = 0.0

        step_fn = cached_train_step(cfg, tuple(int(c) for c in classes), mesh, feature_net)
        cap = mode_seeking_target(tiles, labels, cfg.seed) if cfg.mode_seeking_weight > 0 else math.inf
        if math.isfinite(cap):
            log.info(
                "mode-seeking term capped at a latent/pixel distance ratio of %.3f (that of real same-class pairs)", cap
            )
        hyper = jax.device_put(step_hyperparams(cfg, cap), replicated)
        zero_metrics = np.zeros((N_METRICS,), np.float32)  # put anew each time (donated)
        global_shape = lambda a: (cfg.batch_size,) + a.shape[1:]  # noqa: E731

        def place(x, y):
            return (
                jax.make_array_from_process_local_data(batched, x, global_shape(x)),
                jax.make_array_from_process_local_data(batched, y, global_shape(y)),
            )

        last = {"d_loss": math.nan, "g_loss": math.nan}
        steps_per_s = math.nan
        if start < cfg.steps:
            loader = BatchLoader(
                tiles,
                labels,
                cfg.batch_size,
                cfg.seed,
                start_step=start,
                place=place,
                prefetch=2,
                check_finite=not getattr(tiles, "in_memory", False),
                rows=rows,
            )
            if is_main:
                csv_file = open(work_csv, "a", newline="")
                writer = csv.writer(csv_file)
            bar = progress(total=cfg.steps - start, desc="train_gan")
            t_run = time.perf_counter()
            t_mark, step_mark = t_run, start
            t_timed, steps_timed = 0.0, 0  # excludes the steps that compile
            # The first step of each compiled program (lazy R1 is a second one) compiles it:
            # one sync after it, and the timing restarts there, so steps/s are honest.
            compiling = {start + 1}
            if cfg.r1_gamma > 0:
                compiling.add((start // cfg.r1_interval + 1) * cfg.r1_interval)
            for done in range(start + 1, cfg.steps + 1):
                try:
                    x, y = next(loader)
                except FloatingPointError as e:
                    raise BioaugError(str(e)) from None
                r1_now = r1_due(cfg, done)
                t_step = t_run if done == start + 1 else time.perf_counter()
                state = step_fn(state, x, y, hyper, r1_now)
                bar.update(1)
                if done in compiling:
                    jax.block_until_ready(state["step"])
                    now = time.perf_counter()
                    log.info("GAN step%s compiled and ran in %.1f s", " with R1" if r1_now else "", now - t_step)
                    t_mark, step_mark = now, done
                is_log = done % cfg.log_every == 0 or done == cfg.steps
                is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
                if not (is_log or is_ckpt):
                    continue
                bad = int(to_host(state["nonfinite"]))
                if bad >= 0:
                    raise FloatingPointError(
                        f"GAN training diverged: non-finite loss at step {bad} (noticed at step "
                        f"{done}); the last finite checkpoint (step {mgr.latest_step()}) in "
                        f"{checkpoint_dir} is kept. Lower gan.lr_d / gan.lr_g or check the tiles."
                    )
                if is_log:
                    m = to_host(state["metrics"]).astype(np.float64)
                    avg = m[:5] / max(m[5], 1.0)
                    aug_p = float(to_host(state["aug_p"]))
                    now = time.perf_counter()
                    if done > step_mark:
                        steps_per_s = (done - step_mark) / (now - t_mark)
                        t_timed += now - t_mark
                        steps_timed += done - step_mark
                    t_mark, step_mark = now, done
                    elapsed = elapsed_offset + now - t_start
                    if csv_file is not None:
                        writer.writerow(
                            [done, *(f"{v:.6g}" for v in avg), f"{aug_p:.6g}", f"{steps_per_s:.4g}", f"{elapsed:.2f}"]
                        )
                        csv_file.flush()
                    last = {"d_loss": float(avg[0]), "g_loss": float(avg[1])}
                    log.info(
                        "GAN step %d/%d  d_loss %.4f  g_loss %.4f  D(real) %.3f  D(fake) %.3f"
                        "  R1 %.3g  p %.3f  %.2f steps/s  ETA %.0f s",
                        done,
                        cfg.steps,
                        *avg,
                        aug_p,
                        steps_per_s,
                        (cfg.steps - done) / steps_per_s if steps_per_s > 0 else math.nan,
                    )
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
            _export(cfg, g_def, state, classes, class_names, Path(generator_dir), Path(samples_png), checkpoint_dir)
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
        "steps_done": int(to_host(state["step"])),
        "steps_per_s": steps_per_s,
        "d_loss": last["d_loss"],
        "g_loss": last["g_loss"],
        "seconds": time.perf_counter() - t_start,
        "checkpoint_dir": str(checkpoint_dir),
    }


# ----------------------------------------------------------------------------- helpers
def _relative(path: Path) -> str:
    """`path` relative to the working folder when inside it (results move with their folder)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _export(
    cfg: GanConfig, g_def, state, classes, class_names, generator_dir: Path, samples_png: Path, run_dir: Path
) -> None:
    """Write the EMA generator (recalibrated BatchNorm) and the per-class sample grid.

    The generator is also kept as `run_dir/generator-step<N>` (its "archive" in
    generator.json): the declared `generator_dir` is overwritten by the next training, the
    archive is not, so a synthetic tile can be regenerated from its manifest row later.

    Works on host copies of the (replicated) EMA weights, on the default device.
    """
    from bioaug.viz import save_class_grid

    step = int(to_host(state["step"]))
    base = jax.random.key(cfg.seed)
    params = jax.tree.map(lambda a: jnp.asarray(to_host(a)), state["ema"])
    batch_stats = jax.tree.map(lambda a: jnp.asarray(to_host(a)), state["g"]["batch_stats"])
    stats = recalibrate_batch_stats(
        g_def,
        params,
        batch_stats,
        key=jax.random.fold_in(base, _STREAM_RECALIBRATE),
        classes=classes,
        batch_size=cfg.batch_size,
        z_dim=cfg.z_dim,
    )
    meta = {
        "z_dim": cfg.z_dim,
        "n_classes": cfg.n_classes,
        "g_channels": list(cfg.g_channels),
        "conditional_bn": cfg.conditional_bn,
        "g_output": cfg.g_output,
        "noise_inputs": cfg.noise_inputs,
        "tanh_scale": cfg.tanh_scale,
        "g_padding": cfg.g_padding,
        "noise_variance": None if cfg.noise_variance is None else dict(zip("ab", map(list, cfg.noise_variance))),
        "out_channels": cfg.channels,
        "tile_size": cfg.tile_size,
        "class_names": class_names,
        "step": step,
        "seed": cfg.seed,
        "trained_classes": [int(c) for c in classes],
        "gan_config": cfg.to_dict(),
        "archive": _relative(Path(run_dir) / f"generator-step{step}"),
    }
    for folder in (Path(meta["archive"]), generator_dir):
        with atomic_path(folder) as tmp:
            write_generator(tmp, params, stats, meta)

    forward = make_eval_forward(g_def)
    z = jax.random.normal(jax.random.fold_in(base, _STREAM_GRID), (GRID_PER_CLASS, cfg.z_dim))
    rows = [
        np.asarray(forward(params, stats, z, jnp.full((GRID_PER_CLASS,), c, jnp.int32))) for c in range(cfg.n_classes)
    ]
    with atomic_path(samples_png) as tmp:
        save_class_grid(tmp, class_names, rows, title=f"EMA generator, step {step}")


def _with_feature_net(cfg: GanConfig, feature_net, class_names: list[str], data_key: str, log):
    """(cfg with feature_dim, data_key with the feature network's weights) for
    gan.feature_discriminator; (cfg, data_key) unchanged without it."""
    if not cfg.feature_discriminator:
        return cfg, data_key
    if feature_net is None:
        raise BioaugError("gan.feature_discriminator is true but no feature classifier was given to train on")
    if list(feature_net.class_names) != class_names:
        raise BioaugError(
            f"gan.feature_discriminator: the feature classifier knows classes {list(feature_net.class_names)}, "
            f"the GAN's tiles have {class_names}"
        )
    module = feature_net.to_module()
    if module.in_channels != cfg.channels:
        raise BioaugError(
            f"gan.feature_discriminator: the feature classifier takes {module.in_channels} "
            f"channel(s), the GAN's tiles have {cfg.channels}"
        )
    # the width of what the step's head sees, traced (not compiled, not run)
    tile = jax.ShapeDtypeStruct((1, cfg.tile_size, cfg.tile_size, cfg.channels), jnp.float32)
    width = int(jax.eval_shape(frozen_features(feature_net), tile).shape[1])
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(weight_state(module)):  # what its model folder stores
        digest.update(np.asarray(leaf).tobytes())
    log.info("feature discriminator on the feature classifier's %d features", width)
    return dataclasses.replace(cfg, feature_dim=width), f"{data_key}\nfeature_net:{digest.hexdigest()}"


def _validate_data(tiles, labels, class_names, cfg: GanConfig | dict):
    """(tile source, int32 labels, GanConfig); arrays that are in memory are checked in full,
    memory-mapped tiles and tile sources per batch (by the loader)."""
    source = as_tile_source(tiles)
    labels = np.asarray(labels)
    shape = tuple(source.shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[0] == 0:
        raise BioaugError(f"GAN training tiles: expected a non-empty (N, H, H, C) array, got shape {shape}")
    if labels.shape != (shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise BioaugError(
            f"GAN training labels: expected {shape[0]} integer labels, got shape {labels.shape} dtype {labels.dtype}"
        )
    n_classes = len(class_names)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise BioaugError(
            f"GAN training labels: values must be in [0, {n_classes}) for classes "
            f"{list(class_names)}, got range [{labels.min()}, {labels.max()}]"
        )
    if isinstance(source, ArrayTiles) and source.in_memory:
        source = ArrayTiles(source.array.astype(np.float32, copy=False))
        if len(source) <= 1_000_000 and not np.isfinite(source.array).all():
            raise BioaugError("GAN training tiles contain NaN or Inf values")
    if isinstance(cfg, dict):
        cfg = GanConfig.from_section(cfg, shape[1], shape[3], n_classes)
    elif (cfg.tile_size, cfg.channels, cfg.n_classes) != (shape[1], shape[3], n_classes):
        raise BioaugError(
            f"GanConfig is for {cfg.tile_size} px, {cfg.channels} channel(s), {cfg.n_classes} classes "
            f"but the tiles are {shape[1]} px, {shape[3]} channel(s) with {n_classes} classes"
        )
    return source, labels.astype(np.int32), cfg


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
