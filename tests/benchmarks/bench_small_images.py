"""Many small images: tiling jobs and wall time, sharded by file count vs by work.

Writes a class-folders dataset of N single-cell crops (default 7,922 of 40 x 40 x 3 uint8, the
size of a public imaging-flow-cytometry cell-cycle set; --small: 240), then runs the pipeline
up to the tiles (download, index, every tile job) twice, each in a
fresh folder with tests/configs/tiny.yaml's other settings:

  by_count  tiles.shard_size 48 (the old default: one job per 48 source images)
  by_work   the defaults: shards of tiles.shard_megapixels (256) source pixels, no image cap

and reports, for each, the tile jobs and the wall time of the run (the pipeline's own path:
Snakemake, one process per job). The two runs go one after the other in one invocation.

    .venv/bin/python tests/benchmarks/bench_small_images.py [--small] [--n-images N] [--cores 2]

The last line printed is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
DATASET = "cells"
CLASSES = {"G1": 0.55, "S": 0.2, "G2": 0.15, "M": 0.10}
POLICIES = {
    "by_count": {"shard_size": 48, "shard_megapixels": 1e9},
    "by_work": {"shard_size": None, "shard_megapixels": 256},
}


def make_source(src: Path, n_images: int, size: int = 40, seed: int = 0) -> None:
    import tifffile

    rng = np.random.default_rng(seed)
    labels = rng.choice(list(CLASSES), size=n_images, p=list(CLASSES.values()))
    for i, label in enumerate(labels):
        folder = src / label
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"cell_{i:05d}.tif", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def write_config(workdir: Path, src: Path, policy: dict) -> None:
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["datasets"] = {DATASET: {"source": str(src), "format": "class_folders"}}
    config["tiles"].update(size=16, image_mode="whole", **policy)  # 40 px crops resized to the tiny GAN's 16
    workdir.mkdir(parents=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def no_slurm_env() -> dict:
    """As tests/conftest.py: a stub scontrol so the SLURM plugin's import-time probe fails fast."""
    stub = Path(tempfile.mkdtemp(prefix="bioaug-no-slurm-"))
    (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (stub / "scontrol").chmod(0o755)
    return {**os.environ, "PATH": f"{stub}{os.pathsep}{os.environ.get('PATH', '')}", "JAX_PLATFORMS": "cpu"}


def run_until_tiles(workdir: Path, cores: int, timeout: int) -> tuple[float, dict[str, int]]:
    """Wall time and finished jobs per rule of: the index (a checkpoint: the tile jobs exist only
    once it has run), then every tile job."""
    base = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), "--cores", str(cores)]
    jobs: dict[str, int] = {}
    t0 = time.perf_counter()
    for step in ("index", "tiles"):
        # --until tile plans nothing across the index checkpoint: name the shards instead
        target = [f"results/{DATASET}/index.csv"] if step == "index" else shard_targets(workdir)
        proc = subprocess.run([*base, *target], capture_output=True, text=True, timeout=timeout, env=no_slurm_env())
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake ({step}) failed in {workdir}:\n{proc.stderr[-4000:]}")
        for rule in re.findall(r"Finished jobid: \S+ \(Rule: (\w+)\)", proc.stdout + proc.stderr):
            jobs[rule] = jobs.get(rule, 0) + 1
    return time.perf_counter() - t0, jobs


def shard_targets(workdir: Path) -> list[str]:
    sys.path.insert(0, str(REPO / "workflow"))
    from bioaug.config import dataset_section, validate_config
    from bioaug.formats.items import read_items
    from bioaug.formats.shards import n_shards

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    validate_config(config)
    index = read_items(workdir / "results" / DATASET / "index.csv")
    n = n_shards(index, dataset_section(config, DATASET, "tiles"))
    return [f"results/{DATASET}/tiles/shard-{k:05d}.npy" for k in range(n)]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="240 images (the smoke test)")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    n_images = args.n_images or (240 if args.small else 7922)

    res: dict = {"benchmark": "small_images", "n_images": n_images, "size": 40, "channels": 3, "cores": args.cores}
    with tempfile.TemporaryDirectory(prefix="bioaug-bench-small-") as tmp:
        src = Path(tmp) / "src"
        t0 = time.perf_counter()
        make_source(src, n_images)
        res["make_s"] = time.perf_counter() - t0
        for name, policy in POLICIES.items():
            work = Path(tmp) / name
            write_config(work, src, policy)
            wall, jobs = run_until_tiles(work, args.cores, timeout=3600)
            n_tiles = sum(
                len(np.load(p, mmap_mode="r")) for p in (work / "results" / DATASET / "tiles").glob("shard-*.npy")
            )
            if n_tiles != n_images:
                raise RuntimeError(f"{name}: {n_tiles} tiles for {n_images} images")
            res[f"{name}_tile_jobs"] = jobs.get("tile", 0)
            res[f"{name}_wall_s"] = wall
            res[f"{name}_jobs"] = jobs
    res["speedup"] = res["by_count_wall_s"] / res["by_work_wall_s"]

    print(f"bench_small_images: {n_images} crops 40x40x3 uint8 (class folders), --cores {args.cores}")
    print(f"  {'policy':10}{'tile jobs':>10}{'wall s':>9}   (download + index + tile jobs)")
    for name in POLICIES:
        print(f"  {name:10}{res[f'{name}_tile_jobs']:10d}{res[f'{name}_wall_s']:9.1f}")
    print(f"  by_count / by_work wall time: {res['speedup']:.2f}x")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
