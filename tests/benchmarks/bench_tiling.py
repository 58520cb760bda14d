"""Tiling + normalisation throughput, as a ratio to a plain tifffile.imread of the same files.

Writes N 2-channel uint16 512x512 fields (CYX, like the built-in dataset) with about 30
point annotations each into a temporary folder, indexes them with
bioaug.stages.index.index_dataset, then times, interleaved over 5 repetitions:

  read  tifffile.imread of every file (nothing else)
  tile  bioaug.stages.tile.tile_shard over the same files: the path the pipeline's tile
        jobs run (read, percentile statistics, crops, normalisation, shard writing)

and reports medians: files/s of both, tiles/s, and ratio = tile files/s / read files/s.

    .venv/bin/python tests/benchmarks/bench_tiling.py [--small] [--n-files N] [--profile]
        [--compression zlib]

--compression writes the fields zlib-compressed (Deflate, as many microscopes and OME-TIFF
writers do) instead of uncompressed: the plain read then pays for decompression, and the
ratio shows what tiling adds to a read that is not almost free.

--profile also prints a cProfile summary of one tile_shard call. The last line printed
is a JSON object with the figures. Timings on a shared machine are indicative; only the
ratio (measured side by side in one run) is meant to be compared across machines.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from bioaug.formats.shards import shard_files
from bioaug.stages.index import index_dataset
from bioaug.stages.tile import tile_shard

# The `tiles` section of config.yaml (copied so the benchmark does not move when it is edited).
TILES_CFG = {
    "size": 32,
    "channels": None,
    "percentiles": [1.0, 99.8],
    "percentile_pixels": 65536,
    "shard_size": 48,
    "context": "fixed",
    "box_margin": 0.25,
    "border": "reflect",
    "stride": None,
    "min_foreground": 0.0,
    "foreground_threshold": 0.25,
    "normalise": "per_channel",
    "image_mode": "windows",
}
CLASSES = {"interphase": 0.70, "elongated": 0.17, "mitotic": 0.10, "apoptotic": 0.03}


def _stamp(radius: float) -> np.ndarray:
    r = int(3 * radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return np.exp(-(xx**2 + yy**2) / (2 * radius**2))


def make_dataset(
    root: Path, n_files: int, size: int = 512, cells: int = 30, seed: int = 0, channels: int = 2, compression=None
) -> int:
    """N fields (2, size, size) uint16 with Gaussian 'cells' (channels=1: the nuclear channel
    alone, a YX TIFF; `compression`: tifffile's, e.g. "zlib"); returns the number of points."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    nucleus, cyto = _stamp(4.0), _stamp(9.0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    rows = []
    for i in range(n_files):
        img = np.empty((2, size, size), np.float32)
        illum = 1.0 + 0.3 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 1.5) + yy * rng.uniform(0.5, 1.5)))
        for c in range(2):
            img[c] = 300 * illum + rng.normal(0, 20, (size, size))
        n = int(rng.integers(cells - 3, cells + 4))
        xs, ys = rng.uniform(0, size - 1, n), rng.uniform(0, size - 1, n)
        labels = rng.choice(list(CLASSES), size=n, p=list(CLASSES.values()))
        for x, y in zip(xs, ys):
            for c, stamp, amp in ((0, nucleus, 8000), (1, cyto, 3000)):
                r = stamp.shape[0] // 2
                cx, cy = int(x), int(y)
                t, b, l, rr = max(cy - r, 0), min(cy + r + 1, size), max(cx - r, 0), min(cx + r + 1, size)
                img[c, t:b, l:rr] += (
                    amp * rng.uniform(0.6, 1.4) * stamp[t - cy + r : b - cy + r, l - cx + r : rr - cx + r]
                )
        rel = f"images/field_{i:04d}.tif"
        pixels = np.clip(img[:channels], 0, 65535).astype(np.uint16)
        axes = "CYX" if channels > 1 else "YX"
        tifffile.imwrite(
            root / rel,
            pixels if channels > 1 else pixels[0],
            photometric="minisblack",
            metadata={"axes": axes},
            compression=compression,
        )
        rows.extend((rel, lab, round(float(x), 1), round(float(y), 1)) for lab, x, y in zip(labels, xs, ys))
    pd.DataFrame(rows, columns=["image", "label", "x", "y"]).to_csv(root / "annotations.csv", index=False)
    return len(rows)


def plain_read(root: Path, images: list[str]) -> float:
    t0 = time.perf_counter()
    for image in images:
        tifffile.imread(root / image)
    return time.perf_counter() - t0


