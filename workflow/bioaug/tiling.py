"""Tile stage: fixed-size tiles with per-image, per-channel percentile normalisation.

How an item becomes tiles depends on its kind (see annotations.py):
  point  one crop of tiles.size centred on the point
  box    one crop centred on the box (`context: fixed`), or the box itself plus a margin,
         made square and resized to the tile (`context: box`)
  window sliding windows over the image (stride `tiles.stride`), keeping those whose
         foreground share reaches `tiles.min_foreground` (image-level labels)
  array  the whole (small) image, resized to the tile if needed (NPZ / MedMNIST)
Crops that reach past the border are reflect-padded (`border: skip` drops them at index).

Each job handles one shard of source images (tiles.shard_size images), so a large dataset
becomes a modest number of jobs. Regions are read from the image source one at a time, so
an uncompressed TIFF is never loaded whole (memory is bounded by the tiles in flight).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .images import open_image
from .runtime import BioaugError, progress

log = logging.getLogger("bioaug.tiling")
TILE_DEFAULTS = {"context": "fixed", "box_margin": 0.25, "border": "reflect", "stride": None,
                 "min_foreground": 0.0, "foreground_threshold": 0.25}


def shard_images(index: pd.DataFrame, shard_size: int, shard: int | None = None):
    """Source images of every shard (or of one shard): sorted, then cut into blocks."""
    images = sorted(index["image"].unique())
    blocks = [images[i:i + shard_size] for i in range(0, len(images), shard_size)]
    return blocks if shard is None else blocks[shard]


def n_shards(index: pd.DataFrame, shard_size: int) -> int:
    return math.ceil(index["image"].nunique() / shard_size)


def percentile_stats(sample: np.ndarray, low_pct: float, high_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel low/high percentiles of an image (or of a regular sample of it)."""
    flat = sample.reshape(-1, sample.shape[-1])
    low, high = np.percentile(flat, [low_pct, high_pct], axis=0)
    return low.astype(np.float32), high.astype(np.float32)


def apply_stats(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map low/high to 0/1 per channel, clipped; a flat channel maps to 0."""
    scale = np.where(high > low, high - low, 1.0).astype(np.float32)
    return np.clip((x - low) / scale, 0.0, 1.0).astype(np.float32)


def normalise(image: np.ndarray, low_pct: float, high_pct: float):
    """Normalise a whole (H, W, C) image; returns (normalised, low, high).

    Per-image statistics absorb differences in exposure and illumination between fields.
    """
    low, high = percentile_stats(image, low_pct, high_pct)
    return apply_stats(image, low, high), low, high


def centred_crops(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, C) crops of an in-memory image centred on (x, y), reflect-padded."""
    pad = size // 2 + 1
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.empty((len(xs), size, size, image.shape[-1]), np.float32)
    for i, (x, y) in enumerate(zip(xs, ys)):
        top = int(round(y)) - size // 2 + pad
        left = int(round(x)) - size // 2 + pad
        out[i] = padded[top:top + size, left:left + size]
    return out


def resize(tile: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) array to (size, size, C)."""
    if tile.shape[0] == size and tile.shape[1] == size:
        return tile
    from scipy.ndimage import zoom

    out = zoom(tile, (size / tile.shape[0], size / tile.shape[1], 1), order=1, grid_mode=True, mode="nearest")
    return out[:size, :size].astype(np.float32)


def _item_tiles(src, row, cfg: dict, low, high):
    """(tile_suffixes, raw tiles) of one item, before normalisation."""
    size = cfg["size"]
    kind = row["kind"]
    if kind == "point" or (kind == "box" and cfg["context"] == "fixed"):
        top, left = int(round(row["y"])) - size // 2, int(round(row["x"])) - size // 2
        return [""], [src.region(top, left, size, size)]
    if kind == "box":
        side = int(math.ceil(max(row["xmax"] - row["xmin"], row["ymax"] - row["ymin"]) * (1 + cfg["box_margin"])))
        side = max(side, 2)
        top, left = int(round(row["y"] - side / 2)), int(round(row["x"] - side / 2))
        return [""], [resize(src.region(top, left, side, side), size)]
    if kind == "array":
        return [""], [resize(src.read(), size)]
    if kind == "window":
        h, w, _ = src.shape
        stride = cfg["stride"] or size
        names, tiles = [], []
        k = 0
        for top in range(0, h - size + 1, stride):
            for left in range(0, w - size + 1, stride):
                tile = src.region(top, left, size, size)
                fg = (apply_stats(tile, low, high).max(axis=-1) > cfg["foreground_threshold"]).mean()
                if fg >= cfg["min_foreground"]:
                    names.append(f"_w{k}")
                    tiles.append(tile)
                k += 1
        return names, tiles
    raise BioaugError(f"item {row['item_id']}: unknown kind {kind!r}")


def tile_images(root: str | Path, index: pd.DataFrame, images: list[str], cfg: dict):
    """Tiles, their metadata (tile_id, item_id, label, image) and normalisation stats."""
    root = Path(root)
    cfg = {**TILE_DEFAULTS, **cfg}
    low_pct, high_pct = cfg["percentiles"]
    tiles, metas, norms = [], [], []
    n_windows_empty = 0
    for image in progress(images, desc="tiling"):
        rows = index[index["image"] == image]
        src = open_image(root / image, cfg.get("channels"))
        low, high = percentile_stats(src.sample(), low_pct, high_pct)
        norms.append(pd.DataFrame({"image": image, "channel": np.arange(len(low)), "low": low, "high": high}))
        for row in rows.to_dict("records"):
            suffixes, raw = _item_tiles(src, row, cfg, low, high)
            if not raw:
                n_windows_empty += 1
                continue
            tiles.extend(apply_stats(t, low, high) for t in raw)
            metas.extend({"tile_id": f"{row['item_id']}{s}", "item_id": row["item_id"], "label": row["label"],
                          "image": image} for s in suffixes)
    if n_windows_empty:
        log.warning("%d image(s) had no window above tiles.min_foreground and gave no tiles", n_windows_empty)
    channels = {t.shape[-1] for t in tiles}
    if len(channels) > 1:
        raise BioaugError(f"images in this shard have different channel counts {sorted(channels)}; set tiles.channels")
    size, c = cfg["size"], (channels.pop() if channels else 1)
    arr = np.stack(tiles) if tiles else np.zeros((0, size, size, c), np.float32)
    log.info("%d tiles from %d images", len(arr), len(images))
    return arr, pd.DataFrame(metas, columns=["tile_id", "item_id", "label", "image"]), pd.concat(norms, ignore_index=True)
