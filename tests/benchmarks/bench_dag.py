"""How long `snakemake -n` takes to build the whole DAG for a dataset of many source images.

Writes a local dataset of 10,000 tiny 64x64 uint16 TIFFs (--small: 500) with 2-3 point
annotations each (4 classes) and a working folder whose config.yaml is
tests/configs/tiny.yaml with that one dataset and tiles.shard_size 100. Then:

  1. runs the pipeline for real up to the split (target results/<ds>/fold-0/items.csv: download,
     the index checkpoint, split), since the DAG after the checkpoint depends on its output;
  2. times `snakemake -n` of the whole workflow (3 repetitions, median; --small: 1),
     interleaved with `snakemake -n results/<ds>/fold-0/items.csv` (already built: nothing to do),
     which measures the fixed cost of starting Snakemake and parsing the workflow;
  3. parses the "Job stats" table: jobs per rule and in total (expect about
     n_images / shard_size tile jobs, not one per image).

    .venv/bin/python tests/benchmarks/bench_dag.py [--small] [--n-images N]

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"
DATASET = "synth"
SHARD_SIZE = 100
CLASSES = {"interphase": 0.55, "elongated": 0.2, "mitotic": 0.15, "apoptotic": 0.10}


def make_source(src: Path, n_images: int, size: int = 64, seed: int = 0) -> int:
    """src/images/img_NNNNN.tif (size x size uint16) and src/annotations.csv; returns #points."""
    import pandas as pd
    import tifffile

    rng = np.random.default_rng(seed)
    (src / "images").mkdir(parents=True)
    rows = []
    for i in range(n_images):
        rel = f"images/img_{i:05d}.tif"
        tifffile.imwrite(src / rel, rng.integers(100, 4000, (size, size), dtype=np.uint16), photometric="minisblack")
        n = int(rng.integers(2, 4))
        labels = rng.choice(list(CLASSES), size=n, p=list(CLASSES.values()))
        xs, ys = rng.integers(8, size - 8, n), rng.integers(8, size - 8, n)
        rows.extend((rel, lab, float(x), float(y)) for lab, x, y in zip(labels, xs, ys))
    pd.DataFrame(rows, columns=["image", "label", "x", "y"]).to_csv(src / "annotations.csv", index=False)
    return len(rows)


def write_config(workdir: Path, src: Path) -> None:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["datasets"] = {DATASET: {"source": str(src), "format": "points", "annotations": "annotations.csv"}}
    config["tiles"]["shard_size"] = SHARD_SIZE
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(workdir: Path, *args: str, timeout: int) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--cores", "2", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return dt, proc.stdout + proc.stderr


def job_stats(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: count, ..., 'total': n} ({} if nothing to do)."""
    if "Job stats:" not in output:
        return {}
    counts = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="quick smoke version (500 images, 1 repetition)")
    ap.add_argument("--n-images", type=int, default=None, help="source images (default 10000, --small 500)")
    ap.add_argument("--reps", type=int, default=None, help="dry-run repetitions (default 3, --small 1)")
    args = ap.parse_args(argv)
    n_images = args.n_images or (500 if args.small else 10_000)
    reps = args.reps or (1 if args.small else 3)
    timeout = 600 if args.small else 3600

    with tempfile.TemporaryDirectory(prefix="bioaug-bench-dag-") as tmp:
        src, work = Path(tmp) / "source", Path(tmp) / "work"
        t0 = time.perf_counter()
        n_points = make_source(src, n_images)
        t_make = time.perf_counter() - t0
        write_config(work, src)
        t_setup, _ = snakemake(work, f"results/{DATASET}/fold-0/items.csv", timeout=timeout)
        n_items = sum(1 for _ in open(work / "results" / DATASET / "fold-0" / "items.csv")) - 1

        dag_s, base_s, stats = [], [], {}
        for rep in range(reps):  # interleaved, alternating order
            for what in ("dag", "base") if rep % 2 == 0 else ("base", "dag"):
                if what == "dag":
                    dt, out = snakemake(work, "-n", timeout=timeout)
                    dag_s.append(dt)
                    stats = job_stats(out)
                else:
                    dt, out = snakemake(work, "-n", f"results/{DATASET}/fold-0/items.csv", timeout=timeout)
                    base_s.append(dt)
                    if "Nothing to be done" not in out:
                        raise RuntimeError(f"items.csv is not up to date after the setup run:\n{out[-3000:]}")

    if not stats:
        raise RuntimeError("the dry run of the whole workflow planned no jobs")
    dag_med, base_med = statistics.median(dag_s), statistics.median(base_s)
    res = {
        "benchmark": "dag",
        "n_images": n_images,
        "n_points": n_points,
        "n_items": n_items,
        "shard_size": SHARD_SIZE,
        "reps": reps,
        "setup_s": t_setup,
        "dag_s": dag_med,
        "startup_s": base_med,
        "jobs_total": stats.get("total", 0),
        "tile_jobs": stats.get("tile", 0),
        "jobs": {k: v for k, v in stats.items() if k != "total"},
    }

    print(
        f"bench_dag: {n_images} source images 64x64 ({n_points} points, {n_items} items), "
        f"tiles.shard_size {SHARD_SIZE}; data written in {t_make:.1f} s, download+index+split run in {t_setup:.1f} s"
    )
    print(f"  {'':44}{'median s':>9}   all runs (s)")
    print(f"  {'snakemake -n (whole workflow: DAG build)':44}{dag_med:9.2f}   " + " ".join(f"{t:.2f}" for t in dag_s))
    print(
        f"  {'snakemake -n items.csv (startup, no work)':44}{base_med:9.2f}   " + " ".join(f"{t:.2f}" for t in base_s)
    )
    print("  planned jobs (Job stats):")
    width = max(len(rule) for rule in stats) + 2
    for rule, count in stats.items():
        print(f"    {rule:{width}}{count:6d}")
    print(f"  (aim: DAG build < 30 s; about {-(-n_images // SHARD_SIZE)} tile jobs, not {n_images})")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
