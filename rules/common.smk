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

