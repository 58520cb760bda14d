"""Class-balanced, restartable batches of training tiles, gathered in the background.

The sampler yields only indices; a *tile source* turns them into arrays:

- an in-memory array (what `bioaug.formats.shards.load_tiles` returns) or a memory-mapped one
  (`np.load(path, mmap_mode="r")`): `ArrayTiles`;
- the tile shards themselves, without loading them: `ShardedTiles`, a list of
  (memory-mapped .npy array, row indices) pairs seen as one array.

`BatchLoader` gathers the batch of step k (and places it on the devices) in a background
thread, `prefetch` batches ahead, so the device does not wait on host gathering.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def class_balanced_indices(labels: np.ndarray, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
    """Yield, forever, int64 index batches for steps start_step, start_step + 1, ...

    Each index draws a class uniformly among the classes that have items, then an item
    uniformly within that class (with replacement), so rare classes' conditionals are
    learned as often as common ones. Batch k depends only on (seed, k): a run restarted at
    `start_step` sees exactly the batches an uninterrupted run would.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels must be a non-empty 1-D array")
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    del classes
    step = int(start_step)
    while True:
        rng = np.random.default_rng((int(seed), step))
        cls = rng.integers(0, len(counts), size=batch_size)
        within = (rng.random(batch_size) * counts[cls]).astype(np.int64)
        yield order[starts[cls] + np.minimum(within, counts[cls] - 1)]
        step += 1


def same_class_pair_distance(tiles, labels: np.ndarray, seed: int, pairs_per_class: int = 256) -> float:
    """Mean pixel distance |x_a - x_b| between two distinct tiles of one class (tile units),
    averaged over the classes with at least two tiles; 0.0 if none has two.

    The pairs are drawn from (seed, class), so the value is the same in a resumed run.
    """
    source = as_tile_source(tiles)
    labels = np.asarray(labels)
    per_class = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        rng = np.random.default_rng((int(seed), 7, int(c)))
        a = rng.integers(0, len(members), pairs_per_class)
        b = (a + rng.integers(1, len(members), pairs_per_class)) % len(members)  # b != a
        idx = np.concatenate([members[a], members[b]])
        x = source.gather(idx).astype(np.float32)
        per_class.append(float(np.mean(np.abs(x[:pairs_per_class] - x[pairs_per_class:]))))
    return float(np.mean(per_class)) if per_class else 0.0


def evenly_spaced_rows(source, max_rows: int) -> np.ndarray:
    """At most `max_rows` rows of a tile source (`len`, `.gather`), evenly spaced from the
    first to the last, read with its gather (a large source is read only in part)."""
    n = len(source)
    return source.gather(np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64)))


