# Helpers shared by the rules: the study grid as Paramspaces, path builders and input functions.
# Every grid path and wildcard constraint below derives from cleanclip_core.study.
import re
import sys
from pathlib import Path

from snakemake.utils import Paramspace

from cleanclip_core import study
from cleanclip_core.attacks import get_attack
from cleanclip_core.defenses import CLEAN_SET, get_defense
from cleanclip_core.detectors import LEVELS, MODEL, detectors_of, get_detector

DATASET = config["dataset"]["name"]
STUDY = config["study"]
START = STUDY["start"]
PRETRAINED_TAG = START if study.start_kind(START) == "tag" else None  # open_clip downloads it
PRETRAINED = Paramspace(study.pretrained_models(config), param_sep="=")
CLEANING = Paramspace(study.cleaning_runs(config), param_sep="=")
# A pretrained model: results/runs/dataset=.../attack=.../model=.../start=.../pretrain_objective=...
# /pretrain_seed=.../pretrain_settings=...
PRETRAIN_RUN = f"results/runs/{PRETRAINED.wildcard_pattern}"
# A cleaning run, inside its pretrained model's folder: .../clean_method=.../cleaning_poisons=.../lr=...
# /clean_seed=.../clean_settings=...
CLEAN_RUN = f"results/runs/{CLEANING.wildcard_pattern}"
CLEAN_EPOCHS = range(1, config["clean"]["epochs"] + 1)
STUDY_DIR = f"results/studies/{study.study_name(config)}"
# An attack's poisoned data, per the digest of its settings and the dataset's: a changed trigger
# parameter poisons anew beside the first.
ATTACK_DIR = "results/{dataset}/{attack}/{poisoning}"
# A cleaning set, per poisons in it, replicate seed and the digest of its other settings.
CLEANING_SET = f"{ATTACK_DIR}/cleaning_sets/poisons_{{cleaning_poisons}}_seed_{{clean_seed}}_{{cleaning_set}}.parquet"
# A cleaning method's preparation stage, per replicate seed and the digest of its options.
PREPARED = f"{PRETRAIN_RUN}/clean_method={{clean_method}}/clean_seed={{clean_seed}}/preparation={{preparation}}/prepared"


# A pretrained model's training pairs embedded once for the training-set detectors, and each
# detector's scores and measures, per the digest of its options and of how it is judged.
TRAINING_EMBEDDINGS = f"{PRETRAIN_RUN}/detection/training_embeddings.parquet"
DETECTION = f"{PRETRAIN_RUN}/detection/detector={{detector}}/detection_settings={{detection_settings}}"
# A model-level detector's scores of a cleaning run's last epoch, the cleaned model.
CLEANED_DETECTION = f"{CLEAN_RUN}/detection/detector={{detector}}/detection_settings={{detection_settings}}"
# The poisoned data less the pairs a detector scored highest, for a filtered pretraining.
FILTERED_PAIRS = f"{DETECTION}/kept_{{fraction}}/manifest.parquet"


# The pretraining curve's epochs: none unless the study keeps every pretraining epoch.
PRETRAIN_CURVE = config["pretrain"]["curve"]
PRETRAIN_EPOCHS = range(1, config["pretrain"]["epochs"] + 1) if PRETRAIN_CURVE else range(0)


EPOCH_WEIGHTS = "epoch_{epoch:03d}.pt"
EPOCH_METRICS = "epoch_{epoch:03d}/metrics.parquet"


def epoch_files(run, epochs, name):
    """A file per epoch of a run: its weights (EPOCH_WEIGHTS) or its metrics (EPOCH_METRICS)."""
    return expand(f"{run}/{name}", epoch=epochs, allow_missing=True)


CLEAN_EPOCH_WEIGHTS = epoch_files(CLEAN_RUN, CLEAN_EPOCHS, EPOCH_WEIGHTS)
CLEAN_EPOCH_METRICS = epoch_files(CLEAN_RUN, CLEAN_EPOCHS, EPOCH_METRICS)
PRETRAIN_EPOCH_WEIGHTS = epoch_files(PRETRAIN_RUN, PRETRAIN_EPOCHS, EPOCH_WEIGHTS)
PRETRAIN_EPOCH_METRICS = epoch_files(PRETRAIN_RUN, PRETRAIN_EPOCHS, EPOCH_METRICS)
KEEP_LAST_WEIGHTS = config["execution"]["keep_weights"] == "last"


