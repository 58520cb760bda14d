"""Snakemake adapter: gan_quality stage (logic in bioaug.gan_quality)."""

import pandas as pd

from bioaug.classifier import load_classifier
from bioaug.gan_quality import assess, plot_closest_pairs
from bioaug.runtime import atomic_path, stage

with stage(snakemake, uses_jax=True):
    items = pd.read_csv(snakemake.input.items_csv)
    quality, audit, (x_train, x_syn) = assess(load_classifier(snakemake.input.feature_classifier), items,
                                              snakemake.input.shards, snakemake.input.synthetic,
                                              max_per_class=snakemake.params.max_per_class)
    with atomic_path(snakemake.output.memorisation) as tmp:
        audit.to_csv(tmp, index=False)
    with atomic_path(snakemake.output.pairs) as tmp:
        plot_closest_pairs(audit, x_train, x_syn, tmp)
    with atomic_path(snakemake.output.quality) as tmp:
        quality.to_csv(tmp, index=False)
