"""train_gan -> generate (one job per class) -> balance."""


rule train_gan:
    input:
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
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
    params:
        gan=section("gan"),
        # Checkpoints live outside the declared outputs, so Snakemake does not delete a
        # failed or killed job's progress; the next attempt resumes from them.
        checkpoint_root="results/{dataset}/gan/checkpoints",
    threads: rule_threads("train_gan")
    resources:
        **rule_resources("train_gan"),
    log:
        "logs/{dataset}/train_gan.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/train_gan.py"


rule generate:
    input:
        unpack(generate_inputs),
    output:
        tiles="results/{dataset}/synthetic/{cls}.npy",
        seeds="results/{dataset}/synthetic/{cls}.csv",
        acceptance="results/{dataset}/synthetic/{cls}.json",
    params:
        balance=section("balance"),
        generate=section("generate"),
    threads: rule_threads("generate")
    resources:
        **rule_resources("generate"),
    group: "generate"
    log:
        "logs/{dataset}/generate-{cls}.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/generate.py"


rule balance:
    input:
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
        synthetic=synthetic_npys,
    output:
        directory("results/{dataset}/balanced"),
    threads: rule_threads("balance")
    resources:
        **rule_resources("balance"),
    log:
        "logs/{dataset}/balance.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/balance.py"


rule gan_quality:
    input:
        feature_classifier="results/{dataset}/feature_classifier",
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
        synthetic=synthetic_npys,
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
    params:
        max_per_class=lambda w: config["gan_quality"]["max_per_class"],
    threads: rule_threads("gan_quality")
    resources:
        **rule_resources("gan_quality"),
    log:
        "logs/{dataset}/gan_quality.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/gan_quality.py"