def kept_weights(epochs, last_is_kept):
    """A run's epoch weights as its training outputs them: with execution.keep_weights last, all
    but the one kept are temporary, deleted once evaluated."""
    if not KEEP_LAST_WEIGHTS:
        return epochs
    return [temp(path) for path in epochs[:-1]] + [path if last_is_kept else temp(path) for path in epochs[-1:]]


def checkpoints_kept(keep_last):
    """The checkpoint files the study keeps on disk."""
    pretrained, cleaning = len(PRETRAINED.dataframe), len(CLEANING.dataframe)
    if keep_last:
        return pretrained + cleaning
    return pretrained * (1 + len(PRETRAIN_EPOCHS)) + cleaning * len(CLEAN_EPOCHS)


if workflow.is_main_process:
    print(
        f"This study keeps {checkpoints_kept(KEEP_LAST_WEIGHTS):,} checkpoints of {config['study']['model']} "
        f"(execution.keep_weights {'last' if KEEP_LAST_WEIGHTS else 'all'}; with "
        f"{'all' if KEEP_LAST_WEIGHTS else 'last'}: {checkpoints_kept(not KEEP_LAST_WEIGHTS):,}); "
        "docs/configuration.md gives each model's size.",
        file=sys.stderr,
    )


def _one_of(values):
    return "|".join(re.escape(str(value)) for value in dict.fromkeys(values))


# Each grid dimension takes the study's values; every configured attack is poisoned and pictured.
wildcard_constraints:
    **{name: _one_of(CLEANING.dataframe[name]) for name in CLEANING.dataframe.columns} | {"attack": _one_of(config["attacks"])},
    cleaning_set=study.cleaning_set_digest(config),
    poisoning=_one_of(study.poisoning_digest(config, attack) for attack in config["attacks"]),
    preparation=_one_of(study.preparation_digest(config, method) for method in STUDY["clean_methods"]),
    detector=_one_of(study.used_detectors(config)),
    detection_settings=_one_of(study.detection_digest(config, name) for name in study.used_detectors(config)),


# The figures' facets: one fig2 and one trajectories figure per attack x poisons in the cleaning
# set (their panels are the pretraining objectives).
FIGURE_FACETS = [
    {"attack": attack, "cleaning_poisons": int(poisons)}
    for attack, poisons in CLEANING.dataframe[["attack", "cleaning_poisons"]].drop_duplicates().itertuples(index=False)
]


def study_figures(name, suffix):
    """The paths of a per-facet figure of the study, in FIGURE_FACETS' order."""
    return [
        f"{STUDY_DIR}/figures/{name}/{facet['attack']}_poisons{facet['cleaning_poisons']}.{suffix}"
        for facet in FIGURE_FACETS
    ]


def report_figures(name, caption):
    return [report(path, caption=caption, category="Figures", subcategory=name) for path in study_figures(name, "png")]


def poisoning_attacks():
    """The study's attacks that poison (a clean control has no poisoned row to picture); an
    attack that is configured but not studied is neither poisoned nor pictured."""
    return [name for name in STUDY["attacks"] if config["attacks"][name]["n_poisons"]]


def url_list(wildcards):
    """The URL list to download: the configured TSV, else the generated corpus's."""
    return config["dataset"]["url_list"] or f"results/{wildcards.dataset}/corpus/urls.tsv"


def cleaning_labels(wildcards):
    """The labels of the cleaning pairs and the manifest that maps their keys to urls, if any:
    the configured table, else the generated corpus's; a downloaded dataset may have none."""
    generated = config["dataset"]["url_list"] is None
    labels = config["clean"]["labels"] or (generated and f"results/{wildcards.dataset}/corpus/train_labels.parquet")
    return {"labels": labels, "manifest": f"results/{wildcards.dataset}/manifest.parquet"} if labels else {}


def _filled(pattern, wildcards):
    """A path pattern of the grid with a job's wildcards (or a mapping) filled in, the attack's
    poisoning digest among them."""
    values = dict(wildcards.items())
    if "attack" in values:
        values.setdefault("poisoning", study.poisoning_digest(config, values["attack"]))
    return pattern.format(**values)


def poisoned_manifest(wildcards):
    return _filled(f"{ATTACK_DIR}/poisoned_manifest.parquet", wildcards)


def pretraining_data(wildcards):
    """What a model pretrains on: the poisoned data or, for a filtered pretraining, the pairs
    its detector left of it under the base objective's model (of the same seed)."""
    options = study.filtering_options(config, wildcards.pretrain_objective)
    if options is None:
        return poisoned_manifest(wildcards)
    base, detector = options["base"], options["detector"]
    return _filled(FILTERED_PAIRS, dict(wildcards.items()) | {
        "pretrain_objective": base, "pretrain_settings": study.pretrain_digest(config, wildcards.attack, base),
        "detector": detector, "detection_settings": study.detection_digest(config, detector), "fraction": options["fraction"],
    })


