"""Snakemake adapter of rule report (logic: bioaug.stages.report)."""

from bioaug.runtime import stage
from bioaug.stages import report

with stage(snakemake):
    report.run(
        metric_jsons=snakemake.input.metrics,
        items_csvs=snakemake.input.items_csvs,
        shard_npys=snakemake.input.shards,
        synthetic_npys=snakemake.input.synthetic,
        gan_log=snakemake.input.gan_log,
        quality_csvs=snakemake.input.quality,
        acceptance_jsons=snakemake.input.acceptance,
        outputs=dict(snakemake.output.items()),
        dataset=snakemake.wildcards.dataset,
        cfg=snakemake.params.report,
        gan_loss=snakemake.params.gan["loss"],
        channel_names=snakemake.params.balance["channel_names"],
        benchmarks={k.removeprefix("bench_"): list(v) for k, v in snakemake.input.items() if k.startswith("bench_")},
    )
