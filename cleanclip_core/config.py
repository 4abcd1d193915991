"""The experiment config: validated against its JSON schema, which also supplies every default."""

import copy
import difflib
import importlib.util
import json
import logging
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cleanclip_core.classes import evaluation_classnames, target_class_index
from cleanclip_core.errors import UserError
from cleanclip_core.files import checkpoint_problem
from cleanclip_core.study import start_kind

SCHEMA_PATH = Path(str(files("cleanclip_core") / "config.schema.yaml"))

log = logging.getLogger(__name__)


def _integral(schema: Any, value: Any) -> Any:
    """`value` as an int where `schema` asks for an integer and it is a float without a fraction
    (YAML's `4.0`, which JSON Schema's integer accepts and range() or a batch size does not)."""
    types = schema.get("type") if isinstance(schema, dict) else None
    wants_integer = "integer" in (types if isinstance(types, list) else [types])
    return int(value) if wants_integer and isinstance(value, float) and value.is_integer() else value


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills in schema defaults (a fresh copy each time) and makes
    integral floats ints while validating."""
    check_properties = validator_class.VALIDATORS["properties"]
    check_items = validator_class.VALIDATORS["items"]

    def fill_then_check(validator, properties, instance, schema) -> Iterator:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
                if name in instance:
                    instance[name] = _integral(subschema, instance[name])
        yield from check_properties(validator, properties, instance, schema)

    def convert_then_check(validator, items, instance, schema) -> Iterator:
        if isinstance(instance, list):
            instance[:] = [_integral(items, item) for item in instance]
        yield from check_items(validator, items, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": fill_then_check, "items": convert_then_check})


def _location(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check `config` against the schema and fill in its defaults, in place; return it."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    if isinstance(config.get("objectives"), dict):  # a config adds objectives to the built-in ones
        config["objectives"] = copy.deepcopy(schema["properties"]["objectives"]["default"]) | config["objectives"]
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise UserError(f"config: {_location(error)}: {error.message}{_yaml_number_hint(error.instance)}")
    return config


def _yaml_number_hint(value: Any) -> str:
    """YAML 1.1 reads `3e-3` (no dot in the mantissa) as a string: say how to write the number."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    mantissa, _, exponent = value.partition("e") if "e" in value else value.partition("E")
    if exponent and "." not in mantissa:
        return f"; YAML reads {value} as text: write {mantissa}.0e{exponent}"
    return f"; write {value} without quotes"


def _check_references(config: dict[str, Any]) -> None:
    """Names in the study that must be keys of another section, weights that train something,
    and the labels the supervised objective needs."""
    for name, weights in config["objectives"].items():
        if not any(weights.values()):
            raise UserError(f"config: objectives.{name}: every weight is zero, so it trains nothing; give one term a weight above 0")
    study = config["study"]
    named = [
        ("study.attacks", study["attacks"], "attacks"),
        ("study.pretrain_objectives", study["pretrain_objectives"], "objectives"),
        ("study.clean_methods", study["clean_methods"], "objectives"),
        ("pretrain.per_objective", list(config["pretrain"]["per_objective"]), "objectives"),
        ("clean.per_method", list(config["clean"]["per_method"]), "objectives"),
    ]
    for location, names, section in named:
        unknown = [name for name in names if name not in config[section]]
        if unknown:
            raise UserError(f"config: {location}: {unknown[0]!r} is not one of {section} ({', '.join(config[section])})")

    def supervised(names: list[str]) -> list[str]:
        return [name for name in names if config["objectives"][name].get("supervised")]

    if supervised(study["pretrain_objectives"]):
        raise UserError(
            f"config: study.pretrain_objectives: {supervised(study['pretrain_objectives'])[0]!r} has a "
            "supervised term, which only cleaning supports"
        )
    supervised_methods = supervised(study["clean_methods"])
    if supervised_methods and config["dataset"]["url_list"] and not config["clean"]["labels"]:
        raise UserError(
            f"config: clean.labels: cleaning method {supervised_methods[0]!r} is supervised and needs a "
            "labels table (url, classname) for the downloaded dataset"
        )


def _model_config_folders() -> list[Path]:
    """The folders of the models' JSON configs that open_clip reads: open_clip's own (found
    without importing it, which would import torch), then ours, which override them."""
    open_clip = importlib.util.find_spec("open_clip")
    theirs = [Path(p) / "model_configs" for p in (open_clip.submodule_search_locations or [])] if open_clip else []
    return [*theirs, Path(str(files("cleanclip_core") / "model_configs"))]


