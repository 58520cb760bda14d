"""Snakemake adapter: balance stage (logic in bioaug.balance)."""

import pandas as pd

from bioaug.balance import write_balanced
from bioaug.runtime import stage

with stage(snakemake):
    items = pd.read_csv(snakemake.input.items_csv)
    write_balanced(items, snakemake.input.shards, snakemake.input.synthetic, snakemake.output[0])
