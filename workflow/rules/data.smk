"""download -> index -> split -> tile: from raw data to tile shards."""


rule download:
    output:
        directory("resources/datasets/{dataset}"),
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("download")
    resources:
        **rule_resources("download"),
    params:
        source=dataset_keys("source", "sha256", "builtin"),
        limits=section_keys(
            "limits",
            "download_timeout_s",
            "max_extracted_gb",
            "max_archive_members",
            "max_compression_ratio",
        ),
    script:
        "../scripts/download.py"


checkpoint index:
    input:
        "resources/datasets/{dataset}",
    output:
        index="results/{dataset}/index.csv",
        rejected="results/{dataset}/rejected.csv",
    log:
        "logs/{dataset}/index.log",
    benchmark:
        "benchmarks/{dataset}/index.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("index")
    resources:
        **rule_resources("index"),
    params:
        reading=dataset_keys(
            "format", "annotations", "images", "columns", "classes", "on_bad_input"
        ),
        tiles=section_keys("tiles", "size", "border", "channels", "image_mode"),
        limits=section_keys("limits", "max_image_megapixels", "max_image_pages"),
    script:
        "../scripts/index.py"


rule split:
    input:
        "results/{dataset}/index.csv",
    output:
        "results/{dataset}/fold-{fold}/items.csv",
    log:
        "logs/{dataset}/fold-{fold}/split.log",
    benchmark:
        "benchmarks/{dataset}/fold-{fold}/split.tsv"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("split")
    resources:
        **rule_resources("split"),
    params:
        split=section("split"),
    script:
        "../scripts/split.py"


rule tile:
    input:
        data="resources/datasets/{dataset}",
        index="results/{dataset}/index.csv",
    output:
        npy="results/{dataset}/tiles/shard-{shard}.npy",
        table="results/{dataset}/tiles/shard-{shard}.csv",
        norm="results/{dataset}/tiles/shard-{shard}.norm.csv",
    log:
        "logs/{dataset}/tile-{shard}.log",
    benchmark:
        "benchmarks/{dataset}/tile-{shard}.tsv"
    group:
        "tiles"
    conda:
        "../../envs/bioaug.yaml"
    threads: rule_threads("tile")
    resources:
        **rule_resources("tile"),
    params:
        # border is the index's business (it rejects objects at the border)
        tiles=section("tiles", without=("border",)),
    script:
        "../scripts/tile.py"