def tiling(root: Path, items: pd.DataFrame, images: list[str], cfg: dict) -> tuple[float, int]:
    out = root / "shards" / "shard-00000.npy"
    for old in shard_files(out):  # as Snakemake removes a job's outputs before it runs
        old.unlink(missing_ok=True)
    t0 = time.perf_counter()
    n = tile_shard(root, items, images, cfg, out)
    return time.perf_counter() - t0, n


def profile_tiling(root: Path, items: pd.DataFrame, images: list[str], cfg: dict, top: int = 18) -> str:
    prof = cProfile.Profile()
    prof.enable()
    tile_shard(root, items, images, cfg, root / "shards" / "profiled.npy")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="quick smoke version (16 files, 3 repetitions)")
    ap.add_argument("--n-files", type=int, default=None, help="number of fields (default 64, --small 16)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5, --small 3)")
    ap.add_argument(
        "--percentile-pixels",
        type=lambda v: None if v == "null" else int(v),
        default=TILES_CFG["percentile_pixels"],
        help="tiles.percentile_pixels (default: config.yaml's; null = every pixel, exact)",
    )
    ap.add_argument("--channels", type=int, choices=(1, 2), default=2, help="2: CYX fields; 1: YX (one channel)")
    ap.add_argument(
        "--compression", choices=("none", "zlib"), default="none", help="how the fields are stored (default none)"
    )
    ap.add_argument("--profile", action="store_true", help="print a cProfile summary of one tile_shard call")
    args = ap.parse_args(argv)
    n_files = args.n_files or (16 if args.small else 64)
    reps = args.reps or (3 if args.small else 5)
    cfg = {**TILES_CFG, "percentile_pixels": args.percentile_pixels}

    with tempfile.TemporaryDirectory(prefix="bioaug-bench-tiling-") as tmp:
        root = Path(tmp) / "data"
        t0 = time.perf_counter()
        compression = None if args.compression == "none" else args.compression
        n_points = make_dataset(root, n_files, channels=args.channels, compression=compression)
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        items, rejected = index_dataset(root, {"format": "points", "annotations": "annotations.csv"}, cfg)
        t_index = time.perf_counter() - t0
        images = sorted(items["image"].unique())
        assert len(images) == n_files and len(items) == n_points, (len(images), len(items), rejected)

        plain_read(root, images)  # warm-up: page cache, imports, first-call costs
        tiling(root, items, images, cfg)
        read_s, tile_s, n_tiles = [], [], 0
        for rep in range(reps):  # interleaved, alternating order, so drift hits both alike
            order = ("read", "tile") if rep % 2 == 0 else ("tile", "read")
            for what in order:
                if what == "read":
                    read_s.append(plain_read(root, images))
                else:
                    dt, n_tiles = tiling(root, items, images, cfg)
                    tile_s.append(dt)
        prof_text = profile_tiling(root, items, images, cfg) if args.profile else None

    read_med, tile_med = statistics.median(read_s), statistics.median(tile_s)
    res = {
        "benchmark": "tiling",
        "n_files": n_files,
        "channels": args.channels,
        "percentile_pixels": args.percentile_pixels,
        "compression": args.compression,
        "n_tiles": n_tiles,
        "reps": reps,
        "read_s": read_med,
        "tile_s": tile_med,
        "read_files_per_s": n_files / read_med,
        "tile_files_per_s": n_files / tile_med,
        "tiles_per_s": n_tiles / tile_med,
        "ratio": (n_files / tile_med) / (n_files / read_med),
        "index_s": t_index,
    }
    print(
        f"bench_tiling: {n_files} fields {args.channels}x512x512 uint16 ({'CYX' if args.channels > 1 else 'YX'}, "
        f"compression {args.compression}), "
        f"{n_tiles} point tiles of "
        f"{TILES_CFG['size']} px; median of {reps} interleaved repetitions (dataset written in "
        f"{t_make:.1f} s, indexed in {t_index:.2f} s)"
    )
    print(f"  {'':34}{'median s':>10}{'files/s':>10}{'tiles/s':>10}   all runs (s)")
    print(
        f"  {'tifffile.imread':34}{read_med:10.3f}{res['read_files_per_s']:10.1f}{'':>10}   "
        + " ".join(f"{t:.3f}" for t in read_s)
    )
    print(
        f"  {'tile_shard (read+norm+crop+write)':34}{tile_med:10.3f}{res['tile_files_per_s']:10.1f}"
        f"{res['tiles_per_s']:10.0f}   " + " ".join(f"{t:.3f}" for t in tile_s)
    )
    print(f"  ratio tiling/plain read (files/s): {res['ratio']:.3f}  (aim >= 0.5)")
    if prof_text:
        print("\ncProfile of one tile_shard call (sorted by own time):")
        print(prof_text)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
    sys.exit(0)