def gather_batch(tiles, labels: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) batch for `idx` from an array (in memory or memory-mapped) or a tile source."""
    x = tiles.gather(idx) if hasattr(tiles, "gather") else _gather_rows(tiles, idx)
    return x, np.asarray(labels[idx], dtype=np.int32)


def _gather_rows(arr: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """float32 arr[idx]; on a memory map, read each needed row once, in file order."""
    idx = np.asarray(idx, np.int64)
    if isinstance(arr, np.memmap) or not isinstance(arr, np.ndarray):
        uniq, inverse = np.unique(idx, return_inverse=True)
        return np.asarray(arr[uniq], dtype=np.float32)[inverse]
    return np.asarray(arr[idx], dtype=np.float32)


class ArrayTiles:
    """A (N, H, W, C) array, in memory or memory-mapped, as a tile source."""

    in_memory: bool

    def __init__(self, array: np.ndarray):
        self.array = array
        self.in_memory = not isinstance(array, np.memmap)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def gather(self, idx: np.ndarray) -> np.ndarray:
        return _gather_rows(self.array, idx)


class ShardedTiles:
    """Rows of several (N_i, H, W, C) arrays, typically memory-mapped tile shards, as one.

    `parts` is a list of (array, rows): global row j is `rows[k]` of the part it falls in,
    in the order given. Nothing is loaded up front; `gather` reads only the rows a batch
    needs (grouped per part, in file order).
    """

    in_memory = False

    def __init__(self, parts: Sequence[tuple[np.ndarray, np.ndarray]]):
        self.parts = [(a, np.asarray(r, np.int64).reshape(-1)) for a, r in parts]
        self.parts = [(a, r) for a, r in self.parts if r.size]
        if not self.parts:
            raise ValueError("ShardedTiles: no rows")
        shapes = {tuple(a.shape[1:]) for a, _ in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"ShardedTiles: parts have different tile shapes {sorted(shapes)}")
        for a, r in self.parts:
            if r.min() < 0 or r.max() >= len(a):
                raise ValueError(f"ShardedTiles: row index out of range for a part of {len(a)} rows")
        self._tile_shape = shapes.pop()
        self._offsets = np.cumsum([0] + [r.size for _, r in self.parts])

    @classmethod
    def from_npys(cls, paths: Sequence[str | Path], rows: Sequence[np.ndarray] | None = None) -> ShardedTiles:
        """Memory-map each .npy (`np.load(mmap_mode='r')`); `rows[i]`: rows to use (all)."""
        arrays = [np.load(p, mmap_mode="r") for p in paths]
        if rows is None:
            rows = [np.arange(len(a)) for a in arrays]
        return cls(list(zip(arrays, rows)))

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._offsets[-1]),) + self._tile_shape

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def gather(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64).reshape(-1)
        out = np.empty((idx.size,) + self._tile_shape, np.float32)
        part = np.searchsorted(self._offsets, idx, side="right") - 1
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            arr, rows = self.parts[k]
            out[sel] = _gather_rows(arr, rows[idx[sel] - self._offsets[k]])
        return out


def sharded_tiles(shard_npys, items, splits=("train",)):
    """`bioaug.formats.shards.load_tiles` without loading: (ShardedTiles, y, rows).

    The same rows in the same order as `load_tiles(shard_npys, items, splits)` returns,
    but the tiles stay in the memory-mapped shards; pass the source to `train_gan` where
    the training tiles may not fit in memory.
    """
    from bioaug.formats.shards import select_tiles

    parts, y, rows = select_tiles(shard_npys, items, splits)
    return ShardedTiles(parts), y, rows


def as_tile_source(tiles: Any):
    """An `ArrayTiles` for an array, the object itself when it already is a source."""
    if hasattr(tiles, "gather") and hasattr(tiles, "shape"):
        return tiles
    if not isinstance(tiles, np.ndarray):
        tiles = np.asarray(tiles)
    return ArrayTiles(tiles)


class BatchLoader:
    """Iterator of the training batches of steps start_step + 1, ..., in order.

    A daemon thread draws the index batch of each step (`class_balanced_indices`, so a
    restart sees the same batches), gathers it from `source`, applies `place` (e.g. put it
    on the devices) and queues it, at most `prefetch` ahead. Errors in the thread are
    raised by `next()`. `close()` stops the thread.
    """

    def __init__(
        self,
        source,
        labels: np.ndarray,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        *,
        place: Callable[[np.ndarray, np.ndarray], Any] | None = None,
        prefetch: int = 2,
        check_finite: bool = False,
        rows: slice | None = None,
    ):
        self.source = as_tile_source(source)
        self.labels = np.asarray(labels)
        self._sampler = class_balanced_indices(self.labels, batch_size, seed, start_step)
        self._place = place or (lambda x, y: (x, y))
        self._check_finite = check_finite
        self._rows = rows  # this process's part of the global batch (multi-process runs)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(prefetch)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="gan-batch-loader", daemon=True)
        self._thread.start()

    def _make(self):
        idx = next(self._sampler)
        if self._rows is not None:
            idx = idx[self._rows]
        x, y = gather_batch(self.source, self.labels, idx)
        if self._check_finite and not np.isfinite(x).all():
            raise FloatingPointError("GAN training tiles contain NaN or Inf values")
        return self._place(x, y)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = (True, self._make())
            except BaseException as e:  # handed to the consumer
                item = (False, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not item[0]:
                return

    def __iter__(self):
        return self

    def __next__(self):
        ok, value = self._queue.get()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
