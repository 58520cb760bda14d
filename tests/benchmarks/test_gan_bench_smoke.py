"""Smoke test of bench_gan_step.py: `--small` runs and prints sane figures (~30-40 s).

No timing thresholds: only that the script exits 0 and that its final JSON line holds
the expected figures as positive, finite numbers (the PyTorch peer's only where torch is
installed; the benchmark skips it otherwise).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

pytestmark = pytest.mark.slow

EXPECTED = [
    "jax_steps_per_s_32",
    "jax_images_per_s_32",
    "gflop_per_step_32",
    "gflops_32",
    "compile_cold_s_32",
    "compile_warm_s_32",
    "loader_batches_per_s",
    "loader_multiple",
    "generate_tiles_per_s",
]
WITH_TORCH = ["torch_steps_per_s_32", "ratio_32"]


def test_gan_bench_small():
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench_gan_step.py"), "--small"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"--small failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    res = json.loads(lines[-1])
    keys = EXPECTED + (WITH_TORCH if res["torch"] else [])
    for key in keys:
        assert key in res, f"{key!r} missing from {sorted(res)}"
        value = res[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key}={value!r}"
        assert math.isfinite(value) and value > 0, f"{key}={value!r} is not a positive finite number"
    torch_here = importlib.util.find_spec("torch") is not None
    assert res["torch"] == torch_here
    if not torch_here:
        assert "PyTorch peer skipped" in proc.stdout
