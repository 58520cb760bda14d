"""One prepared run for a GPU machine: the GAN step, the classifier and a short end-to-end run,
written to one JSON file. Ready to run wherever JAX sees an accelerator (install
envs/requirements-cuda.txt); on a CPU it runs too (`--small`: the smoke test).

    JAX_PLATFORMS= .venv/bin/python tests/benchmarks/gpu_check.py --out gpu_check.json   # ~10 min on one GPU
    .venv/bin/python tests/benchmarks/gpu_check.py --small --no-e2e                      # CPU smoke

Sections of the JSON:

- `device`: JAX version, platform, device kind and count; the peak FLOP/s assumed for it
  (PEAK_TFLOPS, dense, by device kind; null for an unknown chip or a CPU).
- `gan_step`: per variant, the GAN's whole train step (D then G update, the real step of
  bioaug.gan.step with the variant's DiffAugment, conditional BN and mode-seeking settings):
  compile time, steps/s and images/s (median of timed steps, each waited for), FLOP per step
  from XLA's cost analysis, achieved TFLOP/s and its share of the peak for the variant's
  dtype. Variants: `config.yaml` (32 px, batch 32, float32; issue 15's goal is >= 100
  steps/s on one modern GPU), the same in bfloat16, and `presets/gpu.yaml`'s GAN (wider,
  batch 64, bfloat16).
- `classifier`: steps/s and tiles/s of `train_classifier` (small_cnn of config.yaml and the
  ResNet-18 of presets/gpu.yaml, in float32 and bfloat16) at 32 px, batch 64, after a compiling call.
- `e2e`: the built-in demo through Snakemake with presets/gpu.yaml shortened (gan.steps
  `--e2e-steps`, one seed): wall time, and job seconds per rule from its benchmark files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(HERE.parent))  # bench_gan_step (the compiled step, shared)

# Dense peak TFLOP/s by device kind (vendor data sheets): {dtype: peak}. fp32 is the
# non-tensor-core rate (XLA uses TF32 tensor cores for fp32 matmuls only when allowed).
PEAK_TFLOPS = {
    "H200": {"bfloat16": 989.0, "float32": 67.0},
    "H100": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5},
    "L40S": {"bfloat16": 362.0, "float32": 91.6},
    "L4": {"bfloat16": 121.0, "float32": 30.3},
}


def peak_for(kind: str) -> dict | None:
    for name, peak in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peak
    return None


def load_config(path: Path) -> dict:
    from bioaug.config import validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(config)
    return config


def gan_section(config: dict) -> dict:
    from bioaug.config import dataset_section

    return dataset_section(config, next(iter(config["datasets"])), "gan")


# ----------------------------------------------------------------------------- GAN step
def time_gan_step(section: dict, tile: int, channels: int, n_classes: int, n_steps: int, peak) -> dict:
    import jax
    from bench_gan_step import compiled_step

    from bioaug.gan import GanConfig

    cfg = GanConfig.from_section(section, tile, channels, n_classes)
    _, step, state, (x, y, hyper), compile_s, flops = compiled_step(cfg)
    times = []
    for _ in range(n_steps):
        t = time.perf_counter()
        state = step(state, x, y, hyper)
        jax.block_until_ready(state["step"])
        times.append(time.perf_counter() - t)
    # the same steps dispatched back to back (as training runs them), waited for once
    t = time.perf_counter()
    for _ in range(n_steps):
        state = step(state, x, y, hyper)
    jax.block_until_ready(state["step"])
    pipelined = n_steps / (time.perf_counter() - t)
    med = statistics.median(times)
    tflops = flops / med / 1e12
    dtype = section["compute_dtype"]
    return {
        "tile": tile,
        "batch": cfg.batch_size,
        "g_channels": list(cfg.g_channels),
        "d_channels": list(cfg.d_channels),
        "compute_dtype": dtype,
        "compile_s": compile_s,
        "steps_per_s": 1 / med,
        "steps_per_s_pipelined": pipelined,
        "images_per_s": cfg.batch_size / med,
        "gflop_per_step": flops / 1e9,
        "achieved_tflops": tflops,
        "share_of_peak": tflops / peak[dtype] if peak else None,
    }


# ----------------------------------------------------------------------------- classifier
def time_classifier(cfg: dict, n_steps: int, tile: int = 32) -> dict:
    import numpy as np

    from bioaug.classifier.train import train_classifier

    rng = np.random.default_rng(0)
    n, c, k = 2048, 3, 4
    x = rng.random((n + 256, tile, tile, c), dtype=np.float32)
    y = rng.integers(0, k, n + 256).astype(np.int32)
    cfg = {**cfg, "epochs": 1, "batch_size": 64}
    names = [str(i) for i in range(k)]
    t0 = time.perf_counter()
    train_classifier(x[:n], y[:n], x[n:], y[n:], names, cfg, seed=0, total_steps=2)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_classifier(x[:n], y[:n], x[n:], y[n:], names, cfg, seed=1, total_steps=n_steps)
    dt = time.perf_counter() - t0
    return {"compile_s": compile_s, "steps_per_s": n_steps / dt, "tiles_per_s": n_steps * 64 / dt}


# ----------------------------------------------------------------------------- end to end
def run_e2e(preset: Path, steps: int, timeout: int) -> dict:
    from bioaug.run_times import rule_times

    config = yaml.safe_load(preset.read_text())
    config["gan"]["steps"] = steps
    config["classifier"]["seeds"] = [0]
    config["split"]["folds"] = 1
    with tempfile.TemporaryDirectory(prefix="bioaug-gpu-e2e-") as tmp:
        work = Path(tmp)
        (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "all"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"ok": False, "wall_s": wall, "error": proc.stderr[-3000:]}
        by_rule: dict[str, list] = {}
        for f in (work / "benchmarks").rglob("*.tsv"):
            rule = f.stem.split("-")[0]
            by_rule.setdefault(rule, []).append(f)
        times = rule_times(by_rule)
        summary = (work / "results" / "demo" / "summary.md").read_text()
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
        else:
            smi = None
        return {
            "ok": True,
            "wall_s": wall,
            "gan_steps": steps,
            "rule_seconds": dict(zip(times["rule"], times["wall_s"].round(1))),
            "summary_md_chars": len(summary),
            "nvidia_smi": smi,
        }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the JSON here too (default: print only)")
    ap.add_argument("--small", action="store_true", help="a few steps of the tiny test GAN at 16 px (CPU smoke)")
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--e2e-steps", type=int, default=2000)
    ap.add_argument("--preset", default=str(REPO / "presets" / "gpu.yaml"))
    a = ap.parse_args(argv)

    from bioaug.runtime import configure_jax

    configure_jax(None)
    import jax

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", dev.platform)
    peak = peak_for(kind) if dev.platform != "cpu" else None
    out: dict = {
        "device": {
            "jax": jax.__version__,
            "platform": dev.platform,
            "kind": kind,
            "count": jax.device_count(),
            "peak_tflops": peak,
        }
    }
    preset = Path(a.preset)
    # --small (the CPU smoke test): the tiny test GAN at 16 px, so the script is exercised cheaply
    tile = 16 if a.small else 32
    base = gan_section(load_config(REPO / ("tests/configs/tiny.yaml" if a.small else "config.yaml")))
    variants = {"tests/configs/tiny.yaml" if a.small else "config.yaml": base}
    if not a.small:
        variants["config.yaml bfloat16"] = {**base, "compute_dtype": "bfloat16"}
        variants["presets/gpu.yaml"] = gan_section(load_config(preset))
    n_gan = 3 if a.small else 200
    out["gan_step"] = {}
    for name, section in variants.items():
        out["gan_step"][name] = r = time_gan_step(section, tile, 2, 4, n_gan, peak)
        print(
            f"GAN step {name}: {r['steps_per_s']:.1f} steps/s ({r['steps_per_s_pipelined']:.1f} pipelined), "
            f"{r['images_per_s']:.0f} img/s, {r['achieved_tflops']:.2f} TFLOP/s, compile {r['compile_s']:.1f} s",
            flush=True,
        )
    widths = [8, 16] if a.small else [16, 32, 64]
    classifiers = {"small_cnn": {"architecture": "small_cnn", "channels": widths, "lr": 1e-3}}
    if not a.small:
        classifiers["resnet18"] = {"architecture": "resnet", "width": 64, "blocks": [2, 2, 2, 2], "lr": 1e-3}
        # presets/gpu.yaml's judge runs in bfloat16: this says whether that measurably helps
        classifiers["resnet18 bfloat16"] = {**classifiers["resnet18"], "compute_dtype": "bfloat16"}
    out["classifier"] = {}
    for name, cfg in classifiers.items():
        out["classifier"][name] = r = time_classifier(cfg, 3 if a.small else 300, tile)
        print(f"classifier {name}: {r['steps_per_s']:.1f} steps/s, {r['tiles_per_s']:.0f} tiles/s", flush=True)
    if not a.no_e2e:
        out["e2e"] = run_e2e(preset, 50 if a.small else a.e2e_steps, timeout=3000)
        print(f"end to end: {out['e2e'].get('wall_s', 0):.0f} s, ok={out['e2e']['ok']}", flush=True)
    text = json.dumps(out)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
