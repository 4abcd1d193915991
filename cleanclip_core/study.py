"""The study grid (design section 11): its dimensions, declared once, and their expansion.

A study crosses a dataset, a model and a start with attacks and pretraining objectives (one
pretrained model each), then each pretrained model with cleaning methods, poisons left in the
cleaning set and per-method learning rates (one cleaning run each), whose every epoch is a
checkpoint. Output paths, wildcard constraints, the identity columns of every metrics row, the
SQL views and the figures' facets all derive from `DIMENSIONS`; adding a dimension is one entry
here plus what is new about it.

Only experiment settings (what changes the science) enter a run's settings and so its identity;
execution settings (`execution` in the config: loader workers, evaluation batch size, download
threads) never do.
"""

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cleanclip_core.defenses import POISONED_DATA, defense_options, get_defense

SCRATCH = "scratch"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class Dimension:
    """A dimension of the grid: its column name, its Arrow type, and the stage it belongs to
    (`pretrain`: it makes a pretrained model; `clean`: it makes a cleaning run)."""

    name: str
    arrow_type: str
    stage: str


DIMENSIONS = (
    Dimension("dataset", "string", "pretrain"),
    Dimension("attack", "string", "pretrain"),
    Dimension("model", "string", "pretrain"),
    Dimension("start", "string", "pretrain"),
    Dimension("pretrain_objective", "string", "pretrain"),
    Dimension("clean_method", "string", "clean"),
    Dimension("cleaning_poisons", "int64", "clean"),
    Dimension("lr", "float64", "clean"),
)
PRETRAIN_DIMENSIONS = tuple(d.name for d in DIMENSIONS if d.stage == "pretrain")
CLEAN_DIMENSIONS = tuple(d.name for d in DIMENSIONS if d.stage == "clean")


def start_kind(start: str) -> str:
    """`scratch`, `file` (a local checkpoint) or `tag` (an open_clip pretrained tag, e.g. openai)."""
    if start == SCRATCH:
        return SCRATCH
    return "file" if "/" in start or start.endswith(WEIGHT_SUFFIXES) else "tag"


def start_label(start: str) -> str:
    """How a start appears in paths and tables: `scratch`, the tag, or the file's stem."""
    return Path(start).stem if start_kind(start) == "file" else start


def pretrained_models(config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per pretrained model of the study, a column per pretraining dimension."""
    study = config["study"]
    rows = itertools.product(
        [config["dataset"]["name"]], study["attacks"], [study["model"]],
        [start_label(study["start"])], study["pretrain_objectives"],
    )
    return pd.DataFrame(rows, columns=list(PRETRAIN_DIMENSIONS))


def cleaning_runs(config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per cleaning run: each pretrained model x method x cleaning poisons x the
    method's learning rates."""
    study = config["study"]
    rows = [
        (*model, method, poisons, float(lr))
        for model in pretrained_models(config).itertuples(index=False)
        for method in study["clean_methods"]
        for poisons in method_cleaning_poisons(config, method, model.attack)
        for lr in method_lrs(config, method)
    ]
    frame = pd.DataFrame(rows, columns=list(PRETRAIN_DIMENSIONS + CLEAN_DIMENSIONS))
    return frame.astype({"cleaning_poisons": "int64", "lr": "float64"})


def method_cleaning_poisons(config: Mapping[str, Any], method: str, attack: str) -> list[int]:
    """The poisons in a method's cleaning sets. A method that cleans on the poisoned training data
    itself has no cleaning set, and a clean control (an attack with no poisons) none to put in
    one: they clean once per learning rate, with cleaning_poisons 0."""
    if get_defense(method).data == POISONED_DATA or is_control(config, attack):
        return [0]
    return config["study"]["cleaning_poisons"]


def is_control(config: Mapping[str, Any], attack: str) -> bool:
    """Whether an attack is a clean control: no poisons, so its model is the unpoisoned one and
    its attack success rate is the trigger's false-trigger rate."""
    return config["attacks"][attack]["n_poisons"] == 0


def method_lrs(config: Mapping[str, Any], method: str) -> list[float]:
    """A cleaning method's learning-rate sweep: its own, else the shared one."""
    return config["clean"]["per_method"].get(method, {}).get("lrs", config["clean"]["lrs"])


def study_name(config: Mapping[str, Any]) -> str:
    """The study's name: the configured one, else the dataset, model and start with a digest of
    the grid (so two different studies in one results folder never share their figures)."""
    study = config["study"]
    if study["name"]:
        return study["name"]
    digest = hashlib.sha256(cleaning_runs(config).to_csv(index=False).encode()).hexdigest()[:8]
    return f"{config['dataset']['name']}_{study['model']}_{start_label(study['start'])}_{digest}"


TRAIN_SETTINGS = ("epochs", "batch_size", "lr", "warmup_steps", "weight_decay", "seed", "synonyms")


def _train_settings(config: Mapping[str, Any], stage: str, objective: str, overrides: Mapping[str, Any]) -> dict:
    """The experiment settings of a training run (cleanclip_core.training.loop.TrainSettings):
    the stage's settings, overridden per objective or method (a cleaning run's lr is its own)."""
    settings = {key: config[stage][key] for key in TRAIN_SETTINGS if key in config[stage]} | dict(overrides)
    return {"model": config["study"]["model"], "objective": config["objectives"][objective]} | settings


def pretrain_settings(config: Mapping[str, Any], objective: str) -> dict:
    return _train_settings(config, "pretrain", objective, config["pretrain"]["per_objective"].get(objective, {}))


def clean_settings(config: Mapping[str, Any], method: str, lr: float) -> dict:
    overrides = {k: v for k, v in config["clean"]["per_method"].get(method, {}).items() if k != "lrs"}
    method_settings = {"lr": lr, "method": method, "options": defense_options(config, method)}
    return _train_settings(config, "clean", method, overrides | method_settings)


def preparation_settings(config: Mapping[str, Any], method: str) -> dict:
    """What a cleaning method's preparation stage depends on: its options and the cleaning seed."""
    return {"method": method, "options": defense_options(config, method), "seed": config["clean"]["seed"]}


def dataset_settings(config: Mapping[str, Any]) -> dict:
    """What makes the downloaded dataset: the URL list (or the generated corpus) and the stored
    images' format."""
    dataset = config["dataset"]
    source = {"url_list": dataset["url_list"]} if dataset["url_list"] else {"corpus": dataset["corpus"]}
    return {"name": dataset["name"], "download": dataset["download"]} | source


def evaluation_settings(config: Mapping[str, Any]) -> dict:
    return {key: config["evaluation"][key] for key in ("images", "classnames")}


def pretrained_provenance(config: Mapping[str, Any], attack: str, objective: str) -> dict:
    """Every experiment setting that made a pretrained model and its metrics."""
    return {
        "dataset": dataset_settings(config),
        "attack": config["attacks"][attack],
        "start": config["study"]["start"],
        "pretrain": pretrain_settings(config, objective),
        "evaluation": evaluation_settings(config),
    }


def cleaning_set_settings(config: Mapping[str, Any], poisons: int) -> dict:
    clean = config["clean"]
    return {"n_clean": clean["n_clean"], "n_poisons": poisons, "seed": clean["seed"], "labels": clean["labels"]}


def cleaned_provenance(config: Mapping[str, Any], attack: str, objective: str, method: str, poisons: int, lr: float) -> dict:
    return pretrained_provenance(config, attack, objective) | {
        "clean": clean_settings(config, method, lr) | cleaning_set_settings(config, poisons)
    }
