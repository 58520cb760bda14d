"""Snakemake adapter of rule classify, one (arm, seed) (logic: bioaug.stages.classify)."""

from bioaug.runtime import stage
from bioaug.stages import classify

with stage(snakemake, uses_jax=True):
    classify.run(
        snakemake.wildcards.arm,
        int(snakemake.wildcards.seed),
        snakemake.input.items_csv,
        snakemake.input.shards,
        snakemake.params.classifier,
        snakemake.output[0],
        synthetic_npys=snakemake.input.get("synthetic", []),
        fold=int(snakemake.wildcards.fold),
    )
