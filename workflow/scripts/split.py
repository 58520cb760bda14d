"""Snakemake adapter: split stage (logic in bioaug.split)."""

import pandas as pd

from bioaug.runtime import atomic_path, stage
from bioaug.split import assign_splits

with stage(snakemake):
    cfg = snakemake.params.split
    items = assign_splits(pd.read_csv(snakemake.input[0]), cfg["fractions"], cfg["seed"],
                          use_source_split=cfg.get("use_source_split", False))
    with atomic_path(snakemake.output[0]) as tmp:
        items.to_csv(tmp, index=False)
