"""Snakemake adapter of rule download (logic: bioaug.stages.download)."""

from bioaug.runtime import stage
from bioaug.stages import download

with stage(snakemake):
    download.run(snakemake.params.source, snakemake.params.limits, snakemake.output[0])
