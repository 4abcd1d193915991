import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cleanclip_core.config import SCHEMA_PATH, check_config, load_config, model_image_size, read_config_file, validate_config
from cleanclip_core.errors import UserError
from cleanclip_core.models import image_size_for
from test_presets import merged
from workflow import TINY_CONFIG, run_snakemake

ROOT = Path(__file__).resolve().parents[1]

# A cleaning set the generated corpus can hold (the schema's default, 100,000 pairs, is CC3M's).
SMALL_CLEANING = {"n_clean": 1000}


def schema_options(schema: dict, path: str = ""):
    """(dotted path, subschema) of every option the schema declares, through $defs too."""
    for name, subschema in schema.get("properties", {}).items():
        yield f"{path}{name}", subschema
        yield from schema_options(subschema, f"{path}{name}.")


def test_every_option_has_a_type_a_description_and_a_default():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    options = list(schema_options(schema))
    for definition in schema["$defs"].values():
        options += list(schema_options(definition))
    assert len(options) > 25
    for path, option in options:
        assert "description" in option, path
        assert "type" in option or "enum" in option, path
        assert "default" in option or path == "type", path


def test_default_and_smoke_configs_are_valid():  # the paper presets: tests/test_presets.py
    load_config(ROOT / "config.yaml")
    load_config(ROOT / "configs/smoke.yaml")


def test_defaults_are_filled_in_and_not_shared_between_attacks():
    config = validate_config({"attacks": {"a": {"type": "badnet"}, "b": {"type": "badnet"}}})
    assert config["attacks"]["a"]["trigger"] == {"patch_size": 16, "pattern": "random", "location": "random"}
    assert config["attacks"]["a"]["trigger"] is not config["attacks"]["b"]["trigger"]
    assert config["dataset"]["download"]["image_size"] == 32


@pytest.mark.parametrize("model", ["tiny-rn", "tiny-vit", "RN50", "RN50-quickgelu", "ViT-B-32"])
def test_the_config_reads_a_models_image_size_without_torch_as_open_clip_gives_it(model):
    assert model_image_size(model) == image_size_for(model)


@pytest.mark.parametrize("model, stored, warned", [("tiny-rn", 16, True), ("tiny-rn", 32, False), ("RN50", 32, True)])
def test_images_stored_at_another_size_than_the_models_are_a_warning(model, stored, warned, caplog):
    config = validate_config({"study": {"model": model}, "dataset": {"download": {"image_size": stored}}, "clean": SMALL_CLEANING})
    with caplog.at_level(logging.WARNING, logger="cleanclip_core.config"):
        check_config(config)
    expected = f"every image is resized in every epoch of every run; set dataset.download.image_size to {model_image_size(model)}"
    assert (expected in caplog.text) == warned
    assert sum("resized" in record.message for record in caplog.records) == warned


def test_a_warmup_longer_than_the_run_is_a_warning(caplog):
    # A small study that replaces config.yaml inherits the schema's 10,000 pretraining warmup steps.
    config = validate_config({"pretrain": {"epochs": 2, "batch_size": 100}, "clean": SMALL_CLEANING | {"epochs": 4}})
    with caplog.at_level(logging.WARNING, logger="cleanclip_core.config"):
        check_config(config)
    warnings = [record.message for record in caplog.records if "warmup" in record.message]
    assert warnings == [
        "warning: config: pretrain.warmup_steps is 10000, more than the 120 steps of the run (6000 pairs, batch 100, "
        "2 epochs), so its learning rate never reaches the peak; set it below the run's steps"
    ]  # once for both pretraining objectives; none for cleaning (50 of its 64 steps)


