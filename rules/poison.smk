# Poisoning: one poisoned manifest per attack, and a picture of its trigger.


rule poison:
    input:
        manifest="results/{dataset}/manifest.parquet",
    output:
        "results/{dataset}/{attack}/poisoned_manifest.parquet",
    params:
        attack=attack_config,
    log:
        "results/logs/poison/{dataset}/{attack}.log",
    benchmark:
        "results/benchmarks/poison/{dataset}/{attack}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/poison.py"


rule trigger_grid:
    input:
        poisoned_manifest="results/{dataset}/{attack}/poisoned_manifest.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
    output:
        "results/{dataset}/{attack}/trigger_grid.png",
    params:
        attack=attack_config,
        image_size=config["dataset"]["download"]["image_size"],
    log:
        "results/logs/trigger_grid/{dataset}/{attack}.log",
    benchmark:
        "results/benchmarks/trigger_grid/{dataset}/{attack}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/trigger_grid.py"
