"""Snakemake adapter of rule index (logic: bioaug.stages.index)."""

from pathlib import Path

from bioaug.runtime import stage
from bioaug.stages import index

with stage(snakemake):
    index.run(
        snakemake.input[0],
        snakemake.params.reading,
        snakemake.params.tiles,
        snakemake.params.limits,
        snakemake.output.index,
        snakemake.output.rejected,
        # Snakemake removes a failed job's outputs: when nothing is usable, the reasons go beside the log
        failed_rejected_csv=Path(snakemake.log[0]).with_name("rejected.csv"),
    )
