"""Peak memory of indexing and tiling one large uncompressed TIFF, each pass in its own process.

Writes one single-channel uint16 TIFF of 16384 x 16384 (512 MB; --small: 4096 x 4096)
uncompressed into a temporary folder, with bright 'cells' on a noisy background, then runs
what the pipeline runs, each pass in a fresh subprocess that reports its peak RSS
(resource.getrusage(RUSAGE_SELF).ru_maxrss):

  baseline        imports only (numpy, tifffile, pandas, bioaug.images/annotations/tiling)
  points          index_dataset (format points; validate_image of the image) then
                  tile_shard (the tile rule's entry point) for 2000 point items at random positions over the image
  window          index_dataset (format class_folders; validate_image) then tile_shard
                  of the one image-level item, kind "window", stride = tile size = 64,
                  min_foreground 0 (every window kept, as with the default config)
  window_sparse   the same with min_foreground 0.2 (about 4% of the windows kept), which
                  separates the memory of reading the image from that of the tiles kept

Peak RSS is reported after the index step and after tiling (ru_maxrss only grows), next
to the image size and the size of the float32 shard file tile_shard writes. VmHWM (the
process's own high-water mark, /proc/self/status) is shown as a cross-check: ru_maxrss
also counts the parent's peak at exec time, so the driver writes the image in a
subprocess of its own and stays small.

    .venv/bin/python tests/benchmarks/bench_large_tiff.py [--small] [--side N]

The last line printed is a JSON object with the figures (MB = 2**20 bytes).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 64
N_POINTS = 2000
SPARSE_MIN_FOREGROUND = 0.2  # keeps about 4% of the windows of this image
MB = 2**20
# A guard so that a regression cannot take the whole (shared) machine: the worker's
# address space is capped; a pass that needs more fails with MemoryError (reported).
ADDRESS_SPACE_CAP = 12 * 2**30
BASE_TILES = {
    "size": TILE,
    "channels": None,
    "percentiles": [1.0, 99.8],
    "percentile_pixels": 65536,
    "shard_size": 48,
    "context": "fixed",
    "box_margin": 0.25,
    "border": "reflect",
    "stride": TILE,
    "min_foreground": 0.0,
    "foreground_threshold": 0.25,
    "normalise": "per_channel",
    "image_mode": "windows",
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def vm_hwm_mb() -> float:
    """Peak RSS of this process's own address space (Linux VmHWM), or NaN elsewhere.

    A cross-check of ru_maxrss, which Linux carries over exec() from the parent's peak
    (subprocess uses vfork), so a large parent would show in every child. The driver
    therefore stays small: it writes the image in a subprocess too.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ----------------------------------------------------------------------------- worker


