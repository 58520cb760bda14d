"""The tile shard format that every stage after tiling reads.

Which source images go to which shard is decided here too (`shard_images`, `n_shards`), so
the workflow's input functions and the tile stage agree. A shard is three files with one
prefix:
  {prefix}.npy        float32 (N, H, W, C) tiles, values in [0, 1] (memory-mappable, so
                      training can stream rows without loading the shard)
  {prefix}.csv        one row per tile: tile_id, item_id, label, image (an item can have
                      several tiles, e.g. sliding windows over an image-level label) and
                      pixel_size_um (microns per tile pixel; empty where the source has none)
  {prefix}.norm.csv   per-image, per-channel normalisation: image, channel, low, high (raw values
                      mapped to 0 and 1) and method (per_channel | joint | bit_depth)
The split is not stored here: it comes from items.csv, so changing the split does not
re-tile anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..runtime import BioaugError, atomic_path
from .items import class_names, read_table

META_COLUMNS = ["tile_id", "item_id", "label", "image", "pixel_size_um"]
NORM_COLUMNS = ["image", "channel", "low", "high", "method"]


def shard_images(index: pd.DataFrame, tiles: dict, shard: int | None = None):
    """Source images of every shard (or of one shard), sized by work: the images, sorted, are
    cut into consecutive blocks of at most `tiles.shard_megapixels` source pixels (height x
    width x channels; an image larger than that is a shard of its own) and at most
    `tiles.shard_size` images (null: no cap), so thousands of small crops make a few jobs and
    a few huge slides still make many."""
    budget = tiles.get("shard_megapixels")
    cap = tiles.get("shard_size")
    pixels = _image_pixels(index)
    blocks: list[list[str]] = []
    used = 0.0
    for image, n in pixels.items():
        full = blocks and (
            (cap is not None and len(blocks[-1]) >= cap) or (budget is not None and used + n > budget * 1e6)
        )
        if not blocks or full:
            blocks.append([])
            used = 0.0
        blocks[-1].append(image)
        used += n
    return blocks if shard is None else blocks[shard]


def _image_pixels(index: pd.DataFrame) -> pd.Series:
    """Source pixels per image, images sorted (an index.csv written before the image_pixels
    column existed counts each image as one pixel: its shards are cut by tiles.shard_size)."""
    if "image_pixels" in index.columns:
        pixels = index.groupby("image", sort=True)["image_pixels"].first().astype(float)
    else:
        pixels = pd.Series(1.0, index=sorted(index["image"].unique()))
    return pixels.sort_index()


def n_shards(index: pd.DataFrame, tiles: dict) -> int:
    return len(shard_images(index, tiles))


def shard_files(npy_path: str | Path) -> tuple[Path, Path, Path]:
    npy_path = Path(npy_path)
    stem = npy_path.with_suffix("")
    return npy_path, stem.with_suffix(".csv"), Path(f"{stem}.norm.csv")


class ShardWriter:
    """Write a shard tile by tile, straight into its .npy: the file starts with a header of
    fixed length, tiles are appended as they come (memory never holds the whole shard) and,
    once their number is known, the header is rewritten in place with the final shape. The
    .npy is written under a temporary name and moved into place only by `finish`."""

    HEADER_BYTES = 256  # room for any shape's header, padded to a multiple of 64 (the .npy alignment)

    def __init__(self, npy_path, tile_hw: tuple[int, int]):
        self.npy_path = Path(npy_path)
        self.tile_hw = tuple(tile_hw)
        self.n, self.channels, self.meta = 0, None, []
        self.npy_path.parent.mkdir(parents=True, exist_ok=True)
        self._part_path = self.npy_path.with_name(f".{self.npy_path.name}.part")
        self._out = open(self._part_path, "wb")
        self._out.write(b"\0" * self.HEADER_BYTES)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._out.close()
        self._part_path.unlink(missing_ok=True)

    def add(self, tiles: np.ndarray, meta_rows: list[dict]) -> None:
        if self.channels is None:
            self.channels = tiles.shape[-1]
        self._out.write(np.ascontiguousarray(tiles, dtype=np.float32).data)
        self.meta.extend(meta_rows)
        self.n += len(tiles)

    def finish(self, norm: pd.DataFrame) -> None:
        shape = (self.n, *self.tile_hw, self.channels or 1)
        self._out.seek(0)
        self._out.write(npy_header(shape, np.float32, self.HEADER_BYTES))
        self._out.close()
        npy, csv, norm_csv = shard_files(self.npy_path)
        with atomic_path(norm_csv) as tmp:
            norm.to_csv(tmp, index=False)
        with atomic_path(csv) as tmp:
            pd.DataFrame(self.meta, columns=META_COLUMNS).to_csv(tmp, index=False)
        os.replace(self._part_path, npy)


def npy_header(shape: tuple, dtype, length: int) -> bytes:
    """A version 1.0 .npy header of exactly `length` bytes (magic and length field included)
    for a C-ordered array: numpy's own header text, padded with spaces."""
    shape = tuple(int(d) for d in shape)
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    prefix = np.lib.format.magic(1, 0)
    body_len = length - len(prefix) - 2
    if len(text) + 1 > body_len:
        raise ValueError(f"a .npy header for shape {shape} does not fit in {length} bytes")
    return prefix + body_len.to_bytes(2, "little") + (text.ljust(body_len - 1) + "\n").encode("latin1")


def select_tiles(shard_npys, items: pd.DataFrame, splits=("train",)):
    """Which shard rows belong to `splits`, without reading tiles.

    Returns (parts, y, rows): parts is a list of (memory-mapped shard, sorted row indices),
    y the class indices (order of `class_names(items)`), rows the matching metadata table,
    all in the same order.
    """
    index = {n: i for i, n in enumerate(class_names(items))}
    wanted = items.loc[items["split"].isin(splits), ["item_id", "split"]]
    parts, rows = [], []
    for npy in shard_npys:
        npy, csv, _ = shard_files(npy)
        meta = read_shard_table(csv)
        meta["row"] = np.arange(len(meta))
        sel = meta.merge(wanted, on="item_id", how="inner")
        if len(sel):
            parts.append((np.load(npy, mmap_mode="r"), np.sort(sel["row"].to_numpy())))
            rows.append(sel.sort_values("row"))
    if not rows:
        raise BioaugError(f"no tiles found for split(s) {list(splits)}")
    table = pd.concat(rows, ignore_index=True)
    y = table["label"].map(index).to_numpy(np.int32)
    return parts, y, table.drop(columns="row")


def load_tiles(shard_npys, items: pd.DataFrame, splits=("train",)) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Tiles of the given splits from all shards, in memory, as (x, y, rows) with y the class
    index (`items` is items.csv; class indices follow `class_names(items)`)."""
    parts, y, table = select_tiles(shard_npys, items, splits)
    return np.concatenate([np.asarray(arr[idx]) for arr, idx in parts]), y, table


def read_shard_table(csv_path: str | Path) -> pd.DataFrame:
    """A shard's tile table (tile_id, item_id, label, image as text; pixel_size_um a float)."""
    return read_table(csv_path, META_COLUMNS[:4]).astype({"pixel_size_um": np.float64})


def read_norm_table(npy_path: str | Path) -> pd.DataFrame:
    """A shard's per-image normalisation (image, channel, low, high, method)."""
    return read_table(shard_files(npy_path)[2], ("image", "method"))
