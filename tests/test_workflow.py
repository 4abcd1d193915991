"""The Snakemake workflow: its DAG, its lint, and its answers to bad input, on real runs."""

import copy
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from test_presets import merged
from workflow import ROOT, TINY_CONFIG, attack_folder, job_counts, run_snakemake


def test_dry_run_of_the_default_config_prints_the_dag(tmp_path):
    default_config = yaml.safe_load((ROOT / "config.yaml").read_text())
    result = run_snakemake(tmp_path, default_config, "--dry-run")
    assert result.returncode == 0, result.stderr
    seeds = len(default_config["study"]["seeds"])
    runs = len(default_config["study"]["pretrain_objectives"]) * len(default_config["clean"]["lrs"]) * seeds
    expected = {
        # only the studied attack is poisoned and pictured, of the five the default configures
        "generate_corpus": 1, "download": 1, "manifest": 1, "poison": 1, "trigger_grid": 1,
        "pretrain": 2, "cleaning_set": seeds, "clean": runs, "evaluate_cleaned": runs,
        "results_database": 1, "figures": 1, "overview": 1, "headline_figure": 1, "all": 1,
        # the curve's job per pretrained model scores every pretraining epoch and the model itself
        "evaluate_pretraining_curve": 2, "pretraining_curve": 1,
    }
    assert job_counts(result.stdout) == expected | {"total": sum(expected.values())}
    assert "warning" not in result.stderr  # the default stores images at tiny-rn-w16's 32 px

    # Every GPU stage takes one `gpu`, which --resources gpu=N caps (each leases its own device).
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.M)
    gpu_stages = {"pretrain", "clean", "evaluate_pretraining_curve", "evaluate_cleaned"}
    assert {rule for rule, resources in jobs if "gpu=1" in resources.split(", ")} == gpu_stages


def test_images_stored_at_another_size_than_the_models_are_a_warning_at_dag_build(tmp_path):
    config = copy.deepcopy(TINY_CONFIG) | {"study": {"model": "tiny-rn"}}  # tiny-rn takes 32 px, the shards 16
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:") and "image_size" in line]
    assert warnings == [
        "warning: config: dataset.download.image_size is 16 px but tiny-rn takes 32 px, so every image is "
        "resized in every epoch of every run; set dataset.download.image_size to 32"
    ]


def test_lint_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "change, message",
    [
        ({"attacks": {"x": {"type": "trojan"}}}, "error: config: attacks.x.type: 'trojan' is not one of"),
        ({"attacks": {"x": {"type": "badnet", "n_poisons": "ten"}}}, "error: config: attacks.x.n_poisons: 'ten' is not of type 'integer'"),
        ({"dataset": {"url_list": "/no/such/urls.tsv"}}, "error: config: dataset.url_list: /no/such/urls.tsv does not exist"),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, change, message):
    config = copy.deepcopy(TINY_CONFIG) | change
    result = run_snakemake(tmp_path, config)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip().splitlines()[0]]
    assert result.stderr.strip().startswith(message)
    assert not (tmp_path / "results").exists()


TINY_TARGET = f"{attack_folder(TINY_CONFIG, 'badnet')}/poisoned_manifest.parquet"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny config run to its poisoned manifest; returns the working directory."""
    workdir = tmp_path_factory.mktemp("tiny")
    result = run_snakemake(workdir, TINY_CONFIG, TINY_TARGET)
    assert result.returncode == 0, result.stderr
    return workdir


def test_same_config_gives_byte_identical_manifests(tiny_run):
    # file:// URLs hold the absolute path, so the rerun uses the same working directory
    outputs = [tiny_run / "results/tiny/manifest.parquet", tiny_run / TINY_TARGET]
    first = [path.read_bytes() for path in outputs]
    shutil.rmtree(tiny_run / "results")
    result = run_snakemake(tiny_run, TINY_CONFIG, TINY_TARGET)
    assert result.returncode == 0, result.stderr
    assert [path.read_bytes() for path in outputs] == first


def test_impossible_poisoning_fails_with_one_line_each_and_no_output(tiny_run):
    config = copy.deepcopy(TINY_CONFIG)
    config["attacks"] = {
        "too_many": {"type": "badnet", "target_label": "star", "n_poisons": 1000},
        "no_target": {"type": "label_consistent", "target_label": "banana", "n_poisons": 1},
    }
    config["study"] = {"attacks": ["too_many"]}
    targets = [f"{attack_folder(config, name)}/poisoned_manifest.parquet" for name in config["attacks"]]
    result = run_snakemake(tiny_run, config, "--keep-going", *targets)
    assert result.returncode != 0
    assert "error: too_many: n_poisons=1000 exceeds the 60 rows the attack may poison" in result.stderr
    assert "error: attack 'label_consistent' poisons only captions that name the target, and no caption contains 'banana'" in result.stderr
    assert "Traceback" not in result.stderr
    for target in targets:
        assert not (tiny_run / target).exists()


def test_the_readmes_first_study_plans_its_grid_in_a_results_folder_of_its_own(tmp_path):
    overlay = re.search(r"## Your first study.*?```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    (tmp_path / "my_study.yaml").write_text(overlay)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "-n", "--configfile", "config.yaml",
         str(tmp_path / "my_study.yaml"), "--directory", str(tmp_path / "my_results")],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert job_counts(result.stdout)["clean"] == 2 * 2 * 5  # attacks x methods x seeds
    assert "results/studies/my_study/tables/summary_intervals.csv" in result.stdout
    assert not (ROOT / "my_study").exists()


def test_the_slurm_profile_sizes_every_stage_that_takes_a_gpu(tmp_path):
    """Else a stage gets the launch layer's defaults on the cluster: no GPU, 24 hours."""
    config = merged(yaml.safe_load((ROOT / "config.yaml").read_text()), yaml.safe_load((ROOT / "configs/defenses.yaml").read_text()))
    config["pretrain"]["curve"] = True  # its evaluation stage too
    config["study"]["detectors"] = ["dao", "strip", "decree"]  # and the detectors' stages that need the model
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", result.stdout, re.M)
    gpu_stages = {rule for rule, resources in jobs if "gpu=1" in resources.split(", ")}
    assert {"pretrain_surrogate", "optimize_trigger", "prepare_cleaning", "evaluate_pretraining_curve", "embed_training", "detect_test",
            "detect_model", "detect_cleaned_model"} <= gpu_stages
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert gpu_stages <= set(profile["set-resources"]) and gpu_stages <= set(profile["set-threads"])
    assert all(profile["set-resources"][stage]["gpus_per_node"] >= 1 for stage in gpu_stages)