def test_trigger_defaults_follow_the_attack_type():
    config = validate_config({"attacks": {"w": {"type": "wanet"}, "s": {"type": "sig"}}})
    assert config["attacks"]["w"]["trigger"] == {"k": 4, "s": 0.5}
    assert config["attacks"]["s"]["trigger"]["mode"] == "add"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"attacks": {"x": {"type": "nope"}}}, "attacks.x.type: 'nope' is not one of"),
        ({"attacks": {"x": {"type": "badnet", "n_poisons": "many"}}}, "attacks.x.n_poisons: 'many' is not of type 'integer'"),
        ({"attacks": {"x": {"type": "blended", "trigger": {"k": 3}}}}, "attacks.x.trigger: Additional properties"),
        ({"datset": {}}, "(top level): Additional properties"),
    ],
)
def test_bad_config_is_one_line_naming_the_option(config, message):
    with pytest.raises(UserError) as error:
        validate_config(config)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_integers_written_as_floats_are_integers_and_a_fraction_is_refused():
    config = validate_config({
        "pretrain": {"epochs": 4.0, "batch_size": 8.0},
        "dataset": {"download": {"samples_per_shard": 10.0}},
        "study": {"seeds": [0.0, 1.0]},
        "clean": {"per_method": {"cleanclip": {"batch_size": 16.0}}},
    })
    integers = [config["pretrain"]["epochs"], config["pretrain"]["batch_size"], *config["study"]["seeds"],
                config["dataset"]["download"]["samples_per_shard"], config["clean"]["per_method"]["cleanclip"]["batch_size"]]
    assert integers == [4, 8, 0, 1, 10, 16] and all(type(value) is int for value in integers)
    assert type(config["pretrain"]["lr"]) is float
    with pytest.raises(UserError, match=re.escape("pretrain.epochs: 4.5 is not of type 'integer'")):
        validate_config({"pretrain": {"epochs": 4.5}})


@pytest.mark.parametrize(
    "content, cause",
    [
        (b"", "is empty: an interrupted download or copy?"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 102\n", "is a Git LFS pointer, not the checkpoint: run `git lfs pull`"),
        (b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "is an HTML page, not a checkpoint: a failed download of a web link?"),
        (b"weights of RN50", "is not a torch checkpoint (torch.save's zip archive)"),
    ],
)
def test_a_start_file_that_is_not_a_checkpoint_is_refused_with_its_likely_cause(tmp_path, content, cause):
    (tmp_path / "start.pt").write_bytes(content)
    config = validate_config({"study": {"start": str(tmp_path / "start.pt")}})
    with pytest.raises(UserError, match=re.escape(f"config: study.start: {tmp_path / 'start.pt'} {cause}")):
        check_config(config)


def test_missing_url_list_is_a_user_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"url_list": str(tmp_path / "missing.tsv")}}))
    with pytest.raises(UserError, match="missing.tsv does not exist"):
        load_config(path)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"study": {"attacks": ["badnet", "sig"]}}, "study.attacks: 'sig' is not one of attacks (badnet)"),
        ({"study": {"clean_methods": ["cleanclp"]}}, "study.clean_methods: 'cleanclp' is not one of objectives"),
        ({"study": {"pretrain_objectives": ["supervised"]}}, "'supervised' has a supervised term, which only cleaning supports"),
        ({"study": {"clean_methods": ["supervised"]}, "dataset": {"url_list": "cc3m.tsv"}}, "clean.labels: cleaning method 'supervised' is supervised and needs a labels table"),
        ({"objectives": {"nothing": {"mmcl": 0, "inmodal": 0}}}, "objectives.nothing: every weight is zero, so it trains nothing"),
        ({"study": {"start": "weights/missing.pt"}}, "study.start: weights/missing.pt does not exist"),
        ({"clean": {"per_method": {"mmcl_onlyy": {"lrs": [0.01]}}}}, "clean.per_method: 'mmcl_onlyy' is not one of objectives"),
        ({"pretrain": {"per_objective": {"mmcl-ssl": {"batch_size": 8}}}}, "pretrain.per_objective: 'mmcl-ssl' is not one of objectives"),
        ({"study": {"clean_methods": ["roclip"]}}, "study.clean_methods: 'roclip' is a pretrain method; name it in study.pretrain_objectives"),
        ({"study": {"pretrain_objectives": ["ubt"]}}, "study.pretrain_objectives: 'ubt' is a clean method; name it in study.clean_methods"),
        ({"study": {"pretrain_objectives": ["safeclip"]}, "pretrain": {"epochs": 6}},
         "pretrain.epochs: SafeCLIP's 6 epochs leave none after its 6 warm-up epochs"),
        ({"study": {"model": "tiny-rn-w8"}}, "study.model: 'tiny-rn-w8' is not a model of open_clip or cleanclip_core/model_configs; e.g. tiny-rn-w16"),
    ],
)
def test_names_must_exist_weights_must_train_and_supervised_cleaning_needs_labels(config, message):
    config = validate_config({"attacks": {"badnet": {"type": "badnet"}}} | config)
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(config)


