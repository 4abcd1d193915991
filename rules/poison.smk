# Poisoning: an attack's preparation (BadCLIP's optimized trigger, against a clean surrogate),
# one poisoned manifest per attack, and a picture of its trigger.


rule unpoisoned_manifest:
    input:
        manifest="results/{dataset}/manifest.parquet",
    output:
        "results/{dataset}/unpoisoned_manifest.parquet",
    log:
        "results/logs/unpoisoned_manifest/{dataset}.log",
    benchmark:
        "results/benchmarks/unpoisoned_manifest/{dataset}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/unpoisoned_manifest.py"


# The attacker's surrogate when the study pretrains from scratch: a clean model, pretrained like
# the study's MMCL model on the unpoisoned data.
rule pretrain_surrogate:
    input:
        manifest="results/{dataset}/unpoisoned_manifest.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
    output:
        weights="results/{dataset}/surrogate/model={model}/model.pt",
        step_log="results/{dataset}/surrogate/model={model}/train_log.parquet",
    params:
        settings=surrogate_settings,
        attack=None,
        pretrained=None,
        keep_every_epoch=False,
        out_dir=run_folder,
    threads: 2
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        torch_compile=int(config["execution"]["torch_compile"]),
    log:
        "results/logs/pretrain_surrogate/{dataset}/{model}.log",
    benchmark:
        "results/benchmarks/pretrain_surrogate/{dataset}/{model}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"


rule optimize_trigger:
    input:
        unpack(surrogate),
        manifest="results/{dataset}/manifest.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
    output:
        f"{ATTACK_DIR}/trigger.pt",
    params:
        model=STUDY["model"],
        pretrained=PRETRAINED_TAG,
        attack=attack_entry,
    threads: 2
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
    log:
        "results/logs/optimize_trigger/{dataset}/{attack}/{poisoning}.log",
    benchmark:
        "results/benchmarks/optimize_trigger/{dataset}/{attack}/{poisoning}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/optimize_trigger.py"


rule poison:
    input:
        unpack(attack_preparation),
        manifest="results/{dataset}/manifest.parquet",
    output:
        f"{ATTACK_DIR}/poisoned_manifest.parquet",
    params:
        attack=attack_config,
    log:
        "results/logs/poison/{dataset}/{attack}/{poisoning}.log",
    benchmark:
        "results/benchmarks/poison/{dataset}/{attack}/{poisoning}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/poison.py"


rule trigger_grid:
    input:
        unpack(attack_preparation),
        poisoned_manifest=f"{ATTACK_DIR}/poisoned_manifest.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
    output:
        report(
            f"{ATTACK_DIR}/trigger_grid.png", caption="../report/trigger_grid.rst", category="Figures",
            subcategory="trigger grids", labels={"attack": "{attack}"},
        ),
    params:
        attack=attack_config,
        model=STUDY["model"],
    log:
        "results/logs/trigger_grid/{dataset}/{attack}/{poisoning}.log",
    benchmark:
        "results/benchmarks/trigger_grid/{dataset}/{attack}/{poisoning}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/trigger_grid.py"
