"""Benchmark of the downstream classifier's training against a plain PyTorch peer, side by side.

The network of `config.yaml`'s classifier (SmallCNN, channels [16, 32, 64]: per block
conv3x3-BN-ReLU x 2 and a 2x2 max-pool, then global average pooling, dropout 0.2, a linear
head), batch 64, 32 x 32 x 3 tiles, 4 classes, Adam at lr 1e-3 with per-class loss weights
(the class_weights arm), on `--threads` CPUs. Rounds alternate a JAX process and a PyTorch
process; each trains for `--steps` optimiser steps after its warm-up and reports steps/s:

- JAX: `bioaug.classifier.train_classifier`, the function every classify job runs (its
  minibatch gather, the jitted step, and one validation pass over 256 tiles at the end),
  called once to compile and then timed;
- PyTorch 2.13 CPU: the same network in torch.nn (NCHW, or channels-last with
  `--channels-last`), a plain loop: index a batch, forward, weighted cross-entropy,
  backward, Adam step.

Reported: steps/s and tiles/s of both (medians over rounds), the ratio JAX / PyTorch (aim:
at least 1.0) and best round / best round, and JAX's compile time. torch is not a
dependency of bioaug: the peer runs in `--torch-python` (default: this interpreter if it has
torch, else the reader venv `.venv-readers` that tests/readers/setup_venv.sh builds; else
the peer is skipped with a note).

    .venv/bin/python tests/benchmarks/bench_classifier.py            # ~2 min
    .venv/bin/python tests/benchmarks/bench_classifier.py --small    # one short round

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
BATCH, SIZE, CHANNELS, CLASSES = 64, 32, 3, 4
WIDTHS = [16, 32, 64]
N_TRAIN, N_VAL = 2048, 256


def pin_threads(n: int) -> None:
    try:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    except (AttributeError, OSError):
        pass


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((N_TRAIN + N_VAL, SIZE, SIZE, CHANNELS), dtype=np.float32)
    y = rng.integers(0, CLASSES, N_TRAIN + N_VAL).astype(np.int32)
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


# ----------------------------------------------------------------------------- workers
def jax_worker(a) -> dict:
    pin_threads(a.threads)
    t_proc = time.perf_counter()
    from bioaug.runtime import configure_jax

    configure_jax(a.cache)
    import jax

    from bioaug.classifier.train import train_classifier

    cfg = {"epochs": 1, "batch_size": BATCH, "lr": 1e-3, "architecture": "small_cnn", "channels": WIDTHS}
    tx, ty, vx, vy = data()
    names = [str(i) for i in range(CLASSES)]
    t0 = time.perf_counter()
    train_classifier(tx, ty, vx, vy, names, cfg, seed=0, class_weighted=True, total_steps=2)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_classifier(tx, ty, vx, vy, names, cfg, seed=1, class_weighted=True, total_steps=a.steps)
    dt = time.perf_counter() - t0
    return dict(
        fw="jax",
        steps=a.steps,
        seconds=dt,
        steps_per_s=a.steps / dt,
        tiles_per_s=a.steps * BATCH / dt,
        compile_s=compile_s,
        process_s=time.perf_counter() - t_proc,
        version=jax.__version__,
    )


def torch_worker(a) -> dict:
    pin_threads(a.threads)
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    def block(c_in, c_out):
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=0.1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=0.1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]

    layers, c_in = [], CHANNELS
    for c_out in WIDTHS:
        layers += block(c_in, c_out)
        c_in = c_out
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, CLASSES))
    tx, ty, _, _ = data()
    x = torch.from_numpy(np.ascontiguousarray(tx.transpose(0, 3, 1, 2)))
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(ty.astype(np.int64))
    counts = torch.bincount(y, minlength=CLASSES).float()
    weights = (1.0 / counts) / (1.0 / counts)[y].mean()  # inverse frequency, mean 1 over the samples
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    gen = torch.Generator().manual_seed(0)

    def steps(n):
        for _ in range(n):
            idx = torch.randint(0, len(x), (BATCH,), generator=gen)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()

    steps(5)  # warm-up
    t0 = time.perf_counter()
    steps(a.steps)
    dt = time.perf_counter() - t0
    return dict(
        fw="torch",
        steps=a.steps,
        seconds=dt,
        steps_per_s=a.steps / dt,
        tiles_per_s=a.steps * BATCH / dt,
        channels_last=a.channels_last,
        version=torch.__version__,
    )


# ----------------------------------------------------------------------------- driver
def torch_python(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    venv = REPO / ".venv-readers" / "bin" / "python"
    return str(venv) if venv.exists() else None


def run_worker(python: str, kind: str, a, cache: str) -> dict:
    cmd = [python, str(HERE), "--worker", kind, "--threads", str(a.threads), "--steps", str(a.steps)]
    cmd += ["--cache", cache] + (["--channels-last"] if a.channels_last else [])
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "workflow"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="one round of 10 steps")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed optimiser steps per round (default 150)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="the peer in channels-last memory format")
    ap.add_argument("--torch-python", default=None, help="a Python with torch (default: see the docstring)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.rounds = a.rounds or (1 if a.small else 3)
    a.steps = a.steps or (10 if a.small else 150)
    if a.worker:
        out = jax_worker(a) if a.worker == "jax" else torch_worker(a)
        print(json.dumps(out))
        return out

    peer = None if a.no_torch else torch_python(a.torch_python)
    if peer is None:
        print("PyTorch peer skipped (no Python with torch); `pip install torch==2.13.0` or build .venv-readers")
    jax_rows, torch_rows = [], []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(a.rounds):
            jax_rows.append(run_worker(sys.executable, "jax", a, cache))
            if peer:
                torch_rows.append(run_worker(peer, "torch", a, cache))
    out = {
        "benchmark": "classifier",
        "batch": BATCH,
        "tile": f"{SIZE}x{SIZE}x{CHANNELS}",
        "channels": WIDTHS,
        "threads": a.threads,
        "rounds": a.rounds,
        "steps": a.steps,
        "jax_steps_per_s": med(jax_rows, "steps_per_s"),
        "jax_tiles_per_s": med(jax_rows, "tiles_per_s"),
        "jax_compile_s": med(jax_rows, "compile_s"),
        "jax_steps_per_s_all": [round(r["steps_per_s"], 3) for r in jax_rows],
        "jax_version": jax_rows[0]["version"],
        "wall_s": time.perf_counter() - t_all,
    }
    print(
        f"\nclassifier training (SmallCNN {WIDTHS}, batch {BATCH}, {SIZE}x{SIZE}x{CHANNELS}), {a.threads} threads, "
        f"medians of {a.rounds} interleaved round(s) of {a.steps} steps"
    )
    print(f"  JAX (train_classifier):  {out['jax_steps_per_s']:8.2f} steps/s {out['jax_tiles_per_s']:9.0f} tiles/s")
    if torch_rows:
        ts = med(torch_rows, "steps_per_s")
        best = max(r["steps_per_s"] for r in jax_rows) / max(r["steps_per_s"] for r in torch_rows)
        out.update(
            torch_steps_per_s=ts,
            torch_tiles_per_s=med(torch_rows, "tiles_per_s"),
            torch_steps_per_s_all=[round(r["steps_per_s"], 3) for r in torch_rows],
            torch_version=torch_rows[0]["version"],
            channels_last=a.channels_last,
            ratio=out["jax_steps_per_s"] / ts,
            ratio_best=best,
        )
        print(f"  PyTorch {out['torch_version']:<15} {ts:8.2f} steps/s {out['torch_tiles_per_s']:9.0f} tiles/s")
        print(f"  ratio JAX / PyTorch: {out['ratio']:.2f} (median), {best:.2f} (best round / best round)")
    print(f"  JAX compile (first call): {out['jax_compile_s']:.1f} s")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