def test_supervised_cleaning_of_the_generated_corpus_uses_its_labels():
    check_config(validate_config({"attacks": {"badnet": {"type": "badnet", "target_label": "star"}}, "study": {"clean_methods": ["supervised"]}, "clean": SMALL_CLEANING}))


def test_a_cleaning_set_cannot_hold_more_poisons_than_the_attack_made():
    attacks = {"badnet": {"type": "badnet", "target_label": "star", "n_poisons": 3}}
    with pytest.raises(UserError, match="a cleaning set of 5 poisons needs at least as many poisoned rows, and attack 'badnet' has n_poisons 3"):
        check_config(validate_config({"attacks": attacks, "study": {"cleaning_poisons": [0, 5]}, "clean": SMALL_CLEANING}))
    attacks["badnet"]["n_poisons"] = 0  # a clean control: its cleaning sets have no poisons
    check_config(validate_config({"attacks": attacks, "study": {"cleaning_poisons": [0, 5]}, "clean": SMALL_CLEANING}))


def test_the_pretraining_curve_needs_one_epoch_count_for_every_objective():
    attacks = {"badnet": {"type": "badnet", "target_label": "star"}}
    pretrain = {"curve": True, "per_objective": {"mmcl_ssl": {"epochs": 3}, "mmcl": {"lr": 0.01}}}
    with pytest.raises(UserError, match="pretrain.curve needs every objective pretrained for pretrain.epochs, and "
                                        "pretrain.per_objective sets epochs for mmcl_ssl"):
        check_config(validate_config({"attacks": attacks, "pretrain": pretrain, "clean": SMALL_CLEANING}))
    check_config(validate_config({"attacks": attacks, "pretrain": pretrain | {"curve": False}, "clean": SMALL_CLEANING}))


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def config_snippets() -> list[str]:
    """The YAML blocks of the README and the docs, each a config overlay; but the plugin's
    study, which tests/test_plugins.py runs beside its plugin."""
    return [
        textwrap.dedent(block) for document in DOCUMENTS
        for block in re.findall(r"```yaml\n(.*?)```", document.read_text(), re.S) if "plugins:" not in block
    ]


@pytest.mark.parametrize("snippet", config_snippets())
def test_every_config_snippet_of_the_readme_and_the_docs_is_valid(snippet):
    config = validate_config(merged(yaml.safe_load((ROOT / "config.yaml").read_text()), yaml.safe_load(snippet)))
    if not config["dataset"]["url_list"]:  # a CC3M example names a file that is not here
        check_config(config)


@pytest.mark.parametrize("model, tag, message", [
    ("ViT-B-32", "opnai", "config: study.start: open_clip has no pretrained weights 'opnai' for ViT-B-32; it has .*; did you mean 'openai'\\?$"),
    ("ViT-B-32", "openai", "config: study.start: the openai weights of ViT-B-32 were trained with QuickGELU; use the model ViT-B-32-quickgelu$"),
])
def test_an_open_clip_tag_is_checked_before_anything_runs(model, tag, message):
    config = validate_config({"study": {"model": model, "start": tag}, "dataset": {"download": {"image_size": 224}}})
    with pytest.raises(UserError, match=message):
        check_config(config)


@pytest.mark.parametrize("written, hint", [
    ("1e-4, 3e-3", "config: clean.lrs.1: '3e-3' is not of type 'number'; YAML reads 3e-3 as text: write 3.0e-3$"),
    ("1.0e-4, '0.5'", "config: clean.lrs.1: '0.5' is not of type 'number'; write 0.5 without quotes$"),
])
def test_a_number_that_yaml_reads_as_text_says_how_to_write_it(written, hint):
    with pytest.raises(UserError, match=hint):
        validate_config(yaml.safe_load(f"clean: {{lrs: [{written}]}}"))


def test_every_problem_of_a_config_is_a_line_of_one_error_with_its_near_miss():
    with pytest.raises(UserError) as error:
        validate_config({"pretrian": {}, "attacks": {"x": {"type": "badnte"}}, "clean": {"lrs": ["3e-3"]},
                         "objectives": {"mine": {"mmcl": 1, "inmodl": 1}}})
    assert str(error.value).splitlines() == [
        "config: (top level): Additional properties are not allowed ('pretrian' was unexpected); did you mean 'pretrain'?",
        "config: attacks.x.type: 'badnte' is not one of ['badclip', 'badnet', 'blended', 'label_consistent', 'sig', 'wanet']; did you mean 'badnet'?",
        "config: clean.lrs.0: '3e-3' is not of type 'number'; YAML reads 3e-3 as text: write 3.0e-3",
        "config: objectives.mine: Additional properties are not allowed ('inmodl' was unexpected); did you mean 'inmodal'?",
    ]


