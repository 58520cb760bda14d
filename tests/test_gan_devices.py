"""Data-parallel GAN training over several devices (2 CPU devices forced in a subprocess).

`--xla_force_host_platform_device_count` must be set before JAX starts, so the checks run
in a fresh interpreter. They compare, step by step, the losses and the final state of the
same training on a 1-device mesh and on a 2-device mesh (batch split in two), with every
optional feature on (ADA, lazy R1, LeCam), then run `train_gan` itself on 2 devices,
including a resume, and check the batch-size divisibility error. About 20 s. Then a real
multi-process run: two JAX processes joined by the distributed runtime (what `srun` with
two tasks starts on a cluster), about 50 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from bioaug.gan.devices import maybe_initialize_distributed
from gan_reference import gan_section

SCRIPT = textwrap.dedent(r"""
    import json, sys, tempfile
    from pathlib import Path
    import jax, numpy as np
    from bioaug.gan import GanConfig, train_gan, load_generator
    from bioaug.gan import devices as D, state as ST, step as S
    from bioaug.gan.input_pipeline import class_balanced_indices
    from bioaug.runtime import BioaugError

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 8 + [2] * 4)
    tiles = rng.random((len(labels), 16, 16, 1), dtype=np.float32)
    base = BASE_SECTION
    cfg = GanConfig.from_section(base, 16, 1, 3)
    out = {}
    for name, devices in (("one", jax.devices()[:1]), ("two", jax.devices())):
        mesh = D.make_mesh(devices)
        rep, bat = D.shardings(mesh)
        _, _, state = ST.init_train_state(cfg, mesh)
        step = S.cached_train_step(cfg, (0, 1, 2), mesh)
        hyper = jax.device_put(S.step_hyperparams(cfg), rep)
        sampler = class_balanced_indices(labels, 8, 5)
        losses = []
        for k in range(6):
            idx = next(sampler)
            x = jax.device_put(tiles[idx], bat)
            y = jax.device_put(labels[idx].astype(np.int32), bat)
            before = np.asarray(state["metrics"]).copy()
            state = step(state, x, y, hyper, S.r1_due(cfg, k + 1))
            losses.append((np.asarray(state["metrics"]) - before)[:5].tolist())
        assert len(state["g"]["params"]["fc"]["kernel"].sharding.device_set) == len(devices)
        out[name] = dict(losses=losses, aug_p=float(state["aug_p"]),
                         leaves={jax.tree_util.keystr(k): np.asarray(v).ravel().tolist()[:64]
                                 for k, v in jax.tree_util.tree_flatten_with_path(
                                     {n: state[n] for n in ("g", "d", "ema", "opt_d")})[0]})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kw = dict(checkpoint_root=tmp / "ck", generator_dir=tmp / "gen", log_csv=tmp / "log.csv",
                  samples_png=tmp / "s.png")
        small = {**base, "log_every": 2, "checkpoint_every": 2}
        try:
            train_gan(tiles, labels, ["a", "b", "c"], {**small, "batch_size": 7, "steps": 2}, **kw)
            out["divisible_error"] = None
        except BioaugError as e:
            out["divisible_error"] = str(e)
        r1 = train_gan(tiles, labels, ["a", "b", "c"], {**small, "steps": 4}, **kw)
        r2 = train_gan(tiles, labels, ["a", "b", "c"], {**small, "steps": 6}, **kw)
        out["steps_done"] = [r1["steps_done"], r2["steps_done"]]
        out["same_run"] = r1["checkpoint_dir"] == r2["checkpoint_dir"]
        out["log_steps"] = [int(l.split(",")[0]) for l in (tmp / "log.csv").read_text().split()[1:]]
        out["generator_step"] = load_generator(tmp / "gen").step
    print("RESULT " + json.dumps(out))
