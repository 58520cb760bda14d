"""report: tables, verdicts and figures per dataset, also shown in `snakemake --report`."""


rule report:
    input:
        unpack(upstream_benchmarks),
        metrics=classify_jsons,
        items_csvs=fold_files("items.csv"),
        shards=shard_npys,
        shard_tables=shard_tables,
        # the GAN figures show fold 0's GAN (the one behind the balanced dataset)
        synthetic=synthetic_files("npy", fold=BALANCED_FOLD),
        synthetic_tables=synthetic_files("csv", fold=BALANCED_FOLD),
        gan_log=f"results/{{dataset}}/fold-{BALANCED_FOLD}/gan/train_log.csv",
        acceptance=synthetic_files("json", fold=BALANCED_FOLD),
        quality=fold_files("gan_quality.csv"),
    output:
        summary=report(
            "results/{dataset}/summary.csv",
            caption="../report/summary.rst",
            category="Classifier",
            labels={"dataset": "{dataset}", "table": "metrics per arm and seed (CSV)"},
        ),
        arm_summary=report(
            "results/{dataset}/arm_summary.csv",
            caption="../report/arm_summary.rst",
            category="Classifier",
            labels={
                "dataset": "{dataset}",
                "table": "per class and arm, with intervals (CSV)",
            },
        ),
        verdicts=report(
            "results/{dataset}/verdicts.csv",
            caption="../report/verdicts.rst",
            category="Verdict",
            labels={
                "table": "does the GAN help, per class (CSV)",
                "dataset": "{dataset}",
            },
        ),
        verdicts_html=report(
            "results/{dataset}/report/verdicts.html",
            caption="../report/verdicts.rst",
            category="Verdict",
            labels={"table": "does the GAN help, per class", "dataset": "{dataset}"},
        ),
        f1_html=report(
            "results/{dataset}/report/f1_by_arm.html",
            caption="../report/f1_table.rst",
            category="Classifier",
            labels={"dataset": "{dataset}", "table": "test F1 per arm and class"},
        ),
        quality_html=report(
            "results/{dataset}/report/gan_quality.html",
            caption="../report/gan_quality.rst",
            category="GAN",
            labels={"dataset": "{dataset}", "table": "GAN quality per class (table)"},
        ),
        markdown="results/{dataset}/summary.md",
        recall=report(
            "results/{dataset}/report/recall_by_arm.png",
            caption="../report/recall_by_arm.rst",
            category="Classifier",
            labels={"dataset": "{dataset}", "figure": "per-class recall by arm"},
        ),
        f1=report(
            "results/{dataset}/report/f1_by_arm.png",
            caption="../report/f1_by_arm.rst",
            category="Classifier",
            labels={
                "dataset": "{dataset}",
                "figure": "per-class F1 by arm, with intervals",
            },
        ),
        forest=report(
            "results/{dataset}/report/forest.png",
            caption="../report/forest.rst",
            category="Verdict",
            labels={
                "dataset": "{dataset}",
                "figure": "F1 differences per class (forest plot)",
            },
        ),
        confusion=report(
            "results/{dataset}/report/confusion.png",
            caption="../report/confusion.rst",
            category="Classifier",
            labels={"dataset": "{dataset}", "figure": "confusion matrices"},
        ),
        grid=report(
            "results/{dataset}/report/real_vs_synthetic.png",
            caption="../report/real_vs_synthetic.rst",
            category="GAN",
            labels={"dataset": "{dataset}", "figure": "real vs synthetic tiles"},
        ),
        losses=report(
            "results/{dataset}/report/gan_losses.png",
            caption="../report/gan_losses.rst",
            category="GAN",
            labels={"dataset": "{dataset}", "figure": "GAN losses"},
        ),
    log:
        "logs/{dataset}/report.log",
    benchmark:
        "benchmarks/{dataset}/report.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("report")
    resources:
        **rule_resources("report"),
    params:
        report=section("report"),
        gan=section_keys("gan", "loss"),
        balance=section_keys("balance", "channel_names"),
    script:
        "../scripts/report.py"
