"""Balance stage: real train tiles + the synthetic tiles that balance each class, written as
a dataset any classifier can read (the layout is `bioaug.formats.balanced`).

Only the train split's real tiles go in; validation and test items stay in the tile shards,
so the user can evaluate their own classifier on real held-out data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..formats import balanced, synthetic
from ..formats.items import read_items
from ..formats.shards import load_tiles
from ..runtime import atomic_path, progress

log = logging.getLogger("bioaug.balance")


def run(items_csv, shard_npys, synthetic_npys, out_dir) -> pd.DataFrame:
    """The balance stage."""
    return write_balanced(read_items(items_csv), shard_npys, synthetic_npys, out_dir)


def write_balanced(items: pd.DataFrame, shard_npys, synthetic_npys, out_dir: str | Path) -> pd.DataFrame:
    """Write the balanced dataset atomically and return its manifest."""
    x, _, real = load_tiles(shard_npys, items, splits=("train",))
    rows = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for tile, r in progress(zip(x, real.to_dict("records")), total=len(x), desc="real tiles"):
            rel = balanced.real_path(r["label"], r["tile_id"])
            balanced.write_tile(tmp / rel, tile)
            rows.append(
                {
                    "path": str(rel),
                    "label": r["label"],
                    "origin": "real",
                    "split": "train",
                    "item_id": r["item_id"],
                    "tile_id": r["tile_id"],
                }
            )
        for npy in synthetic_npys:
            tiles, meta = synthetic.read_class(npy, balance_only=True)
            for i, (tile, m) in enumerate(zip(tiles, meta.to_dict("records"))):
                rel = balanced.synthetic_path(m["label"], i, m["seed"])
                balanced.write_tile(tmp / rel, tile)
                rows.append(
                    {
                        "path": str(rel),
                        "label": m["label"],
                        "origin": "synthetic",
                        "split": "train",
                        "checkpoint": m["checkpoint"],
                        "step": int(m["step"]),
                        "seed": int(m["seed"]),
                    }
                )
        manifest = balanced.write_manifest(rows, tmp)
    counts = manifest.groupby(["label", "origin"]).size().unstack(fill_value=0)
    log.info("balanced dataset: %d tiles\n%s", len(manifest), counts.to_string())
    return manifest
