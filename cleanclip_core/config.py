"""The experiment config: validated against its JSON schema, which also supplies every default."""

import copy
import difflib
import importlib.util
import json
import logging
from collections.abc import Iterable, Iterator
from itertools import chain
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cleanclip_core.attacks import ATTACKS
from cleanclip_core.classes import evaluation_classnames, target_class_index
from cleanclip_core.defenses import CLEAN, CLEAN_SET, DEFENSES, PRETRAIN, defense_options, get_defense, method_problems
from cleanclip_core.detectors import (
    DETECTORS, TEST, TRAINING, detectors_of, reference_images_problem, reference_pairs_problem,
)
from cleanclip_core.errors import UserError, did_you_mean
from cleanclip_core.files import checkpoint_problem
from cleanclip_core.registry import use_plugins
from cleanclip_core.study import filtering_options, start_kind, used_detectors
from cleanclip_core.terms import TERMS

SCHEMA_PATH = Path(str(files("cleanclip_core") / "config.schema.yaml"))
# A name in output paths: a folder of results/, never `.` or `..` (which would leave it).
NAME_PATTERN = "^(?!\\.{1,2}$)[A-Za-z0-9_.-]+$"
LARGEST_SEED = 2**32 - 1

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


def config_schema() -> dict[str, Any]:
    """config.schema.yaml completed from the registries (built-in entries and plugins'): the
    attack types and their trigger parameters, the loss terms, the cleaning methods' options,
    the detectors and their options."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    attack = schema["$defs"]["attack"]
    attack["properties"]["type"]["enum"] = sorted(ATTACKS)
    attack["allOf"] = [
        {"if": {"properties": {"type": {"const": name}}}, "then": {"properties": {"trigger": entry.trigger_schema}}}
        for name, entry in ATTACKS.items() if entry.trigger_schema is not None
    ]
    schema["properties"]["objectives"]["additionalProperties"]["properties"] = {
        name: {"type": "number", "minimum": 0, "description": term.description} for name, term in TERMS.items()
    }
    schema["properties"]["defenses"]["properties"] = {
        name: {"default": {}, **defense.options} for name, defense in DEFENSES.items() if defense.options is not None
    }
    schema["properties"]["study"]["properties"]["detectors"]["items"]["enum"] = sorted(DETECTORS)
    schema["properties"]["detection"]["properties"]["options"]["properties"] = {
        name: detector.options for name, detector in DETECTORS.items() if detector.options is not None
    }
    return schema


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Load the config's plugins, check `config` against the schema and fill in its defaults, in
    place; return it. Every problem is a line of the one error."""
    plugins = config.get("plugins", [])
    if not (isinstance(plugins, list) and all(isinstance(name, str) for name in plugins)):
        raise UserError(f"config: plugins: {plugins!r} is not a list of module names")
    use_plugins(plugins)
    schema = config_schema()
    if isinstance(config.get("objectives"), dict):  # a config adds objectives to the built-in ones
        config["objectives"] = copy.deepcopy(schema["properties"]["objectives"]["default"]) | config["objectives"]
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    _raise_all(sorted(_problem(jsonschema.exceptions.best_match([error])) for error in validator.iter_errors(config)))
    return config


def _problem(error: jsonschema.ValidationError) -> str:
    return f"config: {_location(error)}: {_message(error)}{_did_you_mean(error)}{_yaml_number_hint(error.instance)}"


def _message(error: jsonschema.ValidationError) -> str:
    """The validator's message, in words where its own would quote a regular expression or a bare number."""
    if error.validator == "pattern" and error.validator_value == NAME_PATTERN:
        return (f"{error.instance!r} is not a name for a folder of results/: use letters, digits, _, . and -, "
                "and not . or .. alone")
    if error.validator == "maximum" and error.validator_value == LARGEST_SEED:
        return f"{error.instance} is not a seed: a seed is at least 0 and below 2^32 ({LARGEST_SEED + 1})"
    return error.message


def _did_you_mean(error: jsonschema.ValidationError) -> str:
    """The near miss of a misspelt key or name: the schema's allowed keys or values."""
    if error.validator == "enum":
        return did_you_mean([str(error.instance)], map(str, error.validator_value))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        keys = error.schema.get("properties", {})
        return did_you_mean([key for key in error.instance if key not in keys], keys)
    return ""


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


