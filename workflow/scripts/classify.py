"""Snakemake adapter: classify stage for one (arm, seed) (logic in bioaug.evaluate)."""

import json

import pandas as pd

from bioaug.evaluate import run_arm
from bioaug.runtime import atomic_path, stage

with stage(snakemake, uses_jax=True):
    items = pd.read_csv(snakemake.input.items_csv)
    result = run_arm(
        snakemake.wildcards.arm, int(snakemake.wildcards.seed), items, snakemake.input.shards,
        snakemake.params.classifier, balanced_dir=snakemake.input.get("balanced"),
        synthetic_npys=snakemake.input.get("synthetic", []),
    )
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=2))
