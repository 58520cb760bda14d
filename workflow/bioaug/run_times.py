"""Where a run's time went: Snakemake's benchmark files (one per job, `benchmark:` on every rule)
summed per rule. Read by the report, which lists every job upstream of it."""

from __future__ import annotations

import pandas as pd

# Columns of a Snakemake benchmark file used here (s = wall seconds of the job, max_rss in MB).
BENCHMARK_COLUMNS = ("s", "cpu_time", "max_rss")


def read_benchmark(path) -> dict:
    """One job's benchmark file (its last repeat when --benchmark-repeats > 1): wall s, cpu s, MB."""
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in BENCHMARK_COLUMNS if c not in table.columns]
    if missing or table.empty:
        raise ValueError(f"{path}: not a Snakemake benchmark file (missing {missing or 'rows'})")
    row = table.iloc[-1]
    return {c: pd.to_numeric(row[c], errors="coerce") for c in BENCHMARK_COLUMNS}


def rule_times(files_by_rule: dict[str, list]) -> pd.DataFrame:
    """Per rule: jobs, total/mean/max wall seconds, total CPU seconds, peak memory; and the
    share of the summed job time. Rules with no file are left out."""
    rows = []
    for rule, files in files_by_rule.items():
        jobs = pd.DataFrame([read_benchmark(p) for p in files])
        if jobs.empty:
            continue
        rows.append(
            {
                "rule": rule,
                "jobs": len(jobs),
                "wall_s": float(jobs["s"].sum()),
                "mean_s": float(jobs["s"].mean()),
                "max_s": float(jobs["s"].max()),
                "cpu_s": float(jobs["cpu_time"].sum()),
                "max_rss_mb": float(jobs["max_rss"].max()),
            }
        )
    table = pd.DataFrame(rows, columns=["rule", "jobs", "wall_s", "mean_s", "max_s", "cpu_s", "max_rss_mb"])
    total = table["wall_s"].sum()
    table["share"] = table["wall_s"] / total if total > 0 else 0.0
    return table.sort_values("wall_s", ascending=False, ignore_index=True)


def models_per_hour(times: pd.DataFrame, rule: str = "classify") -> float | None:
    """Classifier models trained per hour of job time (one job = one arm x seed x fold)."""
    row = times[times["rule"] == rule]
    if row.empty or row["wall_s"].iloc[0] <= 0:
        return None
    return float(row["jobs"].iloc[0] / row["wall_s"].iloc[0] * 3600)
