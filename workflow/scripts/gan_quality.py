"""Snakemake adapter of rule gan_quality (logic: bioaug.stages.gan_quality)."""

from bioaug.runtime import stage
from bioaug.stages import gan_quality

with stage(snakemake, uses_jax=True):
    gan_quality.run(
        snakemake.input.feature_classifier,
        snakemake.input.items_csv,
        snakemake.input.shards,
        snakemake.input.synthetic,
        snakemake.params.gan_quality,
        quality_csv=snakemake.output.quality,
        memorisation_csv=snakemake.output.memorisation,
        pairs_png=snakemake.output.pairs,
    )
