"""The balanced dataset: results/<ds>/balanced/<class>/*.tif + manifest.csv.

Tiles are float32 TIFFs, H x W x C, values in [0, 1] (one 2-D greyscale page when C = 1);
`tifffile.imread` gives the array back. manifest.csv has one row per tile: path (relative to
the folder), label, origin (real | synthetic), split, the real item and tile ids, and for
synthetic rows the generator checkpoint, its training step and the seed that made the tile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from .items import read_table, safe_name

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["path", "label", "origin", "split", "item_id", "tile_id", "checkpoint", "step", "seed"]


def real_path(label: str, tile_id: str) -> Path:
    return Path(safe_name(label)) / f"real_{tile_id}.tif"


def synthetic_path(label: str, index: int, seed: int) -> Path:
    return Path(safe_name(label)) / f"synthetic_{index:06d}_seed{int(seed)}.tif"


def write_tile(path: Path, tile: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tile = tile.astype(np.float32)
    if tile.shape[-1] == 1:  # single channel: a plain 2-D greyscale page
        tifffile.imwrite(path, tile[..., 0], photometric="minisblack")
    else:  # one page of H x W with C samples per pixel; tifffile.imread gives (H, W, C) back
        tifffile.imwrite(path, tile, photometric="minisblack", planarconfig="contig", metadata={"axes": "YXS"})


def write_manifest(rows: list[dict], folder: Path) -> pd.DataFrame:
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"step": "Int64", "seed": "Int64"})  # 40, not 40.0
    manifest.to_csv(Path(folder) / MANIFEST, index=False)
    return manifest


def read_manifest(folder: str | Path) -> pd.DataFrame:
    return read_table(Path(folder) / MANIFEST, ("path", "label", "origin", "split", "item_id", "tile_id", "checkpoint"))


def read_tiles(folder: str | Path, paths) -> np.ndarray:
    """Tiles at manifest `paths` as (N, H, W, C) float32."""
    tiles = [tifffile.imread(Path(folder) / p) for p in paths]
    return np.stack([t if t.ndim == 3 else t[..., None] for t in tiles]).astype(np.float32)


def read_balanced(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All tiles of a balanced dataset as (N, H, W, C) float32, with the manifest rows."""
    manifest = read_manifest(folder)
    return read_tiles(folder, manifest["path"]), manifest
