"""Turning tiles into pictures a person can look at."""

from __future__ import annotations

import numpy as np


def to_rgb(tiles: np.ndarray) -> np.ndarray:
    """Map (N, H, W, C) tiles in [0, 1] to (N, H, W, 3) RGB for display.

    One channel is shown grey; two channels as channel 0 magenta (nucleus in the built-in
    data) over channel 1 green (cytoplasm), which stays readable for colour-blind viewers;
    three or more channels show the first three as RGB.
    """
    x = np.clip(np.asarray(tiles, dtype=np.float32), 0.0, 1.0)
    c = x.shape[-1]
    if c == 1:
        return np.repeat(x, 3, axis=-1)
    if c == 2:
        return np.stack([x[..., 0], x[..., 1], x[..., 0]], axis=-1)
    return x[..., :3]


def tile_grid(rows: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Stack rows of (n, H, W, 3) images into one (rows*H, n*W, 3) mosaic with white gaps."""
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    out = np.ones((len(rows) * (h + pad) - pad, n * (w + pad) - pad, 3), np.float32)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = img
    return out


def save_class_grid(path, class_names: list[str], rows: list[np.ndarray], title: str = "") -> None:
    """Save a grid with one labelled row per class; rows are (n, H, W, C) tiles in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb_rows = [to_rgb(r) for r in rows]
    grid = tile_grid(rgb_rows)
    # inches per grid pixel: a tile is at least half an inch (75 px at the saved 150 dpi), so
    # small tiles are still big enough to judge by eye
    scale = max(1 / 40, 0.5 / rows[0].shape[1])
    fig_w = max(4.0, grid.shape[1] * scale)
    fig_h = max(2.0, grid.shape[0] * scale)
    fig, ax = plt.subplots(figsize=(fig_w + 1.5, fig_h + 0.5), dpi=100)
    ax.imshow(grid, interpolation="nearest")
    h = rows[0].shape[1] + 2
    ax.set_yticks([i * h + h / 2 - 1 for i in range(len(rows))])
    ax.set_yticklabels(class_names)
    ax.set_xticks([])
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=150, bbox_inches="tight")  # keep long class labels whole
    plt.close(fig)
