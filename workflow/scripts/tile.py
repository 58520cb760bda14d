"""Snakemake adapter: tile stage for one shard of source images (logic in bioaug.tiling)."""

import pandas as pd

from bioaug.runtime import stage
from bioaug.tiling import shard_images, tile_shard

with stage(snakemake):
    cfg = snakemake.params.tiles
    index = pd.read_csv(snakemake.input.index)
    images = shard_images(index, cfg["shard_size"], int(snakemake.wildcards.shard))
    tile_shard(snakemake.input.data, index, images, cfg, snakemake.output[0])
