"""Snakemake adapter of rule feature_classifier (logic: bioaug.stages.feature_classifier)."""

from bioaug.runtime import stage
from bioaug.stages import feature_classifier

with stage(snakemake, uses_jax=True):
    feature_classifier.run(
        snakemake.input.items_csv, snakemake.input.shards, snakemake.params.feature_classifier, snakemake.output[0]
    )