def attack_folders(name):
    """The file `name` of every attack of the study that poisons."""
    return [_filled(f"{ATTACK_DIR}/{name}", {"dataset": DATASET, "attack": attack}) for attack in poisoning_attacks()]


def attack_preparation(wildcards):
    """The file the attack's preparation stage makes (BadCLIP's optimized patch), if it has one."""
    attack = get_attack(config["attacks"][wildcards.attack]["type"])
    return {"prepared": _filled(f"{ATTACK_DIR}/trigger.pt", wildcards)} if attack.preparation else {}


def attack_entry(wildcards):
    return config["attacks"][wildcards.attack]


def attack_target(wildcards):
    """The attack's target class: the label of the poisons in a labelled cleaning set."""
    return attack_entry(wildcards)["target_label"]


def attack_config(wildcards):
    """The attack's config entry, with the file its preparation stage made."""
    return attack_entry(wildcards) | attack_preparation(wildcards)


def surrogate(wildcards):
    """The clean model an attack's preparation optimizes against: the study's start when it is a
    local file, else (from scratch) a model pretrained on the unpoisoned data; an open_clip tag
    needs no file."""
    kind = study.start_kind(START)
    if kind == "tag":
        return {}
    return {"surrogate": START if kind == "file" else f"results/{wildcards.dataset}/surrogate/model={STUDY['model']}/model.pt"}


def surrogate_settings(wildcards):
    return study.pretrain_settings(config, "mmcl", study.pretrain_seeds(config)[0])


def cleaning_data(wildcards):
    """What a cleaning run trains on: the study's cleaning set, or, for a method that cleans on
    the poisoned training data, the pairs its preparation stage chose (else that data itself)."""
    defense = get_defense(wildcards.clean_method)
    if defense.data == CLEAN_SET:
        return _filled(CLEANING_SET, dict(wildcards.items()) | {"cleaning_set": study.cleaning_set_digest(config)})
    if defense.preparation:
        return _filled(f"{PREPARED}/manifest.parquet", _with_preparation(dict(wildcards.items())))
    return poisoned_manifest(wildcards)


def preparation_settings(wildcards):
    return study.preparation_settings(config, wildcards.clean_method, int(wildcards.clean_seed))


def prepared_methods():
    """The study's cleaning methods that have a stage of their own before cleaning."""
    return [method for method in STUDY["clean_methods"] if get_defense(method).preparation]


def _with_preparation(point):
    """A grid point of a preparation stage with the digest of its method's options."""
    return point | {"preparation": study.preparation_digest(config, point["clean_method"])}


def study_preparations(wildcards):
    """The tables of every preparation stage of the study (UBT's detection), with their identities:
    one per pretrained model, prepared method and cleaning seed."""
    runs = CLEANING.dataframe[CLEANING.dataframe.clean_method.isin(prepared_methods())]
    points = runs[[*study.PRETRAIN_DIMENSIONS, "clean_method", "clean_seed"]].drop_duplicates()
    return [_filled(f"{PREPARED}/table.parquet", _with_preparation(point)) for point in points.to_dict("records")]


def start_weights(wildcards):
    """The local checkpoint pretraining starts from, an input of the rule (a new file reruns it)."""
    return {"start_weights": START} if study.start_kind(START) == "file" else {}


def set_aside_checkpoints(run):
    """An input function: the checkpoints of the training run in folder `run` (a pattern) that a
    later stage found damaged and set aside as *.damaged (models.load_weights). A new one changes
    the run's inputs, so that a plain rerun trains it anew: Snakemake does not remake a missing
    file that no job it runs needs."""

    def checkpoints(wildcards):
        return sorted(str(path) for path in Path(_filled(run, wildcards)).glob("*.damaged"))

    return checkpoints


def pretrain_settings(wildcards):
    return study.pretrain_settings(config, wildcards.pretrain_objective, int(wildcards.pretrain_seed))


def clean_settings(wildcards):
    return study.clean_settings(config, wildcards.clean_method, float(wildcards.lr), int(wildcards.clean_seed))


def cleaning_set_settings(wildcards):
    return study.cleaning_set_settings(config, int(wildcards.cleaning_poisons), int(wildcards.clean_seed))


