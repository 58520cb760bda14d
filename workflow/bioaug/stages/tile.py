"""Tile stage: fixed-size tiles with per-image, per-channel percentile normalisation.

How an item becomes tiles depends on its kind (see stages/index.py):
  point  one crop of tiles.size centred on the point
  box    one crop centred on the box (`context: fixed`), or the box itself plus a margin,
         made square and resized to the tile (`context: box`)
  window sliding windows over the image (stride `tiles.stride`), keeping those whose
         foreground share reaches `tiles.min_foreground` (image-level labels)
  array  the whole (small) image, resized to the tile if needed (NPZ / MedMNIST)
Crops that reach past the border are reflect-padded (`border: skip` drops them at index).

Each job handles one shard of source images, sized by work (tiles.shard_megapixels source
pixels, at most tiles.shard_size images; formats/shards.py), so a large dataset becomes a
modest number of jobs whether it is thousands of small crops or a few huge slides. Regions
are read from the image source one at a time, so an uncompressed TIFF is never loaded whole
(memory is bounded by the tiles in flight).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .. import tiling_rules
from ..formats.images import open_image
from ..formats.items import read_items
from ..formats.shards import NORM_COLUMNS, ShardWriter, shard_images
from ..runtime import BioaugError, progress

log = logging.getLogger("bioaug.tile")


def run(data_dir, index_csv, shard: int, cfg: dict, out_npy) -> int:
    """The tile stage: tile shard `shard` of the dataset (see shard_images)."""
    index = read_items(index_csv)
    return tile_shard(data_dir, index, shard_images(index, cfg, shard), cfg, out_npy)


def percentile_stats(sample: np.ndarray, low_pct: float, high_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis) low/high percentiles of an image (or of a regular sample of it).

    8/16-bit images take a histogram path that gives exactly np.percentile's linear
    interpolation, several times faster than its partition: one bincount and one cumulative
    sum per channel, over the channel's plane as it lies in memory (a channel-planar CYX image
    needs no interleaving copy).
    """
    c = sample.shape[-1]
    if sample.dtype in (np.uint8, np.uint16) and sample.size:
        pcts = (low_pct, high_pct)
        stats = np.array([_hist_percentiles(np.cumsum(np.bincount(sample[..., k].ravel())), pcts) for k in range(c)])
        return stats[:, 0].astype(np.float32), stats[:, 1].astype(np.float32)
    flat = sample.reshape(-1, c)
    low, high = np.percentile(flat.astype(np.float32, copy=False), [low_pct, high_pct], axis=0)
    return low.astype(np.float32), high.astype(np.float32)


def normalisation_stats(sample: np.ndarray, cfg: dict) -> tuple[np.ndarray, np.ndarray, str]:
    """(low, high, method) per channel of an image from its raw `sample` (tiles.normalise)."""
    c = sample.shape[-1]
    method = tiling_rules.normalise_method(cfg["normalise"], sample.dtype, c)
    if method == "bit_depth":
        if np.issubdtype(sample.dtype, np.integer):
            info = np.iinfo(sample.dtype)
            low, high = np.full(c, max(info.min, 0), np.float32), np.full(c, info.max, np.float32)
        else:
            low, high = np.zeros(c, np.float32), np.ones(c, np.float32)
        return low, high, method
    if method == "joint":  # one low/high over all channels: the colour balance stays
        lo, hi = percentile_stats(sample.reshape(-1, 1), *cfg["percentiles"])
        return np.repeat(lo, c), np.repeat(hi, c), method
    return (*percentile_stats(sample, *cfg["percentiles"]), method)


def _hist_percentiles(cum: np.ndarray, pcts) -> list[float]:
    """Percentiles (linear interpolation) from the cumulative histogram of integer values."""
    n = cum[-1]
    out = []
    for p in pcts:
        h = (n - 1) * p / 100.0
        lo = int(np.floor(h))
        v_lo, v_hi = np.searchsorted(cum, [lo, min(lo + 1, n - 1)], side="right")
        out.append(float(v_lo + (h - lo) * (v_hi - v_lo)))
    return out


