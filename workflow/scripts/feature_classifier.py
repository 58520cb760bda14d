"""Snakemake adapter: the feature classifier (real train split, epoch chosen on val) whose
penultimate layer is the feature space of the GAN quality metrics."""

import pandas as pd

from bioaug.classifier import train_classifier
from bioaug.runtime import stage
from bioaug.tilestore import class_names, load_tiles

with stage(snakemake, uses_jax=True):
    items = pd.read_csv(snakemake.input.items_csv)
    x, y, _ = load_tiles(snakemake.input.shards, items, splits=("train",))
    vx, vy, _ = load_tiles(snakemake.input.shards, items, splits=("val",))
    model = train_classifier(x, y, vx, vy, class_names(items), snakemake.params.gan_quality, seed=0)
    model.save(snakemake.output[0])
