"""Class-balanced, restartable batches of training tiles.

The sampler yields only indices; `gather_batch` turns them into arrays. Streaming from
disk later only has to replace `gather_batch` (or index a memory-mapped array).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def class_balanced_indices(labels: np.ndarray, batch_size: int, seed: int,
                           start_step: int = 0) -> Iterator[np.ndarray]:
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


def gather_batch(tiles: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) batch for `idx` from in-memory (or memory-mapped) arrays."""
    return np.asarray(tiles[idx], dtype=np.float32), np.asarray(labels[idx], dtype=np.int32)