def test_a_cleaning_set_larger_than_the_corpus_is_refused():
    with pytest.raises(UserError, match=re.escape(
        "config: clean.n_clean: 9000 clean pairs are more than the 5400 unpoisoned training pairs of attack 'badnet' "
        "(6000 pairs); set clean.n_clean to at most 5400"
    )):
        check_config(validate_config({"attacks": {"badnet": {"type": "badnet", "n_poisons": 600}}, "clean": {"n_clean": 9000}}))


def test_a_dry_run_prints_every_problem_and_plans_no_job(tmp_path):
    config = TINY_CONFIG | {"study": {"clean_methods": ["cleanclp"], "model": "tiny-rn-w8"}, "clean": {"per_method": {"parr": {}}}}
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode == 1 and "Job stats" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[2].strip() for line in errors] == ["study.clean_methods", "clean.per_method", "study.model"]
    assert "did you mean 'cleanclip'?" in errors[0] and "did you mean 'par'?" in errors[1]


def test_a_folder_as_the_start_is_one_line(tmp_path):
    config = validate_config({"study": {"start": str(tmp_path)}})
    with pytest.raises(UserError, match=re.escape(f"config: study.start: {tmp_path} is a folder; name the checkpoint file in it")):
        check_config(config)


@pytest.mark.parametrize("config, location", [
    ({"study": {"seeds": [0, 2**63]}}, "study.seeds.1: 9223372036854775808"),  # wrapped to -2^63 in the paths
    ({"study": {"seeds": [2**64]}}, "study.seeds.0: 18446744073709551616"),  # a traceback at DAG build
    ({"attacks": {"x": {"type": "badnet", "seed": 2**32}}}, "attacks.x.seed: 4294967296"),
    ({"detection": {"seed": 2**32}}, "detection.seed: 4294967296"),
    ({"dataset": {"corpus": {"seed": 2**40}}}, "dataset.corpus.seed: 1099511627776"),
])
def test_a_seed_is_below_2_to_the_32(config, location):
    with pytest.raises(UserError) as error:
        validate_config(config)
    assert str(error.value) == f"config: {location} is not a seed: a seed is at least 0 and below 2^32 (4294967296)"
    assert validate_config({"study": {"seeds": [2**32 - 1]}})["study"]["seeds"] == [4294967295]


@pytest.mark.parametrize("config, location, name", [
    ({"study": {"name": ".."}}, "study.name", ".."),
    ({"dataset": {"name": "."}}, "dataset.name", "."),
    ({"attacks": {"..": {"type": "badnet"}}}, "attacks", ".."),
    ({"objectives": {"..": {"mmcl": 1}}}, "objectives", ".."),
    ({"study": {"name": "../elsewhere"}}, "study.name", "../elsewhere"),
])
def test_a_name_that_would_leave_the_results_folder_is_refused(config, location, name):
    with pytest.raises(UserError) as error:
        validate_config(config)
    assert str(error.value) == (f"config: {location}: {name!r} is not a name for a folder of results/: use letters, "
                                "digits, _, . and -, and not . or .. alone")
    validate_config({"study": {"name": "v1.2"}, "dataset": {"name": "..shapes"}})


def test_a_key_given_twice_in_a_config_file_is_refused_with_its_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("study:\n  name: mine\n  seeds: [0, 1]\n  seeds: [2]\nclean: {lrs: [0.001]}\n")
    with pytest.raises(UserError) as error:
        load_config(path)
    assert str(error.value) == (f"config: {path}, line 4: 'seeds' is given twice in one section (first on line 3), and the "
                                "second would replace the first: merge them")
    path.write_text("clean:\n  per_method:\n    mmcl_only: &fast {batch_size: 20, epochs: 2}\n    cleanclip: {<<: *fast, epochs: 3}\n")
    assert read_config_file(path)["clean"]["per_method"]["cleanclip"] == {"batch_size": 20, "epochs": 3}  # a merged key may be overridden