def _reference_problems(config: dict[str, Any]) -> Iterator[str]:
    """Names in the study that must be keys of another section, weights that train something,
    and the labels the supervised objective needs."""
    for name, weights in config["objectives"].items():
        if not any(weights.values()):
            yield f"config: objectives.{name}: every weight is zero, so it trains nothing; give one term a weight above 0"
    study = config["study"]
    named = [
        ("study.attacks", study["attacks"], "attacks"),
        ("study.pretrain_objectives", study["pretrain_objectives"], "objectives"),
        ("study.clean_methods", study["clean_methods"], "objectives"),
        ("pretrain.per_objective", list(config["pretrain"]["per_objective"]), "objectives"),
        ("clean.per_method", list(config["clean"]["per_method"]), "objectives"),
    ]
    for location, names, section in named:
        for name in names:
            if name not in config[section]:
                known = ", ".join(config[section])
                yield f"config: {location}: {name!r} is not one of {section} ({known}){did_you_mean([name], config[section])}"
    for name in study["pretrain_objectives"]:
        if config["objectives"].get(name, {}).get("supervised"):
            yield f"config: study.pretrain_objectives: {name!r} has a supervised term, which only cleaning supports"
    yield from _stage_problems(config)
    detection = config["detection"]
    for name in study["detectors"]:
        k = detection["options"].get(name, {}).get("k", 0)
        if k > detection["batch_size"] // 2 - 2:
            yield (
                f"config: detection.options.{name}.k: {k} neighbours need a detection.batch_size of at least "
                f"{2 * k + 4} (it is {detection['batch_size']}); raise it or lower k"
            )
    supervised_methods = [name for name in study["clean_methods"] if config["objectives"].get(name, {}).get("supervised")]
    if supervised_methods and config["dataset"]["url_list"] and not config["clean"]["labels"]:
        yield (
            f"config: clean.labels: cleaning method {supervised_methods[0]!r} is supervised and needs a "
            "labels table (url, classname) for the downloaded dataset"
        )


def _stage_problems(config: dict[str, Any]) -> Iterator[str]:
    """Methods named on the other training stage's axis, a filter's options, and each method's own
    check of its options against its run (Defense.check)."""
    study = config["study"]
    for location, names, stage in (
        ("study.pretrain_objectives", study["pretrain_objectives"], CLEAN),
        ("study.clean_methods", study["clean_methods"], PRETRAIN),
    ):
        for name in names:
            if name in DEFENSES and DEFENSES[name].stage == stage:
                other = "study.clean_methods" if stage == CLEAN else "study.pretrain_objectives"
                yield f"config: {location}: {name!r} is a {stage} method; name it in {other}"
    for name in study["pretrain_objectives"]:
        filtering = filtering_options(config, name)
        if filtering is not None:
            yield from _filter_problems(config, name, filtering)
    for stage, per, name, pairs in _training_runs(config):
        if get_defense(name).stage == stage:  # one named on the other axis is refused above
            settings = config[stage] | config[stage][per].get(name, {})
            yield from method_problems(name, defense_options(config, name), settings, pairs)


def _filter_problems(config: dict[str, Any], method: str, options: dict[str, Any]) -> Iterator[str]:
    """A filtered pretraining's base model must be one of the study's, its detector one of the
    training pairs."""
    others = [name for name in config["study"]["pretrain_objectives"] if name != method]
    if options["base"] not in others:
        yield (f"config: defenses.{method}.base: {options['base']!r} is not one of the study's other pretraining "
               f"objectives ({', '.join(others) or 'none'}); the filter scores that model's training pairs")
    training = detectors_of(list(DETECTORS), TRAINING)
    if options["detector"] not in training:
        yield f"config: defenses.{method}.detector: {options['detector']!r} is not a training-set detector ({', '.join(training)})"


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


def _model_problems(config: dict[str, Any]) -> Iterator[str]:
    """The model is one that open_clip or this project has a config of, and an open_clip tag
    one open_clip has for it: else the download, the manifest and the poisoning would run before
    the pretraining finds out."""
    model, folders = config["study"]["model"], _model_config_folders()
    known = sorted({path.stem for folder in folders for path in folder.glob("*.json")})
    if len(folders) > 1 and model not in known:  # open_clip's folder found
        close = difflib.get_close_matches(model, known, n=3) or ["RN50", "ViT-B-32", "tiny-rn", "tiny-vit"]
        yield f"config: study.model: {model!r} is not a model of open_clip or cleanclip_core/model_configs; e.g. {', '.join(close)}"
    elif start_kind(config["study"]["start"]) == "tag":
        yield from _tag_problems(model, config["study"]["start"])