""").replace(
    "BASE_SECTION",
    repr(
        gan_section(
            batch_size=8,
            z_dim=16,
            g_channels=[16, 8],
            d_channels=[8, 16],
            seed=5,
            ada=True,
            augment_p=0.5,
            ada_interval=2,
            ada_kimg=0.05,
            r1_gamma=1.0,
            r1_interval=2,
            lecam_weight=0.1,
        )
    ),
)


def test_two_devices_match_one_device():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT ") :])
    one, two = res["one"], res["two"]
    import numpy as np

    np.testing.assert_allclose(np.array(two["losses"]), np.array(one["losses"]), rtol=2e-3, atol=2e-4)
    assert one["aug_p"] != 0.5  # ADA moved p (identically on both meshes)
    np.testing.assert_allclose(two["aug_p"], one["aug_p"], atol=1e-6)
    assert one["leaves"].keys() == two["leaves"].keys()
    for name, a in one["leaves"].items():
        # A conv bias right before BatchNorm has a zero gradient up to rounding, which Adam
        # turns into +-lr steps: those are noise on any device count; skip them.
        if re.search(r"blocks.*conv.*bias", name) and "'d'" not in name:
            continue
        np.testing.assert_allclose(np.array(two["leaves"][name]), np.array(a), rtol=2e-3, atol=2e-4, err_msg=name)
    assert (
        res["divisible_error"] and "gan.batch_size" in res["divisible_error"] and "2 devices" in res["divisible_error"]
    )
    assert res["steps_done"] == [4, 6] and res["generator_step"] == 6 and res["same_run"]
    assert res["log_steps"] == [2, 4, 6]


def test_maybe_initialize_distributed_is_a_noop_in_one_process(monkeypatch):
    for var in list(os.environ):
        if var.startswith(("SLURM_", "OMPI_")) or var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job: still one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert maybe_initialize_distributed() is False
    import jax

    assert jax.process_count() == 1 and not jax.distributed.is_initialized()


MULTIPROCESS_CHILD = textwrap.dedent(r"""
    import json, sys
    from bioaug.runtime import configure_jax
    out, steps = sys.argv[1], int(sys.argv[2])
    configure_jax(sys.argv[3])  # as the workflow does: a persistent compilation cache
    import jax, numpy as np
    from bioaug.gan import train_gan
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 8 + [2] * 4)
    tiles = rng.random((len(labels), 16, 16, 1), dtype=np.float32)
    cfg = {**SECTION, "steps": steps}
    res = train_gan(tiles, labels, ["a", "b", "c"], cfg, checkpoint_root=f"{out}/ck",
                    generator_dir=f"{out}/gen", log_csv=f"{out}/log.csv",
                    samples_png=f"{out}/s.png")
    print("RESULT " + json.dumps({"process": jax.process_index(), "of": jax.process_count(),
                                  "devices": jax.device_count(), **res}))
""").replace(
    "SECTION",
    repr(
        gan_section(
            batch_size=8,
            z_dim=16,
            g_channels=[16, 8],
            d_channels=[8, 16],
            seed=5,
            log_every=2,
            checkpoint_every=2,
            conditional_bn=True,
            mode_seeking_weight=1.0,
            r1_gamma=1.0,
            r1_interval=1,  # R1 on every step: one compiled program (lazy R1 on a mesh: the test above)
        )
    ),
)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(out, steps: int, n: int, cache) -> list[dict]:
    """train_gan in n processes joined by JAX's distributed runtime (as `srun` with n tasks
    would start it); returns their RESULT dicts."""
    port = _free_port()
    procs = []
    for i in range(n):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_")) and k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu")
        if n > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", MULTIPROCESS_CHILD, str(out), str(steps), str(cache)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:  # e.g. one process waiting at a barrier forever
            for q in procs:
                q.kill()
            raise AssertionError("a training process hung (a barrier only some processes reach?)") from None
        assert p.returncode == 0, stderr[-4000:]
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
        results.append(json.loads(line[len("RESULT ") :]))
    return results


@pytest.mark.slow
def test_two_processes_train_like_one_and_process_0_exports(tmp_path):
    """A real multi-process run (two JAX processes on this machine, one CPU device each,
    joined through JAX_COORDINATOR_ADDRESS): both finish, each gathers half of every batch,
    the losses are those of the one-process run, process 0 alone writes the log and the
    generator (no Orbax barrier that only it reaches), and a second invocation resumes."""
    import numpy as np
    import pandas as pd

    from bioaug.gan import load_generator, sample_tiles

    cache = tmp_path / "jax-cache"
    two = _run_processes(tmp_path / "two", 4, 2, cache)
    assert sorted((r["process"], r["of"], r["devices"]) for r in two) == [(0, 2, 2), (1, 2, 2)]
    assert all(r["steps_done"] == 4 for r in two)
    resumed = _run_processes(tmp_path / "two", 6, 2, cache)  # from the step-4 checkpoint
    assert all(r["steps_done"] == 6 for r in resumed)
    _run_processes(tmp_path / "one", 6, 1, cache)
    log_two = pd.read_csv(tmp_path / "two" / "log.csv")
    log_one = pd.read_csv(tmp_path / "one" / "log.csv")
    assert log_two["step"].tolist() == log_one["step"].tolist() == [2, 4, 6]
    cols = ["d_loss", "g_loss", "d_real", "d_fake", "r1"]
    np.testing.assert_allclose(log_two[cols].to_numpy(), log_one[cols].to_numpy(), rtol=2e-3, atol=2e-4)
    gen_two, gen_one = (load_generator(tmp_path / d / "gen") for d in ("two", "one"))
    assert gen_two.step == gen_one.step == 6
    np.testing.assert_allclose(
        sample_tiles(gen_two, 1, np.arange(4)), sample_tiles(gen_one, 1, np.arange(4)), atol=2e-3
    )
