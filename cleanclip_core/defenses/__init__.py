"""Defenses: a registry of what a training method needs beyond its loss terms.

A method is an objective of the config (its loss terms' weights; the terms declare the views,
labels and reference model they need, see cleanclip_core.objectives) and, when it needs more, an
entry here. A cleaning method (stage `clean`) may declare where it cleans, a stage of its own
before training, which parameters it updates, a fixed temperature, its optimizer and schedule,
views beyond its terms'. A robust pretraining method (stage `pretrain`: RoCLIP, SafeCLIP) is a
value of the pretraining axis; it may keep a state across steps (a pool of captions) and split
the data anew at the start of every epoch. Either has the schema of its options (the config's
`defenses.{name}`). The registry imports no torch (the workflow reads it to build its DAG);
functions are named by import path. A method without an entry is plain training of every
parameter (finetuning on the cleaning set, or pretraining).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cleanclip_core.registry import Registry, resolve

CLEAN_SET, POISONED_DATA, FILTERED_DATA = "clean_set", "poisoned_data", "filtered_data"
CLEAN, PRETRAIN = "clean", "pretrain"


@dataclass(frozen=True)
class Defense:
    name: str
    stage: str = CLEAN
    """`clean`: a cleaning method (a value of study.clean_methods); `pretrain`: a robust
    pretraining method (a value of study.pretrain_objectives)."""
    data: str = CLEAN_SET
    """Cleaning: `clean_set`, the study's cleaning set (clean pairs plus `cleaning_poisons`
    poisoned ones), or `poisoned_data`, the poisoned training data itself, as its preparation
    stage gives it (no separate set: its runs record cleaning_poisons 0). Pretraining:
    `poisoned_data`, or `filtered_data`, the poisoned data less the pairs a training-set detector
    flagged under a model pretrained on all of it (its options: `base`, `detector`, `fraction`)."""
    preparation: str | None = None
    """`module:function` of a stage run on the pretrained model and the poisoned data before
    cleaning. It writes a table (reported) and the manifest of the pairs the run trains on."""
    summary: str | None = None
    """`module:function` (that table) -> {measure: value}, one row of the study's preparation
    summary (UBT: precision and recall of its detection against the known poisons)."""
    flags: tuple[str, ...] = ()
    """Boolean columns of that manifest that reach the loss terms in every batch."""
    views: tuple[str, ...] = ()
    """View sources beyond those of its terms (a source whose field is `image` perturbs it)."""
    trainable: str | None = None
    """`module:function` (model, options) -> names of the parameters it updates; None: all."""
    learns_logit_scale: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str | None = None
    """`module:function` (optimizer, lr, warmup_steps, steps_per_epoch, epochs, options) ->
    (step -> lr, set on the optimizer); None: linear warmup then cosine."""
    state: str | None = None
    """`module:function` (options, embed_dim, seed) -> a torch module whose buffers its terms
    read and update across steps (part of the resume state); None: it keeps none."""
    epoch_start: str | None = None
    """`module:function` (EpochStart) -> {flag: a boolean per training pair}, called before every
    epoch: flags that reach the terms with each batch for that epoch (SafeCLIP's safe pairs)."""
    options: Mapping[str, Any] | None = None
    """JSON schema of its options, defaults included (a `$ref` into the config schema's `$defs`
    for the built-in methods); None: it has none."""
    unrecorded_defaults: Mapping[str, Any] = field(default_factory=dict)
    """Options added after runs were stored, each at its default, the behaviour those runs had:
    at that value an option stays out of a run's settings (its digest, Snakemake's params, the
    resume state), so the stored runs keep their identity; training reads it from here."""
    check: str | None = None
    """`module:function` (MethodRun) -> the config's problems with its options given the run, a
    line each, found at DAG build (so without torch); None: the schema is check enough."""


@dataclass(frozen=True)
class MethodRun:
    """What a method's check sees of a training run of the study."""
    name: str
    options: Mapping[str, Any]
    settings: Mapping[str, Any]
    """The stage's settings with the method's own (epochs, batch_size, ...)."""
    pairs: int | None
    """Training pairs an epoch where the config tells (the generated corpus), else None."""


PLAIN = Defense("plain")

DEFENSES = Registry("cleaning method", Defense, (
    Defense("ta_cleaner", options={"$ref": "#/$defs/ta_cleaner_options"}),
    Defense(
        "ubt", data=POISONED_DATA, preparation="cleanclip_core.defenses.ubt:detect",
        summary="cleanclip_core.defenses.ubt:detection_quality", flags=("unlearn",),
        trainable="cleanclip_core.defenses.ubt:local_parameters", options={"$ref": "#/$defs/ubt_options"},
    ),
    Defense(
        "par", views=("perturbed",), learns_logit_scale=False, betas=(0.9, 0.98),
        schedule="cleanclip_core.defenses.par:par_schedule", options={"$ref": "#/$defs/par_options"},
    ),
    Defense(
        "roclip", PRETRAIN, state="cleanclip_core.defenses.roclip:caption_pool",
        options={"$ref": "#/$defs/roclip_options"}, check="cleanclip_core.defenses.checks:roclip_problems",
        unrecorded_defaults={"pool_update": "wrap"},
    ),
    Defense(
        "roclip_aug", PRETRAIN, state="cleanclip_core.defenses.roclip:caption_pool", views=("roclip_augmented",),
        options={"$ref": "#/$defs/roclip_options"}, check="cleanclip_core.defenses.checks:roclip_problems",
        unrecorded_defaults={"pool_update": "wrap"},
    ),
    Defense("filtered", PRETRAIN, data=FILTERED_DATA, options={"$ref": "#/$defs/filtered_options"}),
    Defense(
        "safeclip", PRETRAIN, schedule="cleanclip_core.defenses.safeclip:safeclip_schedule",
        state="cleanclip_core.defenses.safeclip:safe_ratio", epoch_start="cleanclip_core.defenses.safeclip:split_pairs",
        options={"$ref": "#/$defs/safeclip_options"}, check="cleanclip_core.defenses.checks:safeclip_problems",
    ),
), paths=("preparation", "summary", "trainable", "schedule", "state", "epoch_start", "check"))


def get_defense(method: str | None) -> Defense:
    """The entry of a method, PLAIN for one without (and for plain pretraining)."""
    return DEFENSES.get(method, PLAIN) if method else PLAIN


def pretraining_method(objective: str) -> str | None:
    """The robust pretraining method a pretraining objective names, or None (plain training)."""
    return objective if get_defense(objective).stage == PRETRAIN else None


def defense_options(config: Mapping[str, Any], method: str) -> dict[str, Any]:
    """A method's options from the config's `defenses` section (empty for most), as a run's
    settings hold them: without those at their unrecorded default."""
    unrecorded = get_defense(method).unrecorded_defaults
    options = config.get("defenses", {}).get(method, {})
    return {name: value for name, value in options.items() if name not in unrecorded or value != unrecorded[name]}


def training_options(defense: Defense, options: Mapping[str, Any]) -> dict[str, Any]:
    """A run's options (`defense_options`) with the unrecorded defaults they leave out."""
    return dict(defense.unrecorded_defaults) | dict(options)


def method_problems(method: str | None, options: Mapping[str, Any], settings: Mapping[str, Any], pairs: int | None) -> list[str]:
    """What a method's own check (its entry's `check`) finds wrong with a run of it, a line each:
    at DAG build, and in the training stage, which knows a downloaded dataset's pairs."""
    check = get_defense(method).check
    return list(resolve(check)(MethodRun(method, options, settings, pairs))) if check else []
