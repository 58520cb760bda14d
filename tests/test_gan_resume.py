"""Resume after SIGKILL: a training process killed at a random step after its first
checkpoint, restarted, ends exactly where an uninterrupted run ends.

The training runs in subprocesses (tiny networks, ADA + lazy R1 + LeCam on so that their
state is part of what must survive). The tiles come from a tile source that sleeps a few
milliseconds per batch, so the steps are slow enough to kill in the middle of the run.
About 30 s on 2 cores.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from bioaug.gan import load_generator
from bioaug.gan.state import load_checkpoint
from bioaug.gan.train import CSV_HEADER
from gan_reference import gan_config, gan_section

STEPS, CKPT_EVERY, LOG_EVERY = 120, 10, 5
GAN = dict(
    batch_size=8,
    z_dim=16,
    g_channels=[16, 8],
    d_channels=[8, 16],
    seed=11,
    ada=True,
    augment_p=0.2,
    ada_interval=2,
    ada_kimg=0.1,
    r1_gamma=0.5,
    r1_interval=4,
    lecam_weight=0.05,
    ema_half_life_steps=5,
    steps=STEPS,
    checkpoint_every=CKPT_EVERY,
    log_every=LOG_EVERY,
)

CHILD = textwrap.dedent(r"""
    import sys, time
    from pathlib import Path
    import numpy as np
    from bioaug.gan import train_gan
    from bioaug.gan.input_pipeline import ArrayTiles
    from bioaug.runtime import setup_logging

    class SlowTiles(ArrayTiles):  # ~8 ms per batch: a slow disk
        def gather(self, idx):
            time.sleep(0.008)
            return super().gather(idx)

    setup_logging()
    out = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    labels = np.array([0] * 24 + [1] * 10 + [2] * 6)
    tiles = rng.random((len(labels), 16, 16, 1), dtype=np.float32)
    res = train_gan(SlowTiles(tiles), labels, ["a", "b", "c"], GAN,
                    checkpoint_root=out / "ckpt", generator_dir=out / "generator",
                    log_csv=out / "log.csv", samples_png=out / "samples.png")
    print("DONE", res["steps_done"], flush=True)
""").replace("GAN,", repr(gan_section(**GAN)) + ",")


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, env=_env(), timeout=300
    )


def _logged_steps(csv_path: Path) -> list[int]:
    try:
        lines = csv_path.read_text().splitlines()[1:]
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(int(line.split(",")[0]))
        except ValueError:
            pass
    return steps


def _run_dir(root: Path) -> Path:
    """The run's folder under the checkpoint root (one run per root here; its name is
    the run identity); the root itself while it does not exist yet."""
    runs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    assert len(runs) <= 1, runs
    return runs[0] if runs else root


def _finished_checkpoints(ckpt: Path) -> list[int]:
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


@pytest.mark.slow  # three training processes, 30-50 s
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    killed_dir, ref_dir = tmp_path / "killed", tmp_path / "reference"
    target = random.Random().randint(CKPT_EVERY + 1, STEPS * 2 // 3)
    # the uninterrupted run, alongside
    ref = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ref_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(killed_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            run = _run_dir(killed_dir / "ckpt")
            steps = _logged_steps(run / "train_log.csv")  # the live log
            if steps and steps[-1] >= target and _finished_checkpoints(run):
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"training ended before the kill:\n{proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _logged_steps(_run_dir(killed_dir / "ckpt") / "train_log.csv")[-1]
    assert CKPT_EVERY < killed_at < STEPS
    # as Snakemake does before a retry: the failed job's declared outputs are gone
    assert not (killed_dir / "log.csv").exists()

    resumed = _run(killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    m = re.search(r"resumed GAN training from .* at step (\d+)", resumed.stderr)
    assert m, resumed.stderr[-3000:]
    resumed_from = int(m.group(1))
    assert resumed_from % CKPT_EVERY == 0 and CKPT_EVERY <= resumed_from <= killed_at

    ref_out, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err[-5000:]
    assert "resumed" not in ref_err and f"DONE {STEPS}" in ref_out

    # the log: every log step exactly once, same columns as always
    header = (killed_dir / "log.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == CSV_HEADER
    assert _logged_steps(killed_dir / "log.csv") == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    for d in (killed_dir, ref_dir):
        assert (d / "samples.png").stat().st_size > 0
        assert load_generator(d / "generator").step == STEPS

    # the final state: parameters, optimiser moments, EMA, RNG key, ADA and LeCam state
    cfg = gan_config(16, 1, 3, **GAN)
    run_a, run_b = _run_dir(killed_dir / "ckpt"), _run_dir(ref_dir / "ckpt")
    assert run_a.name == run_b.name != "ckpt"  # one run identity
    step_a, a = load_checkpoint(run_a, cfg)
    step_b, b = load_checkpoint(run_b, cfg)
    assert step_a == step_b == STEPS
    assert a.keys() == b.keys()
    for name in a:
        if name == "metrics":  # sums since the last log row: also equal, but not state
            continue
        for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a[name])[0], jax.tree.leaves(b[name])):
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg=f"{name}{jax.tree_util.keystr(path)}"
            )
    assert 0.0 <= float(a["aug_p"]) <= 1.0
