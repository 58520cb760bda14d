"""classify: one job per (arm, seed), scored on the real test split; the feature classifier."""


rule classify:
    input:
        unpack(classify_inputs),
    output:
        "results/{dataset}/classify/{arm}/seed-{seed}.json",
    params:
        classifier=classifier_params,
    threads: rule_threads("classify")
    resources:
        **rule_resources("classify"),
    group: "classify"
    log:
        "logs/{dataset}/classify-{arm}-{seed}.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/classify.py"


rule feature_classifier:
    input:
        items_csv="results/{dataset}/items.csv",
        shards=shard_npys,
    output:
        directory("results/{dataset}/feature_classifier"),
    params:
        gan_quality=lambda w: config["gan_quality"],
    threads: rule_threads("feature_classifier")
    resources:
        **rule_resources("feature_classifier"),
    log:
        "logs/{dataset}/feature_classifier.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/feature_classifier.py"
