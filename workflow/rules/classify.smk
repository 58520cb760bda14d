"""classify: one job per (arm, seed), scored on the real test split."""


rule classify:
    input:
        unpack(classify_inputs),
    output:
        "results/{dataset}/classify/{arm}/seed-{seed}.json",
    params:
        classifier=classifier_params,
    log:
        "logs/{dataset}/classify-{arm}-{seed}.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/classify.py"
