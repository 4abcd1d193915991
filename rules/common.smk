# Helpers shared by the rules: path builders and input functions.
import re
from pathlib import Path

DATASET = config["dataset"]["name"]


wildcard_constraints:
    dataset=DATASET,
    attack="|".join(config["attacks"]),


def url_list(wildcards):
    """The URL list to download: the configured TSV, else the generated corpus's."""
    return config["dataset"]["url_list"] or f"results/{wildcards.dataset}/corpus/urls.tsv"


def cleaning_labels(wildcards):
    """The labels of the cleaning pairs and the manifest that maps their keys to urls, if any:
    the configured table, else the generated corpus's; a downloaded dataset may have none."""
    generated = config["dataset"]["url_list"] is None
    labels = config["clean"]["labels"] or (generated and f"results/{wildcards.dataset}/corpus/train_labels.parquet")
    return {"labels": labels, "manifest": f"results/{wildcards.dataset}/manifest.parquet"} if labels else {}


def attack_config(wildcards):
    return config["attacks"][wildcards.attack]


STUDY_ATTACK = config["study"]["attack"]
PRETRAIN_OBJECTIVES = config["pretrain"]["objectives"]
CLEAN_METHODS = config["clean"]["methods"]
CLEAN_EPOCHS = range(1, config["clean"]["epochs"] + 1)


def lr_label(lr):
    """A learning rate as it appears in paths: 0.001, 1e-05."""
    return f"{lr:g}"


CLEAN_LRS = [lr_label(lr) for lr in config["clean"]["lrs"]]
PRETRAIN_RUN = "results/{dataset}/{attack}/pretrain/{objective}"
CLEAN_RUN = f"{PRETRAIN_RUN}/clean/{{method}}/lr_{{lr}}"
CLEAN_EPOCH_WEIGHTS = expand(f"{CLEAN_RUN}/epoch_{{epoch:03d}}.pt", epoch=CLEAN_EPOCHS, allow_missing=True)
CLEAN_EPOCH_METRICS = expand(
    f"{CLEAN_RUN}/epoch_{{epoch:03d}}/metrics.parquet", epoch=CLEAN_EPOCHS, allow_missing=True
)


wildcard_constraints:
    objective="|".join(PRETRAIN_OBJECTIVES),
    method="|".join(CLEAN_METHODS),
    lr="|".join(re.escape(lr) for lr in CLEAN_LRS),


def training_settings(stage, objective, lr):
    """The settings of one training run (cleanclip_core.training.loop.TrainSettings)."""
    stage_config = config[stage]
    return {
        "model": config["model"]["name"],
        "objective": config["objectives"][objective],
        "lr": lr,
    } | {
        key: stage_config[key]
        for key in ("epochs", "batch_size", "warmup_steps", "weight_decay", "seed", "synonyms", "num_workers")
    }


def pretrain_settings(wildcards):
    return training_settings("pretrain", wildcards.objective, config["pretrain"]["lr"])


def clean_settings(wildcards):
    return training_settings("clean", wildcards.method, float(wildcards.lr))


def evaluation_images(wildcards):
    """The labelled evaluation images: the configured ones, else the generated corpus's split."""
    return config["evaluation"]["images"] or f"results/{wildcards.dataset}/corpus/eval"


def pretrained_checkpoints(wildcards):
    """The identity of a pretrained model (cleanclip_core.results.CheckpointIdentity), in a list."""
    return [{"dataset": wildcards.dataset, "attack": wildcards.attack, "pretrain_objective": wildcards.objective}]


def cleaned_checkpoints(wildcards):
    """The identities of a cleaning run's epochs."""
    run = pretrained_checkpoints(wildcards)[0] | {"clean_method": wildcards.method, "lr": float(wildcards.lr)}
    return [run | {"epoch": epoch} for epoch in CLEAN_EPOCHS]


def pretrained_provenance(wildcards):
    """Every setting that made a pretrained model and its metrics: their hash is the config_hash."""
    return {
        "dataset": config["dataset"],
        "attack": attack_config(wildcards),
        "init_weights": config["model"]["init_weights"],
        "pretrain": pretrain_settings(wildcards),
        "evaluation": config["evaluation"],
    }


def cleaned_provenance(wildcards):
    cleaning_set = {key: config["clean"][key] for key in ("n_clean", "n_poisons", "seed", "labels")}
    return pretrained_provenance(wildcards) | {"clean": clean_settings(wildcards) | cleaning_set}


def study_metrics(wildcards):
    """The metrics files of the study: every pretrained model and every cleaning epoch."""
    study = {"dataset": DATASET, "attack": STUDY_ATTACK, "objective": PRETRAIN_OBJECTIVES}
    pretrained = expand(f"{PRETRAIN_RUN}/metrics.parquet", **study)
    cleaned = expand(CLEAN_EPOCH_METRICS, **study, method=CLEAN_METHODS, lr=CLEAN_LRS)
    return pretrained + cleaned


def run_folder(wildcards, output):
    """Where a training run writes: the folder of its step log."""
    return str(Path(output.step_log).parent)