def worker(mode: str, root: Path) -> dict:
    """One pass, run in a fresh process; prints its figures as one JSON line."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
    except (ValueError, OSError):
        pass
    t0 = time.perf_counter()
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import tifffile  # noqa: F401

    from bioaug.stages.index import index_dataset
    from bioaug.stages.tile import tile_shard

    res = {
        "mode": mode,
        "import_s": time.perf_counter() - t0,
        "rss_import_mb": peak_rss_mb(),
        "hwm_import_mb": vm_hwm_mb(),
    }
    if mode == "baseline":
        return res
    tiles_cfg = dict(BASE_TILES)
    if mode == "points":
        dataset = {"format": "points", "annotations": "annotations.csv"}
    else:
        dataset = {"format": "class_folders"}
        if mode == "window_sparse":
            tiles_cfg["min_foreground"] = SPARSE_MIN_FOREGROUND
    t0 = time.perf_counter()
    items, _ = index_dataset(root, dataset, tiles_cfg)  # validate_image: the index-time check
    res["index_s"] = time.perf_counter() - t0
    res["rss_index_mb"] = peak_rss_mb()
    images = sorted(items["image"].unique())
    t0 = time.perf_counter()
    # What the tile rule runs: tiles stream into the shard file on disk.
    out = Path(tempfile.mkdtemp(prefix="bioaug-bench-shard-")) / "shard-00000.npy"
    n_tiles = tile_shard(root, items, images, tiles_cfg, out)
    res["tile_s"] = time.perf_counter() - t0
    res["rss_peak_mb"] = peak_rss_mb()
    res["hwm_peak_mb"] = vm_hwm_mb()
    res["n_items"] = len(items)
    res["n_tiles"] = n_tiles
    res["tiles_mb"] = out.stat().st_size / MB
    import shutil

    shutil.rmtree(out.parent, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------- driver


def write_image(root: Path, side: int, seed: int = 0) -> tuple[Path, int]:
    """root/cells/big.tif (side x side uint16, uncompressed) and a points annotations.csv."""
    import pandas as pd
    import tifffile

    rng = np.random.default_rng(seed)
    (root / "cells").mkdir(parents=True)
    path = root / "cells" / "big.tif"
    # tifffile.memmap creates the uncompressed file and maps it: the image is written
    # block by block, never held whole in this process.
    mm = tifffile.memmap(path, shape=(side, side), dtype=np.uint16, photometric="minisblack")
    block = 512
    for top in range(0, side, block):
        rows = min(block, side - top)
        mm[top : top + rows] = rng.integers(900, 1100, (rows, side), dtype=np.uint16)
    # Cells: discs of radius 10-16 covering about 5% of the image.
    n_cells = int(0.05 * side * side / (math.pi * 13**2))
    yy, xx = np.mgrid[-16:17, -16:17]
    dist = np.hypot(yy, xx)
    cx, cy = rng.integers(16, side - 16, n_cells), rng.integers(16, side - 16, n_cells)
    radii, amps = rng.uniform(10, 16, n_cells), rng.integers(5000, 20000, n_cells)
    for x, y, r, a in zip(cx, cy, radii, amps):
        sl = (slice(y - 16, y + 17), slice(x - 16, x + 17))
        mm[sl] = np.maximum(mm[sl], np.where(dist <= r, a, 0).astype(np.uint16))
    mm.flush()
    del mm
    # Point items at random positions all over the image (borders included).
    px, py = rng.integers(0, side, N_POINTS), rng.integers(0, side, N_POINTS)
    labels = np.array(["a", "b", "c", "d"])[rng.integers(0, 4, N_POINTS)]
    pd.DataFrame({"image": "cells/big.tif", "label": labels, "x": px.astype(float), "y": py.astype(float)}).to_csv(
        root / "annotations.csv", index=False
    )
    return path, N_POINTS


def run_worker(mode: str, root: Path, timeout: int, *extra: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", mode, "--root", str(root), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {mode} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    res = json.loads(lines[-1])
    res["wall_s"] = wall
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="quick smoke version (4096 x 4096)")
    ap.add_argument("--side", type=int, default=None, help="image side in pixels (default 16384, --small 4096)")
    ap.add_argument(
        "--worker", choices=["write", "baseline", "points", "window", "window_sparse"], help=argparse.SUPPRESS
    )
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    side = args.side or (4096 if args.small else 16384)
    if args.worker == "write":
        path, n_points = write_image(args.root, side)
        print(json.dumps({"path": str(path), "n_points": n_points}))
        return {}
    if args.worker:
        print(json.dumps(worker(args.worker, args.root)))
        return {}

    timeout = 120 if args.small else 1800
    with tempfile.TemporaryDirectory(prefix="bioaug-bench-large-") as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        written = run_worker("write", root, timeout, "--side", str(side))  # keeps this process small
        path, n_points = Path(written["path"]), written["n_points"]
        t_write = time.perf_counter() - t0
        image_mb = path.stat().st_size / MB
        runs = {mode: run_worker(mode, root, timeout) for mode in ("baseline", "points", "window", "window_sparse")}

    base = runs["baseline"]
    res = {
        "benchmark": "large_tiff",
        "side": side,
        "image_mb": image_mb,
        "n_points": n_points,
        "baseline_rss_mb": base["rss_import_mb"],
        "baseline_hwm_mb": base["hwm_import_mb"],
        "baseline_wall_s": base["wall_s"],
        "driver_rss_mb": peak_rss_mb(),
    }
    for mode in ("points", "window", "window_sparse"):
        r = runs[mode]
        res.update(
            {
                f"{mode}_rss_mb": r["rss_peak_mb"],
                f"{mode}_hwm_mb": r["hwm_peak_mb"],
                f"{mode}_index_rss_mb": r["rss_index_mb"],
                f"{mode}_wall_s": r["wall_s"],
                f"{mode}_index_s": r["index_s"],
                f"{mode}_tile_s": r["tile_s"],
                f"{mode}_n_tiles": r["n_tiles"],
                f"{mode}_tiles_mb": r["tiles_mb"],
            }
        )

    print(
        f"bench_large_tiff: {side} x {side} uint16 uncompressed TIFF, {image_mb:.0f} MB on disk "
        f"(written in {t_write:.1f} s); tile {TILE} px; peak RSS per pass, each in its own process"
    )
    print(
        f"  {'pass':16}{'tiles':>8}{'tiles MB':>10}{'index s':>9}{'tile s':>8}{'wall s':>8}"
        f"{'RSS@index':>11}{'peak RSS':>10}{'VmHWM':>9}"
    )
    print(
        f"  {'baseline':16}{'':>8}{'':>10}{'':>9}{'':>8}{base['wall_s']:8.1f}{'':>11}"
        f"{base['rss_import_mb']:8.0f}MB{base['hwm_import_mb']:7.0f}MB"
    )
    for mode in ("points", "window", "window_sparse"):
        r = runs[mode]
        print(
            f"  {mode:16}{r['n_tiles']:8d}{r['tiles_mb']:10.1f}{r['index_s']:9.2f}{r['tile_s']:8.2f}"
            f"{r['wall_s']:8.1f}{r['rss_index_mb']:9.0f}MB{r['rss_peak_mb']:8.0f}MB{r['hwm_peak_mb']:7.0f}MB"
        )
    print(
        "  (aim: peak RSS <= 400 MB; 'tiles MB' is the shard file tile_shard streams to disk, "
        "which a pass must hold at its end)"
    )
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
