# Training: pretraining of the poisoned model per grid point, and cleaning runs per
# (pretrained model, method, poisons in the cleaning set, learning rate), keeping every epoch.
# Both go before the light jobs that are ready with them (priority), which fill the cores around
# the long stages instead of delaying them.


rule pretrain:
    input:
        unpack(attack_preparation),
        unpack(start_weights),
        manifest=pretraining_data,
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
        set_aside=set_aside_checkpoints(PRETRAIN_RUN),
    output:
        weights=f"{PRETRAIN_RUN}/model.pt",
        step_log=f"{PRETRAIN_RUN}/train_log.parquet",
        epochs=kept_weights(PRETRAIN_EPOCH_WEIGHTS, last_is_kept=False),  # model.pt is the last
    params:
        settings=pretrain_settings,
        attack=attack_config,
        pretrained=PRETRAINED_TAG,
        keep_every_epoch=PRETRAIN_CURVE,
        out_dir=run_folder,
    threads: 2
    priority: 1
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        torch_compile=int(config["execution"]["torch_compile"]),
    log:
        f"results/logs/pretrain/{PRETRAINED.wildcard_pattern}.log",
    benchmark:
        f"results/benchmarks/pretrain/{PRETRAINED.wildcard_pattern}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"


rule cleaning_set:
    input:
        unpack(cleaning_labels),
        poisoned_manifest=f"{ATTACK_DIR}/poisoned_manifest.parquet",
    output:
        CLEANING_SET,
    params:
        settings=cleaning_set_settings,
        target_label=attack_target,
    log:
        "results/logs/cleaning_set/{dataset}/{attack}/{poisoning}/poisons_{cleaning_poisons}_seed_{clean_seed}_{cleaning_set}.log",
    benchmark:
        "results/benchmarks/cleaning_set/{dataset}/{attack}/{poisoning}/poisons_{cleaning_poisons}_seed_{clean_seed}_{cleaning_set}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/cleaning_set.py"


# A cleaning method's stage of its own before cleaning (UBT's detection of suspicious pairs), on
# the pretrained model and its poisoned training data.
rule prepare_cleaning:
    input:
        unpack(attack_preparation),
        manifest=poisoned_manifest,
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
        weights=f"{PRETRAIN_RUN}/model.pt",
    output:
        table=f"{PREPARED}/table.parquet",
        manifest=f"{PREPARED}/manifest.parquet",
    params:
        model=STUDY["model"],
        attack=attack_config,
        settings=preparation_settings,
    threads: 2
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        evaluation_batch_size=config["execution"]["evaluation_batch_size"],
    log:
        f"results/logs/prepare_cleaning/{PRETRAINED.wildcard_pattern}/{{clean_method}}_seed_{{clean_seed}}_{{preparation}}.log",
    benchmark:
        f"results/benchmarks/prepare_cleaning/{PRETRAINED.wildcard_pattern}/{{clean_method}}_seed_{{clean_seed}}_{{preparation}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/prepare_cleaning.py"


rule clean:
    input:
        unpack(attack_preparation),
        manifest=cleaning_data,
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
        start_weights=f"{PRETRAIN_RUN}/model.pt",
        set_aside=set_aside_checkpoints(CLEAN_RUN),
    output:
        weights=kept_weights(CLEAN_EPOCH_WEIGHTS, last_is_kept=True),
        step_log=f"{CLEAN_RUN}/train_log.parquet",
    params:
        settings=clean_settings,
        attack=attack_config,
        pretrained=None,
        keep_every_epoch=True,
        out_dir=run_folder,
    threads: 2
    priority: 1
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        torch_compile=int(config["execution"]["torch_compile"]),
    log:
        f"results/logs/clean/{CLEANING.wildcard_pattern}.log",
    benchmark:
        f"results/benchmarks/clean/{CLEANING.wildcard_pattern}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"
