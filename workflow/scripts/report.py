"""Snakemake adapter: report stage (logic in bioaug.report)."""

import pandas as pd

from bioaug.report import write_report
from bioaug.runtime import stage

with stage(snakemake):
    write_report(
        metric_jsons=snakemake.input.metrics,
        items=pd.read_csv(snakemake.input.items_csv),
        shard_npys=snakemake.input.shards,
        balanced_dir=snakemake.input.balanced,
        gan_log=snakemake.input.gan_log,
        quality_csv=snakemake.input.quality,
        acceptance_jsons=snakemake.input.acceptance,
        outputs=dict(snakemake.output.items()),
        dataset=snakemake.wildcards.dataset,
        n_boot=snakemake.params.report.get("bootstrap", 1000),
    )
