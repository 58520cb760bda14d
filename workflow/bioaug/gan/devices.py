"""Where the GAN trains: multi-process start-up, the data-parallel mesh, its shardings.

`maybe_initialize_distributed` joins a multi-process (e.g. SLURM) run, `make_mesh` builds
the 1-D data-parallel mesh over all devices, `shardings` gives its replicated and
batch-split NamedShardings, `check_batch_divisible` / `process_rows` check and split the
batch over devices and processes, and `to_host` reads a replicated array back also where
it spans several processes.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from bioaug.runtime import BioaugError

from .config import GanConfig

DATA_AXIS = "data"  # the mesh axis the batch is split over


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
            jax.distributed.initialize(
                env["JAX_COORDINATOR_ADDRESS"], count("JAX_NUM_PROCESSES"), int(env.get("JAX_PROCESS_ID", "0"))
            )
        else:
            jax.distributed.initialize()
    except RuntimeError as e:  # e.g. a JAX computation ran before this call
        raise BioaugError(
            f"could not start multi-process JAX ({e}); train_gan must be the first JAX user of the process"
        ) from None
    log.info(
        "multi-process JAX: process %d of %d, %d devices in all (%d local)",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
    )
    return True


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh (axis "data") over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def shardings(mesh: jax.sharding.Mesh):
    """(replicated, batch-sharded) NamedShardings of a mesh."""
    return (jax.sharding.NamedSharding(mesh, P()), jax.sharding.NamedSharding(mesh, P(DATA_AXIS)))


def check_batch_divisible(cfg: GanConfig, mesh: jax.sharding.Mesh) -> None:
    """gan.batch_size must split evenly over the mesh's devices."""
    n = mesh.size
    if cfg.batch_size % n:
        raise BioaugError(
            f"gan.batch_size: {cfg.batch_size} is not divisible by the {n} devices the batch "
            f"is split over; use a multiple of {n} (e.g. {max(n, cfg.batch_size // n * n)})"
        )


def to_host(x) -> np.ndarray:
    """A replicated (or local) array as numpy, also where it spans several processes."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def process_rows(cfg: GanConfig) -> slice | None:
    """This process's rows of every (globally sampled) batch; None in a single process."""
    n_proc, proc = jax.process_count(), jax.process_index()
    if n_proc == 1:
        return None
    if cfg.batch_size % n_proc:
        raise BioaugError(f"gan.batch_size: {cfg.batch_size} is not divisible by the {n_proc} processes")
    per = cfg.batch_size // n_proc
    return slice(proc * per, (proc + 1) * per)
