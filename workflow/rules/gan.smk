"""train_gan -> generate (one job per class) -> balance."""


rule train_gan:
    input:
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
        shard_tables=shard_tables,
    output:
        generator=directory("results/{dataset}/gan/generator"),
        log_csv="results/{dataset}/gan/train_log.csv",
        training_tiles="results/{dataset}/gan/training_tiles.csv",
        samples=report(
            "results/{dataset}/gan/samples.png",
            caption="../report/gan_samples.rst",
            category="GAN",
            labels={"dataset": "{dataset}", "figure": "EMA generator samples"},
        ),
    log:
        "logs/{dataset}/train_gan.log",
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("train_gan")
    resources:
        **rule_resources("train_gan"),
    params:
        gan=section("gan"),
        # Checkpoints live outside the declared outputs, so Snakemake does not delete a
        # failed or killed job's progress; the next attempt resumes from them.
        checkpoint_root="results/{dataset}/gan/checkpoints",
    script:
        "../scripts/train_gan.py"


rule generate:
    input:
        unpack(generate_inputs),
    output:
        tiles="results/{dataset}/synthetic/{cls}.npy",
        seeds="results/{dataset}/synthetic/{cls}.csv",
        acceptance="results/{dataset}/synthetic/{cls}.json",
    log:
        "logs/{dataset}/generate-{cls}.log",
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


rule balance:
    input:
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
        shard_tables=shard_tables,
        synthetic=synthetic_files("npy"),
        synthetic_tables=synthetic_files("csv"),
    output:
        directory("results/{dataset}/balanced"),
    log:
        "logs/{dataset}/balance.log",
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
        feature_classifier="results/{dataset}/feature_classifier",
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
        shard_tables=shard_tables,
        synthetic=synthetic_files("npy"),
        synthetic_tables=synthetic_files("csv"),
    output:
        quality=report(
            "results/{dataset}/gan_quality.csv",
            caption="../report/gan_quality.rst",
            category="GAN",
            labels={"dataset": "{dataset}", "table": "GAN quality per class"},
        ),
        memorisation="results/{dataset}/memorisation.csv",
        pairs=report(
            "results/{dataset}/report/closest_pairs.png",
            caption="../report/closest_pairs.rst",
            category="GAN",
            labels={"dataset": "{dataset}", "figure": "closest synthetic/real pairs"},
        ),
    log:
        "logs/{dataset}/gan_quality.log",
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("gan_quality")
    resources:
        **rule_resources("gan_quality"),
    params:
        gan_quality=section("gan_quality"),
    script:
        "../scripts/gan_quality.py"