def model_image_size(name: str) -> int | None:
    """The side of the images model `name` takes, read from its JSON config without torch;
    None where no config of that name is found (open_clip not installed where the DAG is built)."""
    configs = [folder / f"{name}.json" for folder in _model_config_folders()]
    found = [path for path in configs if path.is_file()]
    if not found:
        return None
    size = json.loads(found[-1].read_text())["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, list) else size


def _check_model(config: dict[str, Any]) -> None:
    """The model is one that open_clip or this project has a config of: else the download, the
    manifest and the poisoning would run before the pretraining finds out."""
    model, folders = config["study"]["model"], _model_config_folders()
    known = sorted({path.stem for folder in folders for path in folder.glob("*.json")})
    if len(folders) > 1 and model not in known:  # open_clip's folder found
        close = difflib.get_close_matches(model, known, n=3) or ["RN50", "ViT-B-32", "tiny-rn", "tiny-vit"]
        raise UserError(f"config: study.model: {model!r} is not a model of open_clip or cleanclip_core/model_configs; e.g. {', '.join(close)}")


def _check_tag(model: str, tag: str) -> None:
    """An open_clip pretrained tag is one open_clip has for the model, with the model's
    activation and normalization; checked with open_clip itself, so only a study that names a
    tag pays for importing it (and torch) at DAG build."""
    from cleanclip_core.models import check_pretrained

    try:
        check_pretrained(model, tag)
    except UserError as error:
        tags = _open_clip_tags(model)
        close = [] if tag in tags else difflib.get_close_matches(tag, tags, n=1)
        raise UserError(f"config: study.start: {error}" + (f"; did you mean {close[0]!r}?" if close else "")) from None


def _open_clip_tags(model: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model))


def _warn_about_resizing(config: dict[str, Any]) -> None:
    """The loaders fit every image to the model's input size each time they read it: images
    stored at another size cost a resize per image in every epoch of every run."""
    model, stored = config["study"]["model"], config["dataset"]["download"]["image_size"]
    needed = model_image_size(model)
    if needed is not None and needed != stored:
        log.warning(
            f"warning: config: dataset.download.image_size is {stored} px but {model} takes {needed} px, so "
            f"every image is resized in every epoch of every run; set dataset.download.image_size to {needed}"
        )


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a validated config's cross-references and that the files it names exist, and warn
    about what would cost needless work; return it."""
    _check_references(config)
    _check_model(config)
    url_list = config["dataset"]["url_list"]
    if url_list is not None and not Path(url_list).is_file():
        raise UserError(
            f"config: dataset.url_list: {url_list} does not exist; point it at a CC3M-format "
            "TSV (caption<TAB>url) or set it to null to generate the embedded corpus"
        )
    classnames = config["evaluation"]["classnames"]
    start = config["study"]["start"]
    named_files = {
        "study.start": start if start_kind(start) == "file" else None,
        "clean.labels": config["clean"]["labels"],
        "evaluation.images": config["evaluation"]["images"],
        "evaluation.classnames": None if classnames == "imagenet" else classnames,
    }
    for location, path in named_files.items():
        if path is not None and not Path(path).exists():
            raise UserError(f"config: {location}: {path} does not exist")
    if named_files["study.start"] and (problem := checkpoint_problem(start)):
        raise UserError(f"config: study.start: {problem}")
    if start_kind(start) == "tag":
        _check_tag(config["study"]["model"], start)
    _check_targets(config)
    _check_cleaning_poisons(config)
    _check_pretraining_curve(config)
    _warn_about_resizing(config)
    return config


def _check_cleaning_poisons(config: dict[str, Any]) -> None:
    """A cleaning set draws its poisons from the attack's poisoned rows: it cannot hold more."""
    most = max(config["study"]["cleaning_poisons"])
    for name in config["study"]["attacks"]:
        n_poisons = config["attacks"][name]["n_poisons"]
        if 0 < n_poisons < most:
            raise UserError(
                f"config: study.cleaning_poisons: a cleaning set of {most} poisons needs at least as many "
                f"poisoned rows, and attack {name!r} has n_poisons {n_poisons}"
            )


def _check_pretraining_curve(config: dict[str, Any]) -> None:
    """The curve's epochs are files named before any job runs: one count for every objective."""
    pretrain = config["pretrain"]
    differing = sorted(name for name, settings in pretrain["per_objective"].items() if "epochs" in settings)
    if pretrain["curve"] and differing:
        raise UserError(
            f"config: pretrain.curve needs every objective pretrained for pretrain.epochs, and "
            f"pretrain.per_objective sets epochs for {', '.join(differing)}"
        )


def _check_targets(config: dict[str, Any]) -> None:
    """Every studied attack's target is one of the evaluation's classes, known before any job:
    else the evaluation would find out after pretraining."""
    classnames = evaluation_classnames(config)
    for name in config["study"]["attacks"]:
        try:
            target_class_index(classnames, config["attacks"][name]["target_label"])
        except UserError as error:
            raise UserError(f"config: attacks.{name}.target_label: {error}") from None


def load_config(path: Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read config {path}: {error}") from None
    return check_config(validate_config(config))

