"""Per fold: train_gan -> generate (one job per class) -> gan_quality; fold 0 -> balance."""


rule train_gan:
    input:
        unpack(train_gan_inputs),
    output:
        generator=directory("results/{dataset}/fold-{fold}/gan/generator"),
        log_csv="results/{dataset}/fold-{fold}/gan/train_log.csv",
        training_tiles="results/{dataset}/fold-{fold}/gan/training_tiles.csv",
        samples=report(
            "results/{dataset}/fold-{fold}/gan/samples.png",
            caption="../report/gan_samples.rst",
            category="GAN",
            labels={
                "dataset": "{dataset}",
                "fold": "{fold}",
                "figure": "EMA generator samples",
            },
        ),
    log:
        "logs/{dataset}/fold-{fold}/train_gan.log",
    benchmark:
        "benchmarks/{dataset}/fold-{fold}/train_gan.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("train_gan")
    resources:
        **rule_resources("train_gan"),
    params:
        gan=section("gan"),
        # Checkpoints live outside the declared outputs, so Snakemake does not delete a
        # failed or killed job's progress; the next attempt resumes from them.
        checkpoint_root="results/{dataset}/fold-{fold}/gan/checkpoints",
    script:
        "../scripts/train_gan.py"


rule generate:
    input:
        unpack(generate_inputs),
    output:
        tiles="results/{dataset}/fold-{fold}/synthetic/{cls}.npy",
        seeds="results/{dataset}/fold-{fold}/synthetic/{cls}.csv",
        acceptance="results/{dataset}/fold-{fold}/synthetic/{cls}.json",
    log:
        "logs/{dataset}/fold-{fold}/generate-{cls}.log",
    benchmark:
        "benchmarks/{dataset}/fold-{fold}/generate-{cls}.tsv"
    group:
        "generate"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("generate")
    resources:
        **rule_resources("generate"),
    params:
        balance=section_keys("balance", "target", "count"),
        generate=generate_params,
    script:
        "../scripts/generate.py"


# The user's balanced dataset: fold 0's real train tiles and its GAN's tiles (with split.folds
# = 1, the one split; with k folds, fold 0 holds (k - 1) / k of the items for train and val).
rule balance:
    input:
        items_csv=f"results/{{dataset}}/fold-{BALANCED_FOLD}/items.csv",
        shards=shard_npys,
        shard_tables=shard_tables,
        synthetic=synthetic_files("npy", fold=BALANCED_FOLD),
        synthetic_tables=synthetic_files("csv", fold=BALANCED_FOLD),
        synthetic_summaries=synthetic_files("json", fold=BALANCED_FOLD),
    output:
        directory("results/{dataset}/balanced"),
    log:
        "logs/{dataset}/balance.log",
    benchmark:
        "benchmarks/{dataset}/balance.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("balance")
    resources:
        **rule_resources("balance"),
    params:
        balance=section_keys("balance", "format", "channel_names"),
        tiles=section_keys("tiles", "percentiles"),
    script:
        "../scripts/balance.py"


rule gan_quality:
    input:
        feature_classifier="results/{dataset}/fold-{fold}/feature_classifier",
        items_csv="results/{dataset}/fold-{fold}/items.csv",
        shards=shard_npys,
        shard_tables=shard_tables,
        synthetic=synthetic_files("npy"),
        synthetic_tables=synthetic_files("csv"),
    output:
        quality=report(
            "results/{dataset}/fold-{fold}/gan_quality.csv",
            caption="../report/gan_quality.rst",
            category="GAN",
            labels={
                "dataset": "{dataset}",
                "fold": "{fold}",
                "table": "GAN quality per class",
            },
        ),
        memorisation="results/{dataset}/fold-{fold}/memorisation.csv",
        pairs=report(
            "results/{dataset}/fold-{fold}/closest_pairs.png",
            caption="../report/closest_pairs.rst",
            category="GAN",
            labels={
                "dataset": "{dataset}",
                "fold": "{fold}",
                "figure": "closest synthetic/real pairs",
            },
        ),
    log:
        "logs/{dataset}/fold-{fold}/gan_quality.log",
    benchmark:
        "benchmarks/{dataset}/fold-{fold}/gan_quality.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("gan_quality")
    resources:
        **rule_resources("gan_quality"),
    params:
        gan_quality=section("gan_quality"),
    script:
        "../scripts/gan_quality.py"
