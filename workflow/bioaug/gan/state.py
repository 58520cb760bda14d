"""The train state: its init, checkpoint restore, and the run identity naming its folder.

The whole train state is one pytree of arrays (a dict: G, D, their optimiser states, the
EMA generator, the RNG key, the step, ADA / LeCam state and the metric sums), so an Orbax
checkpoint holds all of it and a restored run continues bit for bit. A run's checkpoints
live in `checkpoint_root / run_identity(...)`: a hash of every setting that makes a
checkpoint meaningless when changed and of the training data, but not of the schedule
(`SCHEDULE_KEYS`), so raising gan.steps resumes. `RUN_META` beside the Orbax steps records
the config and the data fingerprint for humans.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from bioaug.runtime import BioaugError

from .config import GanConfig
from .devices import shardings
from .input_pipeline import gather_batch
from .networks import SpectralU, build_networks, graphdefs
from .step import N_METRICS, compile_key, make_optimizer

RUN_META = "bioaug_gan_run.json"  # beside the Orbax step folders of a run
# How long and how often a run logs and checkpoints: changing them does not make its
# checkpoints meaningless (raising steps continues the run), so they are not in its identity.
SCHEDULE_KEYS = ("steps", "log_every", "checkpoint_every")


# ----------------------------------------------------------------------------- identity
def run_identity(cfg: GanConfig, data_key: str, fingerprint: str) -> str:
    """16 hex digits naming a run's checkpoint folder.

    A hash of every GanConfig field but `SCHEDULE_KEYS` (architecture, objective,
    optimisation, augmentation, seed, the data-derived sizes), of `data_key` (the caller's
    identity of the training data, e.g. its item ids) and of `fingerprint`
    (`data_fingerprint` of the tiles and labels): changing any of them trains afresh in
    another folder instead of continuing a model that no longer fits the settings.
    """
    settings = {k: v for k, v in cfg.to_dict().items() if k not in SCHEDULE_KEYS}
    blob = json.dumps({"config": settings, "data_key": str(data_key), "data": fingerprint}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_folder(root: Path, identity: str, steps: int) -> Path:
    """The checkpoint folder of a run of `steps` steps: `root/identity`, resumed from its
    latest checkpoint (also after gan.steps was raised); when that folder already went past
    `steps` (gan.steps was lowered), a shorter run of the same settings in
    `root/identity-steps<N>`, so the longer run's checkpoints are kept for later."""
    main = (Path(root) / identity).resolve()
    done = [int(p.name) for p in main.iterdir() if p.name.isdigit()] if main.is_dir() else []
    if not done or max(done) <= steps:
        return main
    return main.with_name(f"{identity}-steps{steps}")


def data_fingerprint(tiles, labels: np.ndarray) -> str:
    """A hash of the data's shape, labels and a strided sample of tiles (memory maps and
    tile sources included: the same tiles give the same fingerprint however they are held)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(tiles.shape), "float32")).encode())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    stride = max(1, len(tiles) // 4096)  # enough to notice other data, cheap for big sets
    sample = np.arange(0, len(tiles), stride)
    h.update(np.ascontiguousarray(gather_batch(tiles, labels, sample)[0]).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- init
@functools.lru_cache(maxsize=8)
def _graphdefs_and_init(cfg: GanConfig):
    g_def, d_def = graphdefs(cfg)
    tx_g, tx_d = make_optimizer(cfg.lr_g, cfg.betas), make_optimizer(cfg.lr_d, cfg.betas)

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
            "aug_p": jnp.asarray(augment_p, jnp.float32),  # ADA augmentation probability
            "ada_acc": jnp.zeros((2,), jnp.float32),  # sum of sign(D(real)), count, this interval
            "lecam": jnp.zeros((2,), jnp.float32),  # moving averages of D(real), D(fake)
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
    g_def, d_def, init = _graphdefs_and_init(compile_key(cfg))
    initial_p = cfg.augment_p if cfg.ada else (1.0 if cfg.diffaugment else 0.0)
    with jax.threefry_partitionable(False):
        state = init(jax.random.key(cfg.seed), np.float32(initial_p))
    if mesh is not None:
        state = jax.device_put(state, shardings(mesh)[0])
    return g_def, d_def, state


# ----------------------------------------------------------------------------- restore
def restore_train_state(mgr: ocp.CheckpointManager, step: int, template, mesh=None):
    """Restore a train state shaped like `template`, placed like a fresh one.

    With a mesh, Orbax places every array replicated on it directly (what the jitted step
    expects, so no recompile). Without one, go through host memory and let jnp.asarray
    place them uncommitted on the default device (jit treats committed arrays as another
    signature). Entries a checkpoint of an older bioaug lacks (e.g. the ADA probability)
    keep the template's (fresh) values.
    """
    sharding = shardings(mesh)[0] if mesh is not None else None
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template)
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
                item_dir,
                args=ocp.args.PyTreeRestore(
                    item=keep, restore_args=ocp.checkpoint_utils.construct_restore_args(keep), partial_restore=True
                ),
            )
    if mesh is None:
        restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), restored)
    return {k: restored[k] if k in restored else template[k] for k in template}


def load_checkpoint(checkpoint_dir: Path, cfg: GanConfig, step: int | None = None):
    """(step, train state) of a run folder's checkpoint (the latest by default); for
    inspection and tests. `checkpoint_dir` is the run's folder (`train_gan` returns it)."""
    _, _, template = init_train_state(cfg)
    mgr = ocp.CheckpointManager(Path(checkpoint_dir).resolve(), options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = mgr.latest_step() if step is None else step
        if step is None:
            raise BioaugError(f"{checkpoint_dir}: no GAN checkpoint")
        return step, restore_train_state(mgr, step, template)
    finally:
        mgr.close()