def _tag_problems(model: str, tag: str) -> Iterator[str]:
    """Checked with open_clip itself (activation and normalization too), so only a study that
    names a tag pays for importing it (and torch) at DAG build."""
    from cleanclip_core.models import check_pretrained

    try:
        check_pretrained(model, tag)
    except UserError as error:
        tags = _open_clip_tags(model)
        yield f"config: study.start: {error}" + ("" if tag in tags else did_you_mean([tag], tags))


def _open_clip_tags(model: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model))


def _file_problems(config: dict[str, Any]) -> Iterator[str]:
    """The files the config names exist, and a start file is a checkpoint."""
    url_list = config["dataset"]["url_list"]
    if url_list is not None and not Path(url_list).is_file():
        yield (
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
            yield f"config: {location}: {path} does not exist"
        elif location == "study.start" and path is not None and Path(path).is_dir():
            yield f"config: study.start: {path} is a folder; name the checkpoint file in it"
        elif location == "study.start" and path is not None and (problem := checkpoint_problem(path)):
            yield f"config: study.start: {problem}"


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


def _raise_all(problems: Iterable[str]) -> None:
    """One error of every problem, a line each."""
    lines = list(dict.fromkeys(problems))
    if lines:
        raise UserError("\n".join(lines))


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Check a validated config's cross-references, the model and the files it names, then what
    depends on them, every problem a line of one error; warn about what would cost needless
    work; return it."""
    _raise_all(chain(_reference_problems(config), _model_problems(config), _file_problems(config)))
    _raise_all(chain(
        _target_problems(config), _cleaning_poisons_problems(config), _pretraining_curve_problems(config),
        _cleaning_set_problems(config), _reference_set_problems(config),
    ))
    _warn_about_resizing(config)
    _warn_about_warmup(config)
    return config


def _cleaning_poisons_problems(config: dict[str, Any]) -> Iterator[str]:
    """A cleaning set draws its poisons from the attack's poisoned rows: it cannot hold more."""
    most = max(config["study"]["cleaning_poisons"])
    for name in config["study"]["attacks"]:
        n_poisons = config["attacks"][name]["n_poisons"]
        if 0 < n_poisons < most:
            yield (
                f"config: study.cleaning_poisons: a cleaning set of {most} poisons needs at least as many "
                f"poisoned rows, and attack {name!r} has n_poisons {n_poisons}"
            )


def _pretraining_curve_problems(config: dict[str, Any]) -> Iterator[str]:
    """The curve's epochs are files named before any job runs: one count for every objective."""
    pretrain = config["pretrain"]
    differing = sorted(name for name, settings in pretrain["per_objective"].items() if "epochs" in settings)
    if pretrain["curve"] and differing:
        yield (
            f"config: pretrain.curve needs every objective pretrained for pretrain.epochs, and "
            f"pretrain.per_objective sets epochs for {', '.join(differing)}"
        )


def _target_problems(config: dict[str, Any]) -> Iterator[str]:
    """Every studied attack's target is one of the evaluation's classes, known before any job:
    else the evaluation would find out after pretraining."""
    classnames = evaluation_classnames(config)
    for name in config["study"]["attacks"]:
        try:
            target_class_index(classnames, config["attacks"][name]["target_label"])
        except UserError as error:
            yield f"config: attacks.{name}.target_label: {error}"


def corpus_rows(config: dict[str, Any]) -> int | None:
    """The generated corpus's training pairs; None for a URL list, whose pairs are known only
    once downloaded (the cleaning-set stage checks n_clean then)."""
    return None if config["dataset"]["url_list"] else config["dataset"]["corpus"]["n_train"]


def _cleaning_set_problems(config: dict[str, Any]) -> Iterator[str]:
    """A cleaning set of n_clean clean pairs needs that many unpoisoned pairs of the corpus."""
    if not any(get_defense(method).data == CLEAN_SET for method in config["study"]["clean_methods"]):
        return
    n_clean, rows = config["clean"]["n_clean"], corpus_rows(config)
    if rows is None:
        return
    for name in config["study"]["attacks"]:
        clean_rows = rows - config["attacks"][name]["n_poisons"]
        if 0 <= clean_rows < n_clean:  # more poisons than rows: the poisoning says so
            yield (
                f"config: clean.n_clean: {n_clean} clean pairs are more than the {clean_rows} unpoisoned "
                f"training pairs of attack {name!r} ({rows} pairs); set clean.n_clean to at most {clean_rows}"
            )


def _reference_set_problems(config: dict[str, Any]) -> Iterator[str]:
    """A detector's reference set (the clean items its threshold is set on, left out of its
    evaluation) leaves clean items to evaluate: the generated corpus's unpoisoned training pairs,
    the generated evaluation images. Else the detection stages say so, once they know the data."""
    detection, study, rows = config["detection"], config["study"], corpus_rows(config)
    if detectors_of(used_detectors(config), TRAINING) and rows is not None:  # a filter's detector too
        for name in study["attacks"]:
            clean_rows = rows - config["attacks"][name]["n_poisons"]
            if 0 <= clean_rows <= detection["reference_pairs"]:  # more poisons than rows: the poisoning says so
                yield reference_pairs_problem(detection["reference_pairs"], clean_rows, f" of attack {name!r}")
    if detectors_of(study["detectors"], TEST) and config["evaluation"]["images"] is None:
        n_eval = config["dataset"]["corpus"]["n_eval"]
        if n_eval <= detection["reference_images"]:
            yield reference_images_problem(detection["reference_images"], n_eval)


def _warn_about_warmup(config: dict[str, Any]) -> None:
    """A run whose warmup is longer than the run never reaches its learning rate: a config that
    replaces config.yaml inherits the schema's paper-scale warmups (10,000 pretraining steps).
    Known before the download for the generated corpus only."""
    warnings = []
    for location, settings, pairs in _runs_settings(config):
        steps = -(-pairs // settings["batch_size"]) * settings["epochs"]
        if settings["warmup_steps"] > steps:
            warnings.append(
                f"warning: config: {location}.warmup_steps is {settings['warmup_steps']}, more than the {steps} steps "
                f"of the run ({pairs} pairs, batch {settings['batch_size']}, {settings['epochs']} epochs), so its "
                "learning rate never reaches the peak; set it below the run's steps"
            )
    for warning in dict.fromkeys(warnings):
        log.warning(warning)


def _training_runs(config: dict[str, Any]) -> list[tuple[str, str, str, int | None]]:
    """(stage, its per-method section, method, training pairs an epoch where the config tells) of
    each pretraining objective and cleaning method of the study: the corpus's pairs, or the
    cleaning set's."""
    rows = corpus_rows(config)
    cleaning_pairs = None if rows is None else min(config["clean"]["n_clean"], rows) + max(config["study"]["cleaning_poisons"])
    runs = [("pretrain", "per_objective", name, rows) for name in config["study"]["pretrain_objectives"]]
    return runs + [
        ("clean", "per_method", name, cleaning_pairs if get_defense(name).data == CLEAN_SET else rows)
        for name in config["study"]["clean_methods"]
    ]


def _runs_settings(config: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(config location of its warmup, training settings, pairs an epoch) of each pretraining
    objective and cleaning method of the study that trains on the corpus or the cleaning set,
    for the generated corpus."""
    for section, per, name, pairs in _training_runs(config):
        if pairs is None or (section == "clean" and get_defense(name).data != CLEAN_SET):
            continue
        own = config[section][per].get(name, {})
        location = f"{section}.{per}.{name}" if "warmup_steps" in own else section
        yield location, config[section] | own, pairs


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping of a YAML file."""


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error: PyYAML (and
    Snakemake's --configfile) keep the second silently, so a section written twice loses the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in first_lines
            except TypeError:  # an unhashable key: the safe loader says so
                continue
            if repeated:
                raise DuplicateKeyError(problem=(
                    f"{key!r} is given twice in one section (first on line {first_lines[key]}), and the second would "
                    "replace the first: merge them"
                ), problem_mark=key_node.start_mark)
            first_lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _duplicate_key_problem(path: Path, error: DuplicateKeyError) -> str:
    return f"config: {path}, line {error.problem_mark.line + 1}: {error.problem}"


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (or JSON) config file's content; a key given twice in one section is an error."""
    try:
        return yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader) or {}
    except DuplicateKeyError as error:
        raise UserError(_duplicate_key_problem(path, error)) from None
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read config {path}: {error}") from None


def check_config_files(paths: Iterable[Path]) -> None:
    """The config files Snakemake has read (it keeps the second of a key given twice) have no
    key given twice in one section: one error, a line each."""
    problems = []
    for path in paths:
        try:
            yaml.load(Path(path).read_text(), Loader=UniqueKeyLoader)
        except DuplicateKeyError as error:
            problems.append(_duplicate_key_problem(path, error))
        except (OSError, yaml.YAMLError):
            pass  # what Snakemake could not read, it has said
    _raise_all(problems)


def load_config(path: Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    return check_config(validate_config(read_config_file(path)))

