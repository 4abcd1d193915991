# Detection: every detector of the study scores every pretrained model's training pairs (their
# embeddings computed once), its evaluation images or its image encoder (a cleaned model's too),
# and the study's table and ROC curves compare them. The detector's level picks its rule.


rule embed_training:
    input:
        unpack(attack_preparation),
        manifest=poisoned_manifest,
        shard_index="results/{dataset}/shard_index.parquet",
        shards="results/{dataset}/shards",
        shard_listing="results/{dataset}/shard_listing.parquet",
        weights=f"{PRETRAIN_RUN}/model.pt",
    output:
        TRAINING_EMBEDDINGS,
    params:
        model=STUDY["model"],
        attack=attack_config,
    threads: 2
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        evaluation_batch_size=config["execution"]["evaluation_batch_size"],
    log:
        f"results/logs/embed_training/{PRETRAINED.wildcard_pattern}.log",
    benchmark:
        f"results/benchmarks/embed_training/{PRETRAINED.wildcard_pattern}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/embed_training.py"


rule detect_training:
    input:
        TRAINING_EMBEDDINGS,
    wildcard_constraints:
        detector=detectors_of_level("training"),
    output:
        scores=f"{DETECTION}/scores.parquet",
        quality=f"{DETECTION}/quality.parquet",
    params:
        settings=detection_settings,
    log:
        f"results/logs/detect_training/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}.log",
    benchmark:
        f"results/benchmarks/detect_training/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/detect_training.py"


rule detect_test:
    input:
        unpack(attack_preparation),
        weights=f"{PRETRAIN_RUN}/model.pt",
        images=evaluation_images,
    wildcard_constraints:
        detector=detectors_of_level("test"),
    output:
        scores=f"{DETECTION}/scores.parquet",
        quality=f"{DETECTION}/quality.parquet",
    params:
        model=STUDY["model"],
        attack=attack_config,
        classnames=config["evaluation"]["classnames"],
        settings=detection_settings,
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
        evaluation_batch_size=config["execution"]["evaluation_batch_size"],
    log:
        f"results/logs/detect_test/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}.log",
    benchmark:
        f"results/benchmarks/detect_test/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/detect_test.py"


rule filter_pairs:
    input:
        scores=f"{DETECTION}/scores.parquet",
        manifest=poisoned_manifest,
    output:
        FILTERED_PAIRS,
    log:
        f"results/logs/filter_pairs/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}_{{fraction}}.log",
    benchmark:
        f"results/benchmarks/filter_pairs/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}_{{fraction}}.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/filter_pairs.py"


rule detect_model:
    input:
        weights=f"{PRETRAIN_RUN}/model.pt",
        images=evaluation_images,
    wildcard_constraints:
        detector=detectors_of_level("model"),
    output:
        scores=f"{DETECTION}/scores.parquet",
    params:
        model=STUDY["model"],
        classnames=config["evaluation"]["classnames"],
        identity=detection_identity,
        is_backdoored=is_backdoored,
        settings=detection_settings,
    resources:
        gpu=1,
        num_workers=config["execution"]["num_workers"],
    log:
        f"results/logs/detect_model/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}.log",
    benchmark:
        f"results/benchmarks/detect_model/{PRETRAINED.wildcard_pattern}/{{detector}}_{{detection_settings}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../workflow_scripts/detect_model.py"


# A cleaned model is its cleaning run's last epoch.
use rule detect_model as detect_cleaned_model with:
    input:
        weights=CLEAN_EPOCH_WEIGHTS[-1],
        images=evaluation_images,
    output:
        scores=f"{CLEANED_DETECTION}/scores.parquet",
    params:
        model=STUDY["model"],
        classnames=config["evaluation"]["classnames"],
        identity=cleaned_detection_identity,
        is_backdoored=is_backdoored,
        settings=detection_settings,
    log:
        f"results/logs/detect_model/{CLEANING.wildcard_pattern}/{{detector}}_{{detection_settings}}.log",
    benchmark:
        f"results/benchmarks/detect_model/{CLEANING.wildcard_pattern}/{{detector}}_{{detection_settings}}.tsv"


# A model-level detector has no quality table of its own: the summary ranks the study's models.
rule detection_summary:
    input:
        qualities=study_detections("quality.parquet", levels=[level for level in LEVELS if level != MODEL]),
        scores=study_detections("scores.parquet"),
    output:
        table=report(f"{STUDY_DIR}/tables/detection.csv", caption="../report/detection.rst", category="Tables"),
        replicates=f"{STUDY_DIR}/tables/detection_replicates.csv",
        roc=f"{STUDY_DIR}/figures/roc.pdf",
        roc_png=report(f"{STUDY_DIR}/figures/roc.png", caption="../report/detection.rst", category="Figures"),
    params:
        identities=[point for point, _ in study_detection_points()],
        objectives=STUDY["pretrain_objectives"],
        poisoning_attacks=poisoning_attacks(),
        resamples=config["detection"]["bootstrap_resamples"],
        seed=config["detection"]["seed"],
    log:
        f"{STUDY_DIR}/logs/detection_summary.log",
    benchmark:
        f"{STUDY_DIR}/benchmarks/detection_summary.tsv"
    conda:
        "../envs/results.yaml"
    script:
        "../workflow_scripts/detection_summary.py"
