"""Tile stage: object-centred crops with per-image, per-channel percentile normalisation.

Each job handles one shard of source images (tiles.shard_size images), so a large dataset
becomes a modest number of jobs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .images import read_image
from .runtime import progress

log = logging.getLogger("bioaug.tiling")


def shard_images(index: pd.DataFrame, shard_size: int, shard: int | None = None):
    """Source images of every shard (or of one shard): sorted, then cut into blocks."""
    images = sorted(index["image"].unique())
    blocks = [images[i:i + shard_size] for i in range(0, len(images), shard_size)]
    return blocks if shard is None else blocks[shard]


def n_shards(index: pd.DataFrame, shard_size: int) -> int:
    return math.ceil(index["image"].nunique() / shard_size)


def normalise(image: np.ndarray, low_pct: float, high_pct: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale each channel so its low/high percentiles map to 0/1 (clipped); returns stats too.

    Per-image statistics absorb differences in exposure and illumination between fields.
    """
    flat = image.reshape(-1, image.shape[-1])
    low, high = np.percentile(flat, [low_pct, high_pct], axis=0)
    scale = np.where(high > low, high - low, 1.0)
    out = np.clip((image - low) / scale, 0.0, 1.0).astype(np.float32)
    return out, low, high


def centred_crops(image: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, C) crops centred on (x, y); borders are reflect-padded."""
    pad = size // 2 + 1
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.empty((len(xs), size, size, image.shape[-1]), np.float32)
    for i, (x, y) in enumerate(zip(xs, ys)):
        top = int(round(y)) - size // 2 + pad
        left = int(round(x)) - size // 2 + pad
        out[i] = padded[top:top + size, left:left + size]
    return out


def tile_images(root: str | Path, index: pd.DataFrame, images: list[str], cfg: dict):
    """Tiles, their metadata and normalisation stats for the given source images."""
    root = Path(root)
    tiles, metas, norms = [], [], []
    low_pct, high_pct = cfg["percentiles"]
    for image in progress(images, desc="tiling"):
        rows = index[index["image"] == image]
        arr = read_image(root / image, cfg.get("channels"))
        arr, low, high = normalise(arr, low_pct, high_pct)
        tiles.append(centred_crops(arr, rows["x"].to_numpy(), rows["y"].to_numpy(), cfg["size"]))
        metas.append(rows[["item_id", "label", "image"]])
        norms.append(pd.DataFrame({"image": image, "channel": np.arange(len(low)), "low": low, "high": high}))
    if not tiles:
        raise ValueError("no images in this shard")
    channels = {t.shape[-1] for t in tiles}
    if len(channels) > 1:
        raise ValueError(f"images in this shard have different channel counts {sorted(channels)}; set tiles.channels")
    out = np.concatenate(tiles), pd.concat(metas, ignore_index=True), pd.concat(norms, ignore_index=True)
    log.info("%d tiles from %d images", len(out[0]), len(images))
    return out
