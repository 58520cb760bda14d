"""Snakemake adapter of rule balance (logic: bioaug.stages.balance)."""

from bioaug.runtime import stage
from bioaug.stages import balance

with stage(snakemake):
    balance.run(
        snakemake.input.items_csv,
        snakemake.input.shards,
        snakemake.input.synthetic,
        snakemake.output[0],
        cfg=snakemake.params.balance,
        tiles=snakemake.params.tiles,
    )
