"""The study grid (design section 11): its dimensions, declared once, and their expansion.

A study crosses a dataset, a model and a start with attacks and pretraining objectives (one
pretrained model each), then each pretrained model with cleaning methods, poisons left in the
cleaning set and per-method learning rates (one cleaning run each), whose every epoch is a
checkpoint. Output paths, wildcard constraints, the identity columns of every metrics row, the
SQL views and the figures' facets all derive from `DIMENSIONS`; adding a dimension is one entry
here plus what is new about it.

Only experiment settings (what changes the science) enter a run's settings and so its identity;
execution settings (`execution` in the config: loader workers, evaluation batch size, download
threads) never do. An experiment setting that is not a dimension (epochs, n_clean, warmup...)
reaches the identity through a stage's settings digest, a dimension too: two runs that differ in
any of them never share a path. Replicates are the seed dimensions: `study.seeds` replicates the
cleaning runs (each pretrained model cleaned once per seed), or with `study.replicate: pretrain`
the pretraining too (each seed's cleaning runs start from that seed's pretrained model).
"""

import functools
import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cleanclip_core.defenses import FILTERED_DATA, POISONED_DATA, defense_options, get_defense, pretraining_method
from cleanclip_core.detectors import MODEL, TEST, TRAINING, get_detector
from cleanclip_core.errors import UserError
from cleanclip_core.tables import file_sha256

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
    Dimension("pretrain_seed", "int64", "pretrain"),
    Dimension("pretrain_settings", "string", "pretrain"),
    Dimension("clean_method", "string", "clean"),
    Dimension("cleaning_poisons", "int64", "clean"),
    Dimension("lr", "float64", "clean"),
    Dimension("clean_seed", "int64", "clean"),
    Dimension("clean_settings", "string", "clean"),
)
PRETRAIN_DIMENSIONS = tuple(d.name for d in DIMENSIONS if d.stage == "pretrain")
CLEAN_DIMENSIONS = tuple(d.name for d in DIMENSIONS if d.stage == "clean")
REPLICATE_DIMENSIONS = ("pretrain_seed", "clean_seed")
SWEPT_DIMENSIONS = ("lr",)
"""What a summary row selects over: the rest of a cleaning run's dimensions make its group."""
DIGEST_LENGTH = 8


def digest(settings: Any, length: int = DIGEST_LENGTH) -> str:
    """A short hash of settings (JSON with sorted keys): the part of a path that stands for them."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]


def start_kind(start: str) -> str:
    """`scratch`, `file` (a local checkpoint) or `tag` (an open_clip pretrained tag, e.g. openai)."""
    if start == SCRATCH:
        return SCRATCH
    return "file" if "/" in start or start.endswith(WEIGHT_SUFFIXES) else "tag"


def start_label(start: str) -> str:
    """How a start appears in paths and tables: `scratch`, the tag, or a local file's stem and
    the start of its content's hash (two files of one name are two starts; a moved file is one)."""
    if start_kind(start) != "file":
        return start
    if not Path(start).is_file():
        raise UserError(f"study.start: no such file: {start}")
    stat = Path(start).stat()
    return f"{Path(start).stem}-{_content_digest(start, stat.st_mtime_ns, stat.st_size)}"


@functools.cache
def _content_digest(path: str, mtime_ns: int, size: int) -> str:
    """The start of a file's SHA-256, hashed once per version of the file (the DAG asks often)."""
    return file_sha256(path)[:DIGEST_LENGTH]


def pretrain_seeds(config: Mapping[str, Any]) -> list[int]:
    """The seeds of the pretraining runs: every replicate seed, or only the first when the
    replicates are of the cleaning runs."""
    seeds = config["study"]["seeds"]
    return seeds if config["study"]["replicate"] == "pretrain" else seeds[:1]


def clean_seeds(config: Mapping[str, Any], pretrain_seed: int) -> list[int]:
    """The seeds of a pretrained model's cleaning runs: every replicate seed, or its own when the
    pretraining is replicated (each replicate cleans its own model)."""
    return [pretrain_seed] if config["study"]["replicate"] == "pretrain" else config["study"]["seeds"]


