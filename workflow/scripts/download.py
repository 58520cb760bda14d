"""Snakemake adapter: download stage (logic in bioaug.download)."""

from bioaug.download import fetch_dataset
from bioaug.runtime import stage

with stage(snakemake):
    fetch_dataset(snakemake.params.source, snakemake.output[0])
