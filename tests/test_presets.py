"""The paper presets (configs/verma.yaml and its overlays): the facts of design section 13 they
state, their validity with their placeholder paths filled in, the DAGs of their grids run from a
directory holding config.yaml (nothing of which may join them), and the card's command."""

import copy
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cleanclip_core import study
from cleanclip_core.attacks import get_attack
from cleanclip_core.attacks.parts import scaled_size
from cleanclip_core.defenses import get_defense
from cleanclip_core.detectors import MODEL, TEST, TRAINING, detectors_of
from cleanclip_core.config import check_config, validate_config
from cleanclip_core.errors import UserError
from cleanclip_core.models import check_pretrained
from workflow import ROOT, job_counts, run_snakemake

BASE = "verma"
OVERLAYS = ["cc6m", "vit_b32", "contamination", "ssl_weights", "finetune_poisoning", "defenses_cc3m", "robust_cc3m", "detection_cc3m"]
LARGEST = [BASE, "contamination"]  # Verma's full grid with the contamination ablation
DRY_RUN_CPU_LIMIT_S = 15  # the target is 10 s; CPU time still varies with the machine's load


def read_preset(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def merged(config: dict, override: dict) -> dict:
    """`config` with `override` merged in key by key, as Snakemake merges config files."""
    result = copy.deepcopy(config)
    for key, value in override.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def preset(*names: str) -> dict:
    config = {}
    for name in names:
        config = merged(config, read_preset(name))
    return validate_config(config)


def placeholder_paths(root: Path) -> dict:
    """Stand-ins for the files a preset names: a 3-line URL list in CC3M's format and an
    ImageNet-style ImageFolder with 1,000 wnid folders of one (empty) image each. Returns the
    config that points at them."""
    root.mkdir(parents=True, exist_ok=True)
    url_list = root / "urls.tsv"
    url_list.write_text("".join(f"a photo of thing {i}\thttp://example.com/{i}.jpg\n" for i in range(3)))
    images = root / "imagenet" / "val"
    for wnid in (f"n{index:08d}" for index in range(1000)):
        (images / wnid).mkdir(parents=True, exist_ok=True)
        (images / wnid / f"ILSVRC2012_val_{wnid}.JPEG").write_bytes(b"")
    return {"dataset": {"url_list": str(url_list)}, "evaluation": {"images": str(images)}}


def expected_job_counts(config: dict) -> dict[str, int]:
    """The jobs of a preset's full DAG (rule all) from nothing, per rule, from its grid."""
    pretrained, cleaning = study.pretrained_models(config), study.cleaning_runs(config)
    prepared_attacks = [a for a in config["attacks"].values() if get_attack(a["type"]).preparation]
    prepared_methods = [m for m in config["study"]["clean_methods"] if get_defense(m).preparation]
    surrogate = bool(prepared_attacks) and config["study"]["start"] == "scratch"
    preparations = {
        "optimize_trigger": len(prepared_attacks), "unpoisoned_manifest": surrogate, "pretrain_surrogate": surrogate,
        "prepare_cleaning": len(pretrained) * len(prepared_methods), "preparation_summary": bool(prepared_methods),
    }
    counts = {name: int(count) for name, count in preparations.items() if count} | {
        "download": 1, "manifest": 1,
        "poison": len(config["study"]["attacks"]), "trigger_grid": len(config["study"]["attacks"]),
        "cleaning_set": len(cleaning[["attack", "cleaning_poisons"]].drop_duplicates()),
        "pretrain": len(pretrained), "evaluate_pretrained": len(pretrained),
        "clean": len(cleaning), "evaluate_cleaned": len(cleaning),  # one job evaluates all epochs of a run
        "results_database": 1, "figures": 1, "overview": 1, "headline_figure": 1, "all": 1,
    } | detection_job_counts(config)
    return counts | {"total": sum(counts.values())}


def detection_job_counts(config: dict) -> dict[str, int]:
    """The detection jobs of a grid: its detectors of each level on every pretrained model, its
    model-level ones on every cleaned model too."""
    models, cleaned = len(study.pretrained_models(config)), len(study.cleaning_runs(config))
    detectors = config["study"]["detectors"]
    training, test, model = (len(detectors_of(detectors, level)) for level in (TRAINING, TEST, MODEL))
    counts = {"embed_training": models * bool(training), "detect_training": models * training, "detect_test": models * test,
              "detect_model": models * model, "detect_cleaned_model": cleaned * model, "detection_summary": int(bool(detectors))}
    return {name: count for name, count in counts.items() if count}


class Timed:
    """Wall time and CPU time (user + sys of finished child processes) of a block."""

    def __enter__(self):
        self._wall = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._cpu = usage.ru_utime + usage.ru_stime
        return self

    def __exit__(self, *exc):
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s = usage.ru_utime + usage.ru_stime - self._cpu
        self.wall_s = time.perf_counter() - self._wall


def test_the_presets_are_all_here():
    presets = {path.stem for path in (ROOT / "configs").glob("*.yaml")}
    assert presets == {BASE, *OVERLAYS, "smoke", "defenses", "detection", "robust", "robust_control", "papers_ratio", "papers_ratio_x1",
                       "papers_ratio_attacks", "papers_ratio_robust", "papers_ratio_x2", "papers_ratio_x8"}  # overlays on config.yaml, defenses and robust


@pytest.mark.parametrize("rung", [[], ["papers_ratio_x1"], ["papers_ratio_attacks"],
                                  ["papers_ratio_robust"], ["papers_ratio_x2"], ["papers_ratio_x8"]])
def test_the_papers_ratio_preset_and_its_ladder_hold_the_ratios_that_issue_36_bounds(rung):
    """Poisons at most 1% of the pairs, a trigger at most 15% of the model's input side, a
    cleaning set at most 5%, cleaning at 1/100 to 1/3 of pretraining's learning rate for about
    the papers' 8% of its steps; for every attack, on every rung of the ladder and its overlays,
    each rung pretraining the same steps."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    for name in ["papers_ratio", *rung]:
        config = merged(config, read_preset(name))
    config = validate_config(config)
    pairs, side = config["dataset"]["corpus"]["n_train"], config["dataset"]["download"]["image_size"]
    pretrain, clean = config["pretrain"], config["clean"]
    for attack in (config["attacks"][name] for name in config["study"]["attacks"]):
        assert attack["n_poisons"] / pairs <= 0.01
        assert scaled_size(attack["trigger"]["patch_size"], side) / side <= 0.15
    assert clean["n_clean"] / pairs <= 0.05
    assert all(1 / 100 <= lr / pretrain["lr"] <= 1 / 3 for lr in clean["lrs"])
    pretraining_steps = pairs // pretrain["batch_size"] * pretrain["epochs"]
    assert 4400 <= pretraining_steps <= 4600  # every rung the 4x rung's steps: its models converge
    assert 0.06 <= clean["n_clean"] // clean["batch_size"] * clean["epochs"] / pretraining_steps <= 0.10


def test_the_detection_overlay_scores_every_model_of_the_defense_study_with_every_training_set_detector(tmp_path):
    files = [yaml.safe_load((ROOT / name).read_text()) for name in ("config.yaml", "configs/defenses.yaml", "configs/detection.yaml")]
    config = merged(merged(files[0], files[1]), files[2])
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    models = 3 * 2  # attacks x pretraining objectives
    assert (counts["embed_training"], counts["detect_training"], counts["detection_summary"]) == (models, models * 7, 1)


def test_the_robust_overlays_pretrain_every_objective_three_times_and_run_every_detector(tmp_path):
    default, robust, control = (yaml.safe_load((ROOT / name).read_text()) for name in (
        "config.yaml", "configs/robust.yaml", "configs/robust_control.yaml"))
    alone = validate_config(merged(default, robust))
    check_config(alone)
    assert alone["study"]["attacks"] == ["badnet"] and not detectors_of(alone["study"]["detectors"], MODEL)
    config = validate_config(merged(merged(default, robust), control))
    check_config(config)
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    models = 2 * 4 * 3  # attacks x pretraining objectives x seeds
    assert (counts["pretrain"], counts["clean"], counts["filter_pairs"]) == (models, models, 2 * 3)
    assert counts | detection_job_counts(config) == counts  # every level's detectors on every model


def test_the_base_states_verma_et_al_s_study():
    config = preset(BASE)
    assert config["dataset"]["name"] == "cc3m" and config["dataset"]["download"]["image_size"] == 224
    badnet = config["attacks"]["badnet"]
    assert (badnet["type"], badnet["target_label"], badnet["n_poisons"]) == ("badnet", "banana", 1500)
    assert badnet["trigger"] == {"patch_size": 16, "pattern": "random", "location": "random"}
    grid = config["study"]
    assert (grid["model"], grid["start"], grid["attacks"]) == ("RN50", "scratch", ["badnet"])
    assert grid["pretrain_objectives"] == ["mmcl", "mmcl_ssl"] and grid["cleaning_poisons"] == [0]

    mmcl, mmcl_ssl = (study.pretrain_settings(config, objective, seed=0) for objective in ("mmcl", "mmcl_ssl"))
    for settings in (mmcl, mmcl_ssl):
        assert (settings["epochs"], settings["lr"], settings["warmup_steps"], settings["weight_decay"]) == (64, 1e-3, 10_000, 0.1)
    assert (mmcl["batch_size"], mmcl_ssl["batch_size"]) == (2048, 1024)
    assert mmcl_ssl["objective"] == {"mmcl": 1, "inmodal": 1}

    # batch 64 with the SSL term at 5e-5 ... 1e-3; 128 for MMCL only at 1e-4 ... 5e-3
    assert grid["clean_methods"] == ["cleanclip", "mmcl_only"]
    sweeps = {"cleanclip": ([5e-5, 1e-4, 5e-4, 1e-3], 64), "mmcl_only": ([1e-4, 5e-4, 1e-3, 5e-3], 128)}
    for method, (lrs, batch_size) in sweeps.items():
        assert study.method_lrs(config, method) == lrs  # floats, not YAML 1.1 strings like '5e-5'
        settings = study.clean_settings(config, method, lrs[0], seed=0)
        assert (settings["batch_size"], settings["epochs"], settings["warmup_steps"], settings["weight_decay"]) == (batch_size, 20, 50, 0.1)
    assert config["clean"]["n_clean"] == 100_000
    assert config["evaluation"]["classnames"] == "imagenet"


def test_each_overlay_changes_what_it_names():
    assert preset(BASE, "cc6m")["dataset"]["name"] == "cc6m"
    assert preset(BASE, "cc6m")["attacks"]["badnet"]["n_poisons"] == 3000
    assert preset(BASE, "vit_b32")["study"]["model"] == "ViT-B-32"
    assert preset(BASE, "contamination")["study"]["cleaning_poisons"] == [0, 1, 2, 3, 4, 5, 10, 25]
    ssl = preset(BASE, "ssl_weights")
    weights = [ssl["objectives"][method]["inmodal"] for method in ssl["study"]["clean_methods"]]
    assert weights == [1, 2, 4, 6, 8]
    finetune = preset(BASE, "finetune_poisoning")
    assert (finetune["study"]["start"], finetune["study"]["pretrain_objectives"]) == ("openai", ["mmcl"])
    check_pretrained(finetune["study"]["model"], finetune["study"]["start"])  # open_clip has it, with its activation
    settings = study.pretrain_settings(finetune, "mmcl", seed=0)
    assert (settings["epochs"], settings["batch_size"]) == (5, 128) and 1e-6 <= settings["lr"] <= 2e-5
    assert finetune["attacks"]["badnet"]["n_poisons"] == 1500 and finetune["clean"]["epochs"] == 10
    defenses = preset(BASE, "defenses_cc3m")
    assert defenses["study"]["attacks"] == ["badnet", "blended", "badclip"]
    assert defenses["study"]["clean_methods"] == ["cleanclip", "ta_cleaner", "ubt", "par"]
    assert {(a["target_label"], a["n_poisons"]) for a in defenses["attacks"].values()} == {("banana", 1500)}
    par = study.clean_settings(defenses, "par", 3e-5, seed=0)
    assert (par["batch_size"], par["weight_decay"], par["method"]) == (2048, 1e-4, "par")
    robust = preset(BASE, "robust_cc3m")
    roclip, augmented, safeclip = (study.pretrain_settings(robust, name, seed=0) for name in ("roclip", "roclip_aug", "safeclip"))
    assert augmented == roclip | {"method": "roclip_aug"}
    assert (roclip["epochs"], roclip["batch_size"], roclip["lr"], roclip["warmup_steps"]) == (24, 512, 5e-5, 10_000)
    assert roclip["options"] == {"pool_size": 21845, "break_epoch": 2}
    assert (safeclip["epochs"], safeclip["batch_size"], safeclip["lr"], safeclip["weight_decay"]) == (32, 128, 5e-4, 0.1)
    assert safeclip["options"] == {"inmodal_epochs": 5, "clip_epochs": 1, "warmup_lr": 5e-6, "safe_posterior": 0.9, "ratio_step": 0.01, "ratio_cap": 0.85}
    detection = preset(BASE, "detection_cc3m")["detection"]
    assert (detection["batch_size"], detection["reference_pairs"], detection["triggered_share"]) == (512, 200, 0.3)


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_preset_is_valid_with_its_files_present_and_stops_at_once_without(overlay, tmp_path):
    names = [BASE] + ([overlay] if overlay else [])
    config = preset(*names)
    check_config(validate_config(merged(config, placeholder_paths(tmp_path))))
    if not Path(config["dataset"]["url_list"]).exists():
        with pytest.raises(UserError, match=r"dataset\.url_list: .* does not exist"):
            check_config(config)


def run_from_root(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """A Snakemake dry run started in `root`, a stand-in for the repository root (it holds
    config.yaml), through a Snakefile that includes the real one and saves the config the
    workflow ran with."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "config.yaml", root / "config.yaml")
    saved = root / "effective_config.json"
    snakefile = root / "Snakefile.saving_config"
    snakefile.write_text(
        "import json\n"
        f"include: {str(ROOT / 'Snakefile')!r}\n"
        f"with open({str(saved)!r}, 'w') as file:\n"
        "    json.dump(config, file)\n"
    )
    # An included Snakefile's default target does not count: name it, before --configfile.
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--cores", "2", "--dry-run", "all", *args]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    return result, json.loads(saved.read_text()) if saved.exists() else {}


@pytest.mark.parametrize("overlay", [None, *OVERLAYS])
def test_preset_runs_alone_with_its_configfiles_and_plans_its_whole_grid(overlay, tmp_path):
    names = [BASE] + ([overlay] if overlay else [])
    paths = tmp_path / "my_paths.yaml"
    paths.write_text(yaml.safe_dump(placeholder_paths(tmp_path / "data")))
    files = [str(ROOT / "configs" / f"{name}.yaml") for name in names] + [str(paths)]
    with Timed() as timed:
        result, config = run_from_root(tmp_path / "root", "--configfile", *files)
    print(f"\n{'+'.join(names)}: dry run {timed.wall_s:.1f} s wall, {timed.cpu_s:.1f} s CPU")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = validate_config(merged(preset(*names), yaml.safe_load(paths.read_text())))
    assert config == json.loads(json.dumps(expected))  # nothing of config.yaml joined
    assert job_counts(result.stdout) == expected_job_counts(expected)
    assert "shapes" not in result.stdout
    # every cleaning run of the grid, each with all its epochs evaluated
    found = re.findall(r"clean_method=(\w+)/cleaning_poisons=(\d+)/lr=([^/]+)/clean_seed=\d+/clean_settings=\w+/epoch_(\d+)/metrics\.parquet", result.stdout)
    cleaning = study.cleaning_runs(expected)
    assert {(m, int(k), float(lr)) for m, k, lr, _ in found} == set(
        zip(cleaning.clean_method, cleaning.cleaning_poisons, cleaning.lr)
    )
    assert {int(epoch) for *_, epoch in found} == set(range(1, expected["clean"]["epochs"] + 1))
    if names == LARGEST:
        assert timed.cpu_s < DRY_RUN_CPU_LIMIT_S


def test_the_cards_command_plans_the_default_study_from_the_repository_root(tmp_path):
    """`snakemake --profile slurm results/figures/fig2.pdf` from the repository root of a fresh
    clone (no profile of the user's): Snakemake finds the root's `slurm`, a link to profiles/slurm."""
    environment = os.environ | {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    command = [sys.executable, "-m", "snakemake", "--profile", "slurm", "results/figures/fig2.pdf", "--dry-run"]
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Using profile slurm" in result.stderr
    assert "results/figures/fig2.pdf" in result.stdout


def test_make_profiles_lets_snakemake_find_the_profiles_from_anywhere(tmp_path):
    environment = os.environ | {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / ".config")}
    setup = subprocess.run(["make", "profiles"], cwd=ROOT, env=environment, capture_output=True, text=True)
    assert setup.returncode == 0, setup.stderr
    for name in ("local", "slurm"):
        assert (tmp_path / ".config/snakemake" / name).resolve() == (ROOT / "profiles" / name).resolve()
