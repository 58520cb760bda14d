"""Snakemake adapter of rule index (logic: bioaug.stages.index)."""

from bioaug.runtime import stage
from bioaug.stages import index

with stage(snakemake):
    index.run(
        snakemake.input[0],
        snakemake.params.reading,
        snakemake.params.tiles,
        snakemake.output.index,
        snakemake.output.rejected,
    )
