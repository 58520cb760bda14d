"""Snakemake adapter of rule split (logic: bioaug.stages.split)."""

from bioaug.runtime import stage
from bioaug.stages import split

with stage(snakemake):
    split.run(snakemake.input[0], snakemake.params.split, int(snakemake.wildcards.fold), snakemake.output[0])
