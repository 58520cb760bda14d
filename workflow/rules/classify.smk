"""classify: one job per (arm, seed), scored on the real test split; the feature classifier."""


rule classify:
    input:
        unpack(classify_inputs),
    output:
        "results/{dataset}/fold-{fold}/classify/{arm}/seed-{seed}.json",
    log:
        "logs/{dataset}/fold-{fold}/classify-{arm}-{seed}.log",
    benchmark:
        "benchmarks/{dataset}/fold-{fold}/classify-{arm}-{seed}.tsv"
    group:
        "classify"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("classify")
    resources:
        **rule_resources("classify"),
    params:
        # the arm and seed lists decide which jobs exist, not what one job computes
        classifier=section("classifier", without=("arms", "seeds")),
    script:
        "../scripts/classify.py"


rule feature_classifier:
    input:
        items_csv="results/{dataset}/fold-{fold}/items.csv",
        shards=shard_npys,
        shard_tables=shard_tables,
    output:
        directory("results/{dataset}/fold-{fold}/feature_classifier"),
    log:
        "logs/{dataset}/fold-{fold}/feature_classifier.log",
    benchmark:
        "benchmarks/{dataset}/fold-{fold}/feature_classifier.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("feature_classifier")
    resources:
        **rule_resources("feature_classifier"),
    params:
        feature_classifier=section("feature_classifier"),
    script:
        "../scripts/feature_classifier.py"
