"""Snakemake adapter: train_gan stage (logic in bioaug.gan)."""

import pandas as pd

from bioaug.gan import train_gan
from bioaug.gan.input_pipeline import sharded_tiles
from bioaug.checkpoints import checkpoint_dir_for
from bioaug.runtime import atomic_path, stage
from bioaug.tilestore import class_names

with stage(snakemake, uses_jax=True):
    items = pd.read_csv(snakemake.input.items_csv)
    # Train split only: the GAN never sees validation or test tiles. The tiles stay in the
    # memory-mapped shards (streamed per batch), so a training set larger than memory trains.
    x, y, rows = sharded_tiles(snakemake.input.shards, items, splits=("train",))
    with atomic_path(snakemake.output.training_tiles) as tmp:  # provenance: exactly what the GAN saw
        rows[["tile_id", "item_id", "label", "split"]].to_csv(tmp, index=False)
    ckpt = checkpoint_dir_for(snakemake.params.checkpoint_root, snakemake.params.gan, rows["item_id"])
    train_gan(
        x, y, class_names(items), snakemake.params.gan,
        checkpoint_dir=ckpt,
        generator_dir=snakemake.output.generator,
        log_csv=snakemake.output.log_csv,
        samples_png=snakemake.output.samples,
    )
