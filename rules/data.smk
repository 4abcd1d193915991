# Data: the embedded corpus, the img2dataset download, the manifest.


rule generate_corpus:
    output:
        url_list="results/{dataset}/corpus/urls.tsv",
        train_labels="results/{dataset}/corpus/train_labels.parquet",
        images=directory("results/{dataset}/corpus/images"),
        eval_dir=directory("results/{dataset}/corpus/eval"),
    params:
        corpus=config["dataset"]["corpus"],
    log:
        "results/logs/generate_corpus/{dataset}.log",
    benchmark:
        "results/benchmarks/generate_corpus/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/generate_corpus.py"


rule download:
    input:
        url_list=url_list,
    output:
        shards=directory("results/{dataset}/shards"),
        stats="results/{dataset}/download_stats.parquet",
        # Written last: a later stage trusts the shards only as they are listed here.
        shard_listing="results/{dataset}/shard_listing.parquet",
    params:
        download=config["dataset"]["download"],
    threads: 2
    resources:
        download_threads=config["execution"]["download_threads"],
        download_timeout_s=config["execution"]["download_timeout_s"],
        download_retries=config["execution"]["download_retries"],
    log:
        "results/logs/download/{dataset}.log",
    benchmark:
        "results/benchmarks/download/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/download.py"


rule manifest:
    input:
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
    output:
        manifest="results/{dataset}/manifest.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
    log:
        "results/logs/manifest/{dataset}.log",
    benchmark:
        "results/benchmarks/manifest/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/manifest.py"
