"""Snakemake adapter: index stage (logic in bioaug.annotations)."""

from bioaug.annotations import index_dataset
from bioaug.runtime import atomic_path, stage

with stage(snakemake):
    items, rejected = index_dataset(snakemake.input[0], snakemake.params.reading, snakemake.params.tiles)
    with atomic_path(snakemake.output.rejected) as tmp:
        rejected.to_csv(tmp, index=False)
    with atomic_path(snakemake.output.index) as tmp:
        items.to_csv(tmp, index=False)
