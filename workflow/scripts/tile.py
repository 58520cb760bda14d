"""Snakemake adapter: tile stage for one shard of source images (logic in bioaug.tiling)."""

import pandas as pd

from bioaug.runtime import stage
from bioaug.tiling import shard_images, tile_images
from bioaug.tilestore import write_shard

with stage(snakemake):
    cfg = snakemake.params.tiles
    index = pd.read_csv(snakemake.input.index)
    images = shard_images(index, cfg["shard_size"], int(snakemake.wildcards.shard))
    tiles, meta, norm = tile_images(snakemake.input.data, index, images, cfg)
    write_shard(snakemake.output[0], tiles, meta, norm)
