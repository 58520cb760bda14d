"""Feature classifier stage: a classifier trained on the real train split (epoch chosen on
val) whose penultimate layer is the feature space of the GAN quality metrics, and which
filters synthetic tiles under selective synthesis (`generate.min_confidence`).

Its settings are the `feature_classifier` section, apart from the arms' `classifier`, so
changing the arms' classifier leaves the quality numbers comparable. It trains on
class-balanced batches: its features must separate every class, the rarest most of all, and
on imbalanced data a plain run can ignore a minority class entirely (measured: on 48 built-in
fields it called none of 29 mitotic train tiles mitotic, which made every quality number of
that class meaningless).
"""

from __future__ import annotations

import pandas as pd

from ..classifier import train_classifier
from ..formats.items import class_names, read_items
from ..formats.shards import load_tiles

SEED = 0
PROVENANCE = "tiles.csv"  # beside the model: the tiles that trained (train) and selected (val) it


def run(items_csv, shard_npys, cfg: dict, out_dir) -> None:
    """The feature_classifier stage."""
    items = read_items(items_csv)
    x, y, train_rows = load_tiles(shard_npys, items, splits=("train",))
    vx, vy, val_rows = load_tiles(shard_npys, items, splits=("val",))
    model = train_classifier(x, y, vx, vy, class_names(items), cfg, seed=SEED, balanced_sampling=True)
    model.save(out_dir)
    seen = pd.concat([train_rows, val_rows])[["tile_id", "item_id", "label", "split"]]
    seen.to_csv(f"{out_dir}/{PROVENANCE}", index=False)
