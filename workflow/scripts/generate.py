"""Snakemake adapter: generate stage for one class (logic in bioaug.generate)."""

import pandas as pd

from bioaug.config import safe_name
from bioaug.generate import generate_class
from bioaug.runtime import stage

with stage(snakemake, uses_jax=True):
    items = pd.read_csv(snakemake.input.items_csv)
    label = next(l for l in items["label"].astype(str).unique() if safe_name(l) == snakemake.wildcards.cls)
    filter_clf = None
    if snakemake.input.get("filter_classifier"):
        from bioaug.classifier import load_classifier

        filter_clf = load_classifier(snakemake.input.filter_classifier)
    generate_class(snakemake.input.generator, items, label, snakemake.params.balance,
                   snakemake.params.generate, snakemake.output.tiles, filter_classifier=filter_clf)
