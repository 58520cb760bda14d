"""Balance stage: real train tiles + synthetic tiles as a dataset any classifier can read.

Layout: balanced/<class>/*.tif (float32, H x W x C, values in [0, 1]; readable by tifffile and
ImageFolder-style loaders) and balanced/manifest.csv with path, label, origin, split and, for
synthetic rows, the generator checkpoint, its step and the seed that made the tile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from .config import safe_name
from .runtime import atomic_path, progress
from .tilestore import load_tiles

log = logging.getLogger("bioaug.balance")
MANIFEST_COLUMNS = ["path", "label", "origin", "split", "item_id", "tile_id", "checkpoint", "step", "seed"]


def _write_tile(path: Path, tile: np.ndarray) -> None:
    tile = tile.astype(np.float32)
    if tile.shape[-1] == 1:  # single channel: a plain 2-D greyscale page
        tifffile.imwrite(path, tile[..., 0], photometric="minisblack")
    else:  # one page of H x W with C samples per pixel; tifffile.imread gives (H, W, C) back
        tifffile.imwrite(path, tile, photometric="minisblack", planarconfig="contig", metadata={"axes": "YXS"})


def write_balanced(items: pd.DataFrame, shard_npys, synthetic_npys, out_dir: str | Path) -> pd.DataFrame:
    """Write the balanced dataset atomically and return its manifest."""
    x, _, real = load_tiles(shard_npys, items, splits=("train",))
    rows = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for tile, (_, r) in progress(zip(x, real.iterrows()), total=len(x), desc="real tiles"):
            rel = Path(safe_name(r["label"])) / f"real_{r['tile_id']}.tif"
            (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
            _write_tile(tmp / rel, tile)
            rows.append({"path": str(rel), "label": r["label"], "origin": "real", "split": "train", "item_id": r["item_id"],
                         "tile_id": r["tile_id"]})
        for npy in synthetic_npys:
            npy = Path(npy)
            tiles = np.load(npy)
            meta = pd.read_csv(npy.with_suffix(".csv"))
            use = meta["used_for_balance"].to_numpy(bool) if "used_for_balance" in meta else np.ones(len(meta), bool)
            tiles, meta = tiles[use], meta[use]
            for i, (tile, (_, m)) in enumerate(zip(tiles, meta.iterrows())):
                rel = Path(safe_name(m["label"])) / f"synthetic_{i:06d}_seed{int(m['seed'])}.tif"
                (tmp / rel.parent).mkdir(parents=True, exist_ok=True)
                _write_tile(tmp / rel, tile)
                rows.append({"path": str(rel), "label": m["label"], "origin": "synthetic", "split": "train",
                             "checkpoint": m["checkpoint"], "step": int(m["step"]), "seed": int(m["seed"])})
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        manifest.to_csv(tmp / "manifest.csv", index=False)
    counts = manifest.groupby(["label", "origin"]).size().unstack(fill_value=0)
    log.info("balanced dataset: %d tiles\n%s", len(manifest), counts.to_string())
    return manifest


def read_balanced(balanced_dir: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All tiles of a balanced dataset as (N, H, W, C) float32, with the manifest rows."""
    balanced_dir = Path(balanced_dir)
    manifest = pd.read_csv(balanced_dir / "manifest.csv")
    tiles = [tifffile.imread(balanced_dir / p) for p in manifest["path"]]
    x = np.stack([t if t.ndim == 3 else t[..., None] for t in tiles]).astype(np.float32)
    return x, manifest