def pretrained_models(config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per pretrained model of the study, a column per pretraining dimension."""
    study = config["study"]
    rows = [
        (*point, pretrain_digest(config, point[1], point[4]))
        for point in itertools.product(
            [config["dataset"]["name"]], study["attacks"], [study["model"]],
            [start_label(study["start"])], study["pretrain_objectives"], pretrain_seeds(config),
        )
    ]
    return pd.DataFrame(rows, columns=list(PRETRAIN_DIMENSIONS)).astype({"pretrain_seed": "int64"})


def cleaning_runs(config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per cleaning run: each pretrained model x method x cleaning poisons x the
    method's learning rates x the replicate seeds."""
    study = config["study"]
    rows = [
        (*model, method, poisons, float(lr), seed, clean_digest(config, method))
        for model in pretrained_models(config).itertuples(index=False)
        for method in study["clean_methods"]
        for poisons in method_cleaning_poisons(config, method, model.attack)
        for lr in method_lrs(config, method)
        for seed in clean_seeds(config, model.pretrain_seed)
    ]
    frame = pd.DataFrame(rows, columns=list(PRETRAIN_DIMENSIONS + CLEAN_DIMENSIONS))
    return frame.astype({"pretrain_seed": "int64", "cleaning_poisons": "int64", "lr": "float64", "clean_seed": "int64"})


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
    grid = digest(cleaning_runs(config).to_dict(orient="records"))
    return f"{config['dataset']['name']}_{study['model']}_{start_label(study['start'])}_{grid}"


TRAIN_SETTINGS = ("epochs", "batch_size", "lr", "warmup_steps", "weight_decay", "synonyms")
UNLESS_DEFAULT = {"eda": "per_epoch"}
"""Training settings added after studies were run: a run's settings (and so its digests) name
one only where it differs from this default, so the studies run before it keep their folders."""


def _train_settings(config: Mapping[str, Any], stage: str, objective: str, overrides: Mapping[str, Any]) -> dict:
    """The experiment settings of a training run (cleanclip_core.training.loop.TrainSettings):
    the stage's settings, overridden per objective or method (a cleaning run's lr is its own)."""
    settings = {key: config[stage][key] for key in TRAIN_SETTINGS if key in config[stage]}
    settings |= {key: config[stage][key] for key, default in UNLESS_DEFAULT.items()
                 if config[stage].get(key, default) != default}
    settings |= overrides
    return {"model": config["study"]["model"], "objective": config["objectives"][objective]} | settings


def pretrain_settings(config: Mapping[str, Any], objective: str, seed: int) -> dict:
    overrides = config["pretrain"]["per_objective"].get(objective, {}) | {"seed": seed}
    method = pretraining_method(objective)
    if method:
        overrides |= {"method": method, "options": defense_options(config, method)}
    return _train_settings(config, "pretrain", objective, overrides)


def clean_settings(config: Mapping[str, Any], method: str, lr: float, seed: int) -> dict:
    overrides = {k: v for k, v in config["clean"]["per_method"].get(method, {}).items() if k != "lrs"}
    method_settings = {"lr": lr, "seed": seed, "method": method, "options": defense_options(config, method)}
    return _train_settings(config, "clean", method, overrides | method_settings)


def preparation_settings(config: Mapping[str, Any], method: str, seed: int) -> dict:
    """What a cleaning method's preparation stage depends on: its options and the cleaning seed."""
    return {"method": method, "options": defense_options(config, method), "seed": seed}


def _without_seed(settings: Mapping[str, Any]) -> dict:
    return {key: value for key, value in settings.items() if key != "seed"}


def pretrain_digest(config: Mapping[str, Any], attack: str, objective: str) -> str:
    """The digest of what makes a pretrained model besides its dimensions: the dataset, the
    attack's settings and the pretraining settings (a filtered pretraining's filter too)."""
    settings = _without_seed(pretrain_settings(config, objective, seed=0))
    return digest({"dataset": dataset_settings(config), "attack": config["attacks"][attack], "pretrain": settings}
                  | filter_identity(config, attack, objective))


def filtering_options(config: Mapping[str, Any], objective: str) -> dict | None:
    """The filter of a pretraining objective that trains on filtered data (base, detector,
    fraction), else None."""
    method = pretraining_method(objective)
    return defense_options(config, method) if method and get_defense(method).data == FILTERED_DATA else None


def filter_identity(config: Mapping[str, Any], attack: str, objective: str) -> dict:
    """What makes a filtered pretraining's data: its base model's digest and its detector's
    (nothing for any other objective, whose digest stays as it was)."""
    options = filtering_options(config, objective)
    if options is None:
        return {}
    return {"filter": {"base": pretrain_digest(config, attack, options["base"]),
                       "detection": detection_digest(config, options["detector"])}}


def used_detectors(config: Mapping[str, Any]) -> list[str]:
    """The study's detectors and those its filtered pretraining objectives score with."""
    filters = [filtering_options(config, name) for name in config["study"]["pretrain_objectives"]]
    return list(dict.fromkeys([*config["study"]["detectors"], *(f["detector"] for f in filters if f)]))


def poisoning_digest(config: Mapping[str, Any], attack: str) -> str:
    """The digest of what makes an attack's poisoned data: the dataset's settings and the
    attack's (its trigger's parameters among them), the part of its folder's path that stands
    for them."""
    return digest({"dataset": dataset_settings(config), "attack": config["attacks"][attack]})


def clean_digest(config: Mapping[str, Any], method: str) -> str:
    """The digest of what makes a cleaning run besides its dimensions and its pretrained model:
    the method's settings (but its swept lr) and the cleaning set's."""
    settings = {k: v for k, v in _without_seed(clean_settings(config, method, lr=0.0, seed=0)).items() if k != "lr"}
    return digest({"clean": settings, "cleaning_set": cleaning_set_digest(config)})


def cleaning_set_digest(config: Mapping[str, Any]) -> str:
    """The digest of a cleaning set's settings besides its poisons and seed (in its path)."""
    return digest({key: config["clean"][key] for key in ("n_clean", "labels")})


def preparation_digest(config: Mapping[str, Any], method: str) -> str:
    return digest(_without_seed(preparation_settings(config, method, seed=0)))


def dataset_settings(config: Mapping[str, Any]) -> dict:
    """What makes the downloaded dataset: the URL list (or the generated corpus) and the stored
    images' format."""
    dataset = config["dataset"]
    source = {"url_list": dataset["url_list"]} if dataset["url_list"] else {"corpus": dataset["corpus"]}
    return {"name": dataset["name"], "download": dataset["download"]} | source


def evaluation_settings(config: Mapping[str, Any]) -> dict:
    return {key: config["evaluation"][key] for key in ("images", "classnames")}


def pretrained_provenance(config: Mapping[str, Any], attack: str, objective: str, seed: int) -> dict:
    """Every experiment setting that made a pretrained model and its metrics."""
    return {
        "dataset": dataset_settings(config),
        "attack": config["attacks"][attack],
        "start": config["study"]["start"],
        "pretrain": pretrain_settings(config, objective, seed),
        "evaluation": evaluation_settings(config),
    } | filter_identity(config, attack, objective)


def cleaning_set_settings(config: Mapping[str, Any], poisons: int, seed: int) -> dict:
    clean = config["clean"]
    return {"n_clean": clean["n_clean"], "n_poisons": poisons, "seed": seed, "labels": clean["labels"]}


def cleaned_provenance(config: Mapping[str, Any], run: Mapping[str, Any]) -> dict:
    """Every experiment setting that made a cleaning run (its dimensions in `run`) and its metrics."""
    clean = clean_settings(config, run["clean_method"], run["lr"], run["clean_seed"])
    cleaning_set = cleaning_set_settings(config, run["cleaning_poisons"], run["clean_seed"])
    pretrained = pretrained_provenance(config, run["attack"], run["pretrain_objective"], run["pretrain_seed"])
    return pretrained | {"clean": clean | cleaning_set}


DETECTION_SETTINGS = {
    TRAINING: ("batch_size", "reference_pairs", "reference_fpr", "bootstrap_resamples", "seed"),
    TEST: ("reference_images", "triggered_share", "reference_fpr", "bootstrap_resamples", "seed"),
    MODEL: ("seed",),  # the study's summary judges the models' scores together
}


def detection_settings(config: Mapping[str, Any], detector: str) -> dict:
    """What makes a detector's scores and measures besides the model: its options and, of the
    detection section, the settings of its level."""
    detection = config["detection"]
    keys = DETECTION_SETTINGS[get_detector(detector).level]
    return {"options": detection["options"].get(detector, {})} | {key: detection[key] for key in keys}


def detection_digest(config: Mapping[str, Any], detector: str) -> str:
    return digest(detection_settings(config, detector))
