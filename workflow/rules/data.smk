"""download -> index -> split -> tile: from raw data to tile shards."""


rule download:
    output:
        directory("resources/datasets/{dataset}"),
    params:
        source=source_params,
    threads: rule_threads("download")
    resources:
        **rule_resources("download"),
    log:
        "logs/{dataset}/download.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/download.py"


checkpoint index:
    input:
        "resources/datasets/{dataset}",
    output:
        index="results/{dataset}/index.csv",
        rejected="results/{dataset}/rejected.csv",
    params:
        reading=reading_params,
        tiles=index_tile_params,
    threads: rule_threads("index")
    resources:
        **rule_resources("index"),
    log:
        "logs/{dataset}/index.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/index.py"


rule split:
    input:
        "results/{dataset}/index.csv",
    output:
        "results/{dataset}/items.csv",
    params:
        split=section("split"),
    threads: rule_threads("split")
    resources:
        **rule_resources("split"),
    log:
        "logs/{dataset}/split.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/split.py"


rule tile:
    input:
        data="resources/datasets/{dataset}",
        index="results/{dataset}/index.csv",
    output:
        "results/{dataset}/tiles/shard-{shard}.npy",
    params:
        tiles=section("tiles"),
    threads: rule_threads("tile")
    resources:
        **rule_resources("tile"),
    group: "tiles"
    log:
        "logs/{dataset}/tile-{shard}.log",
    conda:
        "../../envs/bioaug.yaml"
    script:
        "../scripts/tile.py"
