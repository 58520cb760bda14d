"""Snakemake adapter of rule train_gan (logic: bioaug.stages.train_gan)."""

from bioaug.runtime import stage
from bioaug.stages import train_gan

with stage(snakemake, uses_jax=True, distributed=True):
    train_gan.run(
        snakemake.input.items_csv,
        snakemake.input.shards,
        snakemake.params.gan,
        checkpoint_root=snakemake.params.checkpoint_root,
        generator_dir=snakemake.output.generator,
        log_csv=snakemake.output.log_csv,
        samples_png=snakemake.output.samples,
        training_tiles_csv=snakemake.output.training_tiles,
        feature_classifier=snakemake.input.get("feature_classifier"),
    )
