"""Snakemake adapter: the feature classifier (real train split, epoch chosen on val) whose
penultimate layer is the feature space of the GAN quality metrics."""

import pandas as pd

from bioaug.classifier import train_classifier
from bioaug.runtime import stage
from bioaug.tilestore import class_names, load_tiles

with stage(snakemake, uses_jax=True):
    items = pd.read_csv(snakemake.input.items_csv)
    x, y, train_rows = load_tiles(snakemake.input.shards, items, splits=("train",))
    vx, vy, val_rows = load_tiles(snakemake.input.shards, items, splits=("val",))
    model = train_classifier(x, y, vx, vy, class_names(items), snakemake.params.gan_quality, seed=0)
    model.save(snakemake.output[0])
    # provenance: the tiles that trained (train) and selected (val) this model
    seen = pd.concat([train_rows, val_rows])[["tile_id", "item_id", "label", "split"]]
    seen.to_csv(f"{snakemake.output[0]}/tiles.csv", index=False)
