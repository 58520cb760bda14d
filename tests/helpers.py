"""Test-only helpers built on the production formats (so the files they write are the real ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bioaug.config import defaults
from bioaug.formats.images import open_image
from bioaug.formats.shards import META_COLUMNS, NORM_COLUMNS, ShardWriter
from bioaug.runtime import BioaugError
from bioaug.stages.tile import iter_tiles


def write_shard(npy_path, tiles: np.ndarray, meta: pd.DataFrame, norm: pd.DataFrame) -> None:
    """A shard from in-memory tiles, written by the pipeline's own ShardWriter."""
    if len(tiles) != len(meta):
        raise ValueError(f"{npy_path}: {len(tiles)} tiles but {len(meta)} metadata rows")
    with ShardWriter(npy_path, tiles.shape[1:3]) as writer:
        writer.add(tiles, meta.reindex(columns=META_COLUMNS).to_dict("records"))
        writer.finish(norm)


def tiles_cfg(**overrides) -> dict:
    """A complete `tiles` section: the schema's defaults with `overrides`."""
    return {**defaults()["tiles"], **overrides}


def tile_images(root, index: pd.DataFrame, images: list[str], cfg: dict):
    """Tiles (in memory), their metadata and normalisation stats: the tile stage's
    iter_tiles collected instead of streamed to a shard. `cfg` may be partial (defaults fill it)."""
    cfg = tiles_cfg(**cfg)
    stats: list[dict] = []
    tiles, metas = [], []
    for t, m in iter_tiles(root, index, images, cfg, stats):
        tiles.append(t)
        metas.extend(m)
    size = cfg["size"]
    c = len({s["channel"] for s in stats}) or 1
    arr = np.concatenate(tiles) if tiles else np.zeros((0, size, size, c), np.float32)
    return arr, pd.DataFrame(metas, columns=META_COLUMNS), pd.DataFrame(stats, columns=NORM_COLUMNS)


def read_image(path: str | Path, channels: list[int] | None = None) -> np.ndarray:
    """A whole image as (H, W, C) float32, keeping only `channels` when given."""
    src = open_image(path, channels)
    try:
        arr = src.read()
    except Exception as err:
        raise BioaugError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if not np.isfinite(arr).all():
        raise BioaugError(f"{path}: contains NaN or infinite pixel values")
    return arr


def image_shape(path: str | Path) -> tuple[int, int, int]:
    return open_image(path).shape


def check_group_integrity(items: pd.DataFrame) -> None:
    """Raise if any group appears in more than one split."""
    per_group = items.groupby("group")["split"].nunique()
    crossing = per_group[per_group > 1]
    if len(crossing):
        raise BioaugError(f"groups in more than one split: {list(crossing.index[:5])}")