def test_a_dry_run_refuses_a_section_written_twice_in_a_config_file(tmp_path):
    overlay = tmp_path / "study.yaml"
    overlay.write_text("study:\n  name: first\nclean: {lrs: [0.001]}\nstudy:\n  name: second\n")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--directory", str(tmp_path),
         "--configfile", str(ROOT / "config.yaml"), str(overlay)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 1 and "Job stats" not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: config: {overlay}, line 4: 'study' is given twice in one section (first on line 1), and the second "
        "would replace the first: merge them"
    )


def robust(pretrain: dict | None = None, **defenses) -> dict:
    """The default's study (6,000 pairs) pretrained for 14 epochs, with RoCLIP too."""
    return {"attacks": {"badnet": {"type": "badnet", "target_label": "star"}}, "clean": SMALL_CLEANING,
            "study": {"pretrain_objectives": ["mmcl", "roclip", "roclip_aug"]},
            "pretrain": {"epochs": 14, "warmup_steps": 100} | (pretrain or {}), "defenses": defenses}


@pytest.mark.parametrize("config, message", [
    (robust(roclip_aug={"pool_size": 1024}),  # roclip keeps its code's 21,845
     "config: defenses.roclip.pool_size: a pool of 21845 captions is more than the 6000 training pairs of an epoch, so "
     "images are matched to the random vectors it starts with; set it to at most 6000"),
    (robust(roclip={"pool_size": 1024}, roclip_aug={"pool_size": 1024, "break_epoch": 15}),
     "config: defenses.roclip_aug.break_epoch: 15 is beyond the 14 epochs of pretraining, so RoCLIP never matches a "
     "caption and trains plain MMCL; set it to at most 14"),
    (robust({"per_objective": {"roclip": {"epochs": 1}}}, roclip={"pool_size": 1024}, roclip_aug={"pool_size": 1024}),
     "config: defenses.roclip.break_epoch: 2 is beyond the 1 epochs of pretraining"),
])
def test_roclips_pool_and_break_epoch_are_checked_against_the_data_and_the_run(config, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(validate_config(config))


def test_roclip_within_the_data_and_the_run_passes(tmp_path):
    check_config(validate_config(robust(roclip={"pool_size": 6000, "break_epoch": 14}, roclip_aug={"pool_size": 1024})))
    (tmp_path / "cc3m.tsv").write_text("caption\turl\n")  # a downloaded dataset's size is not known before the download
    url_list = {"dataset": {"url_list": str(tmp_path / "cc3m.tsv")}}
    check_config(validate_config(robust(roclip={"pool_size": 10**6}, roclip_aug={"pool_size": 10**6}) | url_list))


@pytest.mark.parametrize("detection, study, message", [
    ({"reference_pairs": 5400}, {"detectors": ["dao", "strip"]},
     "config: detection.reference_pairs: 5400 reference pairs leave none of the 5400 unpoisoned training pairs of "
     "attack 'badnet' to evaluate the detectors on; set it below 5400"),
    ({"reference_pairs": 6000}, {"pretrain_objectives": ["mmcl", "filtered"]},  # the filter's detector has one too
     "config: detection.reference_pairs: 6000 reference pairs leave none of the 5400 unpoisoned training pairs"),
    ({"reference_images": 1000}, {"detectors": ["dao", "strip"]},
     "config: detection.reference_images: 1000 reference images leave none of the 1000 evaluation images to evaluate "
     "the detectors on; set it below 1000"),
])
def test_a_reference_set_as_large_as_the_generated_data_is_refused(detection, study, message):
    attacks = {"badnet": {"type": "badnet", "target_label": "star", "n_poisons": 600}}
    config = {"attacks": attacks, "clean": SMALL_CLEANING, "detection": detection, "study": study}
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(validate_config(config))
    check_config(validate_config(config | {"study": {"detectors": ["decree"]}}))  # a model-level detector has none


def test_a_dry_run_gives_every_problem_of_the_start_and_roclip_in_one_line_each(tmp_path):
    config = TINY_CONFIG | {"study": {"start": str(tmp_path), "pretrain_objectives": ["roclip"]}, "pretrain": {"epochs": 1}}
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode == 1 and "Job stats" not in result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: config: defenses.roclip.pool_size: a pool of 21845 captions is more than the 60 training pairs of an "
        "epoch, so images are matched to the random vectors it starts with; set it to at most 60",
        "error: config: defenses.roclip.break_epoch: 2 is beyond the 1 epochs of pretraining, so RoCLIP never matches "
        "a caption and trains plain MMCL; set it to at most 1",
        f"error: config: study.start: {tmp_path} is a folder; name the checkpoint file in it",
    ]
