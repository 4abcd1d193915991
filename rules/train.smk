# Training: pretraining of the poisoned model per objective, and cleaning runs per
# (pretrained model, method, learning rate) keeping every epoch's weights.


rule pretrain:
    input:
        manifest="results/{dataset}/{attack}/poisoned_manifest.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
    output:
        weights=f"{PRETRAIN_RUN}/model.pt",
        step_log=f"{PRETRAIN_RUN}/train_log.parquet",
    params:
        settings=pretrain_settings,
        attack=attack_config,
        init_weights=config["model"]["init_weights"],
        keep_every_epoch=False,
        out_dir=run_folder,
    threads: 2
    log:
        "results/logs/pretrain/{dataset}/{attack}/{objective}.log",
    benchmark:
        "results/benchmarks/pretrain/{dataset}/{attack}/{objective}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"


rule cleaning_set:
    input:
        unpack(cleaning_labels),
        poisoned_manifest="results/{dataset}/{attack}/poisoned_manifest.parquet",
    output:
        "results/{dataset}/{attack}/cleaning_set.parquet",
    params:
        n_clean=config["clean"]["n_clean"],
        n_poisons=config["clean"]["n_poisons"],
        seed=config["clean"]["seed"],
    log:
        "results/logs/cleaning_set/{dataset}/{attack}.log",
    benchmark:
        "results/benchmarks/cleaning_set/{dataset}/{attack}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/cleaning_set.py"


rule clean:
    input:
        manifest="results/{dataset}/{attack}/cleaning_set.parquet",
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        init_weights=f"{PRETRAIN_RUN}/model.pt",
    output:
        weights=CLEAN_EPOCH_WEIGHTS,
        step_log=f"{CLEAN_RUN}/train_log.parquet",
    params:
        settings=clean_settings,
        attack=attack_config,
        keep_every_epoch=True,
        out_dir=run_folder,
    threads: 2
    log:
        "results/logs/clean/{dataset}/{attack}/{objective}/{method}/lr_{lr}.log",
    benchmark:
        "results/benchmarks/clean/{dataset}/{attack}/{objective}/{method}/lr_{lr}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/train.py"
