"""Snakemake adapter of rule tile, one shard of source images (logic: bioaug.stages.tile)."""

from bioaug.runtime import stage
from bioaug.stages import tile

with stage(snakemake):
    tile.run(
        snakemake.input.data,
        snakemake.input.index,
        int(snakemake.wildcards.shard),
        snakemake.params.tiles,
        snakemake.output.npy,
    )
