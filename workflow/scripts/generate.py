"""Snakemake adapter of rule generate, one class (logic: bioaug.stages.generate)."""

from bioaug.runtime import stage
from bioaug.stages import generate

with stage(snakemake, uses_jax=True):
    generate.run(
        snakemake.input.generator,
        snakemake.input.items_csv,
        snakemake.wildcards.cls,
        snakemake.params.balance,
        snakemake.params.generate,
        snakemake.output.tiles,
        filter_classifier_dir=snakemake.input.get("filter_classifier"),
        shard_npys=snakemake.input.get("shards"),
    )
