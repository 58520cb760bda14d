"""report: summary table and figures per dataset, also shown in `snakemake --report`."""


rule report:
    input:
        metrics=classify_jsons,
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
        balanced="results/{dataset}/balanced",
        gan_log="results/{dataset}/gan/train_log.csv",
    output:
        summary=report(
            "results/{dataset}/summary.csv",
            caption="../report/summary.rst",
            category="Classifier",
            labels={"dataset": "{dataset}", "table": "summary per arm and seed"},
        ),
        recall=report(
            "results/{dataset}/report/recall_by_arm.png",
            caption="../report/recall_by_arm.rst",
            category="Classifier",
            labels={"dataset": "{dataset}", "figure": "per-class recall by arm"},
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
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/report.py"