def apply_stats(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map low/high to 0/1 per channel (last axis), clipped, as float32; a flat channel maps
    to 0. `x` may be in the file's own pixel type, and a strided view.

    One channel at a time with scalar low and scale, into a contiguous plane that is copied
    into place once: numpy broadcasting a per-channel vector over an interleaved (..., C)
    array runs inner loops of length C, and three passes over strided memory cost twice
    the one strided copy (tests/benchmarks/bench_tiling.py)."""
    scale = np.where(high > low, high - low, 1.0).astype(np.float32)
    out = np.empty(x.shape, np.float32)
    plane = np.empty(x.shape[:-1], np.float32)
    for k in range(x.shape[-1]):
        np.subtract(x[..., k], low[k], out=plane, dtype=np.float32)
        plane /= scale[k]
        np.clip(plane, 0.0, 1.0, out=plane)
        out[..., k] = plane
    return out


def reflect_index(start: np.ndarray, size: int, lo: int, hi: int, edge: np.ndarray) -> np.ndarray:
    """Indices [start, start + size) per row of `start`, mapped into [lo, hi) the way
    ImageSource.region pads: numpy's 'reflect' of the part inside (mirrored at the edge pixel,
    repeatedly where the crop is larger than that part), or 'edge' where `edge` (region()
    pads a part one pixel high or wide by repeating it, in both directions)."""
    idx = start[:, None] + np.arange(size)
    first = np.clip(start, lo, hi - 1)[:, None]  # region() pads the clipped part [first, last)
    last = np.clip(start + size, lo + 1, hi)[:, None]
    n = last - first
    period = np.maximum(2 * (n - 1), 1)
    m = (idx - first) % period
    reflected = first + np.where(m >= n, period - m, m)
    return np.where(edge[:, None] | (n == 1), np.clip(idx, first, last - 1), reflected)


def gather_crops(src, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Crops of an in-memory image source, (n, size, size, C) in the file's own pixel type
    (a view of channel-planar memory: apply_stats makes the float32 copy).

    Crops inside the image come in one gather from a sliding-window view, row by row (rows
    of a channel plane are contiguous, so a CYX image is never gathered pixel by pixel);
    crops that reach past the border are reflect-padded exactly as ImageSource.region does."""
    arr = src.array
    h, w, c = arr.shape
    tops = np.round(np.asarray(ys, float)).astype(int) - size // 2
    lefts = np.round(np.asarray(xs, float)).astype(int) - size // 2
    outside = (tops + size <= 0) | (lefts + size <= 0) | (tops >= h) | (lefts >= w)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise BioaugError(f"{src.path}: region at ({lefts[i]}, {tops[i]}) lies outside the {w}x{h} image")
    inside = (tops >= 0) & (lefts >= 0) & (tops + size <= h) & (lefts + size <= w)
    if inside.any():  # (h - size + 1, w - size + 1, C, size, size), a view
        windows = np.lib.stride_tricks.sliding_window_view(arr, (size, size), axis=(0, 1))
    if inside.all():
        crops = windows[tops, lefts]
    else:
        crops = np.empty((len(tops), c, size, size), arr.dtype)
        if inside.any():
            crops[inside] = windows[tops[inside], lefts[inside]]
        t, l = tops[~inside], lefts[~inside]
        one_pixel = (np.minimum(t + size, h) - np.maximum(t, 0) == 1) | (
            np.minimum(l + size, w) - np.maximum(l, 0) == 1
        )
        rows, cols = reflect_index(t, size, 0, h, one_pixel), reflect_index(l, size, 0, w, one_pixel)
        crops[~inside] = np.moveaxis(arr, -1, 0)[:, rows[:, :, None], cols[:, None, :]].swapaxes(0, 1)
    return src.select_channels(np.moveaxis(crops, 1, -1), raw=True)  # (n, C, size, size) -> C last