def evaluation_images(wildcards):
    """The labelled evaluation images: the configured ones, else the generated corpus's split."""
    return config["evaluation"]["images"] or f"results/{wildcards.dataset}/corpus/eval"


def _plain(point):
    """A grid point's values as plain Python values (Paramspace and pandas give numpy's)."""
    return {name: getattr(value, "item", lambda: value)() for name, value in point.items()}


def _identity(space, wildcards):
    """A grid point's dimension values as plain Python values."""
    return _plain(space.instance(wildcards))


def pretrained_checkpoints(wildcards):
    """The identity of a pretrained model (a metrics row's dimension columns), in a list."""
    return [_identity(PRETRAINED, wildcards) | {"epoch": 0}]


def cleaned_checkpoints(wildcards):
    """The identities of a cleaning run's epochs."""
    run = _identity(CLEANING, wildcards)
    return [run | {"epoch": epoch} for epoch in CLEAN_EPOCHS]


def pretraining_curve_checkpoints(wildcards):
    """The identities of a pretraining run's epochs (the points of its curve), then the
    pretrained model's."""
    run = _identity(PRETRAINED, wildcards)
    return [run | {"epoch": epoch} for epoch in PRETRAIN_EPOCHS] + pretrained_checkpoints(wildcards)


def pretrained_provenance(wildcards):
    """Every experiment setting that made a pretrained model and its metrics: their hash is the
    metrics' config_hash."""
    return study.pretrained_provenance(config, wildcards.attack, wildcards.pretrain_objective, int(wildcards.pretrain_seed))


def cleaned_provenance(wildcards):
    return study.cleaned_provenance(config, _identity(CLEANING, wildcards))


def _epoch_metrics(space, epochs):
    return [path for run in space.instance_patterns for path in epoch_files(f"results/runs/{run}", epochs, EPOCH_METRICS)]


def study_metrics(wildcards):
    """The metrics files of the study: every pretrained model and every cleaning epoch."""
    pretrained = [f"results/runs/{run}/metrics.parquet" for run in PRETRAINED.instance_patterns]
    return pretrained + _epoch_metrics(CLEANING, CLEAN_EPOCHS)


def study_pretraining_curves(wildcards):
    """The metrics files of every pretraining epoch of the study (none without pretrain.curve)."""
    return _epoch_metrics(PRETRAINED, PRETRAIN_EPOCHS)


def study_train_logs(wildcards):
    """The step logs of the study's cleaning runs: the stopping rules read their losses."""
    return [f"results/runs/{run}/train_log.parquet" for run in CLEANING.instance_patterns]


def run_folder(wildcards, output):
    """Where a training run writes: the folder of its step log."""
    return str(Path(output.step_log).parent)


def detection_settings(wildcards):
    return study.detection_settings(config, wildcards.detector)


def detectors_of_level(level):
    """A wildcard constraint: the study's detectors of one level (none: a pattern matching nothing)."""
    return _one_of(detectors_of(study.used_detectors(config), level)) or "(?!)"


def _detection_points(space, detectors, folder):
    points = []
    for model in space.dataframe.to_dict("records"):
        for detector in detectors:
            identity = _plain(model) | {"detector": detector, "detection_settings": study.detection_digest(config, detector)}
            points.append((identity, _filled(folder, identity)))
    return points


def study_detection_points():
    """Every pretrained model x detector of the study, then every cleaned model x model-level
    detector: its identity (the model's dimensions, the detector and the digest of its settings)
    and its folder."""
    return _detection_points(PRETRAINED, STUDY["detectors"], DETECTION) + _detection_points(
        CLEANING, detectors_of(STUDY["detectors"], MODEL), CLEANED_DETECTION)


def study_detections(name, levels=LEVELS):
    """The file `name` of every detection of the study (study_detection_points) by a detector of `levels`."""
    return [f"{folder}/{name}" for identity, folder in study_detection_points() if get_detector(identity["detector"]).level in levels]


def _detection_identity(space, wildcards):
    """A detection's identity, as study_detection_points gives it."""
    return _identity(space, wildcards) | {"detector": wildcards.detector, "detection_settings": wildcards.detection_settings}


def detection_identity(wildcards):
    return _detection_identity(PRETRAINED, wildcards)


def cleaned_detection_identity(wildcards):
    return _detection_identity(CLEANING, wildcards)


def is_backdoored(wildcards):
    """Whether the model's pretraining data was poisoned (its attack poisons): what a model-level
    detector should find, in a pretrained model or in what cleaning made of it."""
    return attack_entry(wildcards)["n_poisons"] > 0