def resize(tile: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an (h, w, C) array to (size, size, C)."""
    if tile.shape[0] == size and tile.shape[1] == size:
        return tile
    from scipy.ndimage import zoom

    out = zoom(tile, (size / tile.shape[0], size / tile.shape[1], 1), order=1, grid_mode=True, mode="nearest")
    return out[:size, :size].astype(np.float32)


def _item_tiles(src, row, cfg: dict, low, high):
    """Yield (tile_suffixes, raw tiles, zoom) batches of one item, before normalisation; zoom
    is source pixels per tile pixel (1 for crops; a resized box or image: its side / tile size).

    Sliding windows come one row of windows at a time, so an image-level item over a huge
    image never holds all its windows at once."""
    size = cfg["size"]
    kind = row["kind"]
    if kind == "point" or (kind == "box" and cfg["context"] == "fixed"):
        top, left = int(round(row["y"])) - size // 2, int(round(row["x"])) - size // 2
        yield [""], [src.region(top, left, size, size)], 1.0
    elif kind == "box":
        side = int(math.ceil(max(row["xmax"] - row["xmin"], row["ymax"] - row["ymin"]) * (1 + cfg["box_margin"])))
        side = max(side, 2)
        top, left = int(round(row["y"] - side / 2)), int(round(row["x"] - side / 2))
        yield [""], [resize(src.region(top, left, side, side), size)], side / size
    elif kind == "array":
        yield [""], [resize(src.read(), size)], max(src.shape[:2]) / size
    elif kind == "window" and (mode := tiling_rules.image_mode(cfg["image_mode"], *src.shape[:2], size)) != "windows":
        h, w, _ = src.shape
        if mode == "whole":  # the whole (pre-cropped) image, padded to a square with its edge, resized
            image = src.read()
            side = max(h, w)
            pad = ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2), (0, 0)
            yield [""], [resize(np.pad(image, pad, mode="edge"), size)], side / size
        else:  # center: a tile-sized crop at the centre (reflect-padded when the image is smaller)
            yield [""], [src.region((h - size) // 2, (w - size) // 2, size, size)], 1.0
    elif kind == "window":
        h, w, _ = src.shape
        stride = cfg["stride"] or size
        lefts = list(range(0, w - size + 1, stride))
        for r, top in enumerate(range(0, h - size + 1, stride)):
            strip = src.region(top, 0, size, w)  # one read per row of windows
            # foreground share of every window in the row at once (column sums of the mask)
            mask = apply_stats(strip, low, high).max(axis=-1) > cfg["foreground_threshold"]
            cols = np.concatenate([[0], np.cumsum(mask.sum(axis=0))])
            fg = (cols[np.array(lefts) + size] - cols[lefts]) / (size * size)
            keep = np.flatnonzero(fg >= cfg["min_foreground"])
            if len(keep):
                suffixes = [f"_w{r * len(lefts) + j}" for j in keep]
                yield suffixes, [strip[:, lefts[j] : lefts[j] + size] for j in keep], 1.0
    else:
        raise BioaugError(f"item {row['item_id']}: unknown kind {kind!r}")


def iter_tiles(root: str | Path, index: pd.DataFrame, images: list[str], cfg: dict, stats: list | None = None):
    """Yield (tiles, metadata rows) per item, normalised; appends per-image stats to `stats`.

    A generator, so a shard with many tiles (dense sliding windows over a huge image) can be
    streamed to disk with bounded memory.
    """
    root = Path(root)
    wanted = set(images)
    sub = index[index["image"].isin(wanted)]
    kinds = sub["kind"].to_numpy()
    # per item once (not per image): is it a fixed-size crop (one gather per image)?
    fixed_all = (kinds == "point") | ((kinds == "box") & (cfg["context"] == "fixed"))
    positions = sub.groupby("image", sort=False).indices
    columns = {c: sub[c].to_numpy() for c in ("item_id", "label", "x", "y")}
    n_empty = 0
    channels = None
    for image in progress(images, desc="tiling"):
        src = open_image(root / image, cfg["channels"])
        if channels is None:
            channels = src.shape[-1]
        elif src.shape[-1] != channels:
            raise BioaugError(
                f"{root / image}: has {src.shape[-1]} channel(s), other images in this shard have "
                f"{channels}; choose common channels with tiles.channels"
            )
        low, high, method = normalisation_stats(src.sample(cfg["percentile_pixels"], raw=True), cfg)
        if stats is not None:
            stats.extend(
                {"image": image, "channel": c, "low": lo, "high": hi, "method": method}
                for c, (lo, hi) in enumerate(zip(low, high))
            )
        at = positions[image]
        if fixed_all[at].all() and isinstance(src.array, np.ndarray):
            # The common case, in one gather: every object of an in-memory image at once.
            raw = gather_crops(src, columns["x"][at], columns["y"][at], cfg["size"])
            meta = [
                {"tile_id": i, "item_id": i, "label": lab, "image": image, "pixel_size_um": src.pixel_size_um}
                for i, lab in zip(columns["item_id"][at], columns["label"][at])
            ]
            yield apply_stats(raw, low, high), meta
            continue
        for row in sub.iloc[at].itertuples(index=False):
            row = row._asdict()
            produced = False
            for suffixes, raw, zoom in _item_tiles(src, row, cfg, low, high):
                produced = True
                pixel_size = src.pixel_size_um * zoom if src.pixel_size_um is not None else None
                meta = [
                    {
                        "tile_id": f"{row['item_id']}{sfx}",
                        "item_id": row["item_id"],
                        "label": row["label"],
                        "image": image,
                        "pixel_size_um": pixel_size,
                    }
                    for sfx in suffixes
                ]
                yield apply_stats(np.stack(raw), low, high), meta
            n_empty += not produced
    if n_empty:
        log.warning("%d item(s) had no window above tiles.min_foreground and gave no tiles", n_empty)


def tile_shard(root: str | Path, index: pd.DataFrame, images: list[str], cfg: dict, out_npy) -> int:
    """Tile the images straight into a shard on disk; memory holds one item's tiles at a time."""
    stats: list[dict] = []
    with ShardWriter(out_npy, (cfg["size"], cfg["size"])) as writer:
        for t, m in iter_tiles(root, index, images, cfg, stats):
            writer.add(t, m)
        writer.finish(pd.DataFrame(stats, columns=NORM_COLUMNS))
    log.info("%d tiles from %d images", writer.n, len(images))
    return writer.n
