"""The paper presets (configs/cc*_*.yaml): the facts they reproduce, their validity with their
placeholder paths filled in, the DAG of their full grid, and the command their headers give."""

import copy
import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cleanclip_core.config import check_config, validate_config
from cleanclip_core.errors import UserError
from workflow import ROOT, job_counts, run_snakemake

# preset: (dataset name, open_clip model, BadNet poisons), from design.md §4-5.
PAPER_PRESETS = {
    "cc3m_rn50": ("cc3m", "RN50", 1500),
    "cc3m_vit_b32": ("cc3m", "ViT-B-32", 1500),
    "cc6m_rn50": ("cc6m", "RN50", 3000),
    "cc6m_vit_b32": ("cc6m", "ViT-B-32", 3000),
}
MAIN_PRESET = "cc3m_rn50"
DRY_RUN_CPU_LIMIT_S = 15


def read_preset(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def placeholder_paths(root: Path) -> dict:
    """Stand-ins for the files a preset names: a 3-line URL list in CC3M's format and an
    ImageNet-style ImageFolder with two wnid folders. Returns the config that points at them."""
    root.mkdir(parents=True, exist_ok=True)
    url_list = root / "Train_GCC-training.tsv"
    url_list.write_text("".join(f"a photo of thing {i}\thttp://example.com/{i}.jpg\n" for i in range(3)))
    images = root / "imagenet" / "val"
    for wnid in ("n01440764", "n01443537"):
        (images / wnid).mkdir(parents=True, exist_ok=True)
        (images / wnid / f"ILSVRC2012_val_{wnid}.JPEG").write_bytes(b"")
    return {"dataset": {"url_list": str(url_list)}, "evaluation": {"images": str(images)}}


def merged(config: dict, override: dict) -> dict:
    """`config` with `override` merged in key by key, as Snakemake merges config files."""
    result = copy.deepcopy(config)
    for key, value in override.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


def lr_label(lr: float) -> str:
    return f"{lr:g}"  # as rules/common.smk writes a learning rate in paths


def expected_job_counts(config: dict) -> dict[str, int]:
    """The jobs of a preset's full DAG (rule all) from nothing, per rule (see rules/*.smk)."""
    objectives = len(config["pretrain"]["objectives"])
    runs = objectives * len(config["clean"]["methods"]) * len(config["clean"]["lrs"])
    attacks = len(config["attacks"])
    counts = {
        "download": 1, "manifest": 1,
        "poison": attacks, "trigger_grid": attacks,      # every attack is poisoned and pictured
        "cleaning_set": 1,                               # of the study's attack only
        "pretrain": objectives, "evaluate_pretrained": objectives,
        "clean": runs, "evaluate_cleaned": runs,         # one job evaluates all epochs of a run
        "results_database": 1, "figures": 1, "all": 1,
    }
    if config["dataset"]["url_list"] is None:
        counts["generate_corpus"] = 1
    return counts | {"total": sum(counts.values())}


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


def test_the_paper_presets_are_all_here():
    presets = {path.stem for path in (ROOT / "configs").glob("*.yaml")} - {"smoke"}
    assert presets == set(PAPER_PRESETS)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_preset_states_the_papers_settings(name):
    dataset, model, n_poisons = PAPER_PRESETS[name]
    preset = read_preset(name)
    schema_badnet = validate_config({"attacks": {"b": {"type": "badnet"}}})["attacks"]["b"]

    assert preset["dataset"]["name"] == dataset
    assert Path(preset["dataset"]["url_list"]).is_absolute()
    assert preset["dataset"]["download"]["image_size"] == 224
    assert list(preset["attacks"]) == [preset["study"]["attack"]] == ["badnet"]
    badnet = preset["attacks"]["badnet"]
    assert badnet["type"] == "badnet" and badnet["target_label"] == "banana"
    assert badnet["n_poisons"] == n_poisons
    assert badnet["trigger"] == schema_badnet["trigger"] == {"patch_size": 16, "pattern": "random", "location": "random"}
    assert preset["model"] == {"name": model, "init_weights": None}

    pretrain = preset["pretrain"]
    assert pretrain["objectives"] == ["mmcl", "mmcl_ssl"]
    assert (pretrain["epochs"], pretrain["lr"], pretrain["warmup_steps"]) == (64, 1e-3, 10_000)
    assert (pretrain["weight_decay"], pretrain["batch_size"]) == (0.1, 2048)

    clean = preset["clean"]
    assert clean["methods"] == ["cleanclip", "mmcl_only", "ssl_only"]
    assert clean["lrs"] == [5e-5, 1e-4, 2e-4, 5e-4, 1e-3]  # floats, not YAML 1.1 strings like '5e-5'
    assert (clean["epochs"], clean["batch_size"], clean["warmup_steps"]) == (20, 64, 50)
    assert (clean["n_clean"], clean["n_poisons"]) == (100_000, 0)

    assert preset["evaluation"]["classnames"] == "imagenet"
    assert Path(preset["evaluation"]["images"]).is_absolute()


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_preset_is_valid_with_its_files_present(name, tmp_path):
    config = merged(read_preset(name), placeholder_paths(tmp_path))
    check_config(validate_config(config))
    # The schema fills in nothing that config.yaml sets: the preset states every such option.
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    preset = read_preset(name)
    for section, options in default.items():
        if section in ("attacks", "dataset"):
            continue
        assert set(options) <= set(preset[section]), section
    assert set(default["dataset"]["download"]) <= set(preset["dataset"]["download"])


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_preset_without_its_files_stops_at_once_naming_the_path(name):
    config = validate_config(read_preset(name))
    if Path(config["dataset"]["url_list"]).exists():
        pytest.skip("this machine has the dataset at the placeholder path")
    with pytest.raises(UserError, match=r"dataset\.url_list: .* does not exist"):
        check_config(config)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_dry_run_of_the_full_grid(name, tmp_path):
    config = merged(read_preset(name), placeholder_paths(tmp_path / "data"))
    with Timed() as timed:
        result = run_snakemake(tmp_path / "run", config, "--dry-run")
    print(f"\n{name}: dry run of the full grid: {timed.wall_s:.1f} s wall, {timed.cpu_s:.1f} s CPU")
    assert result.returncode == 0, result.stderr
    assert job_counts(result.stdout) == expected_job_counts(config)
    # CPU time, not wall time: a loaded machine stretches the wall time of the same work.
    assert timed.cpu_s < DRY_RUN_CPU_LIMIT_S

    # Every cleaning run of the grid, each with all its epochs evaluated.
    dataset, attack = config["dataset"]["name"], config["study"]["attack"]
    found = re.findall(
        rf"results/{dataset}/{attack}/pretrain/(\w+)/clean/(\w+)/lr_([^/]+)/epoch_(\d+)/metrics\.parquet",
        result.stdout,
    )
    runs = {(objective, method, lr) for objective, method, lr, _ in found}
    assert runs == {
        (objective, method, lr_label(lr))
        for objective in config["pretrain"]["objectives"]
        for method in config["clean"]["methods"]
        for lr in config["clean"]["lrs"]
    }
    assert {int(epoch) for *_, epoch in found} == set(range(1, config["clean"]["epochs"] + 1))


def run_from_root(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Snakemake started in `root`, a stand-in for the repository root (it holds config.yaml),
    through a Snakefile that includes the real one and saves the config the workflow ran with."""
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


@pytest.mark.parametrize("directory", [["--directory", f"runs/{MAIN_PRESET}"], []], ids=["own directory", "root"])
def test_the_headers_command_runs_exactly_the_preset(tmp_path, directory):
    """The header's command, with a paths file of the user's own, in the repository root's
    situation: the workflow runs with the preset plus the paths, nothing of config.yaml."""
    paths = placeholder_paths(tmp_path / "data")
    paths_file = tmp_path / "my_paths.yaml"
    paths_file.write_text(yaml.safe_dump(paths))
    preset_file = ROOT / "configs" / f"{MAIN_PRESET}.yaml"
    result, config = run_from_root(
        tmp_path / "root", "--replace-workflow-config", *directory, "--configfile", str(preset_file), str(paths_file)
    )
    assert result.returncode == 0, result.stderr
    expected = validate_config(merged(read_preset(MAIN_PRESET), paths))
    assert config == json.loads(json.dumps(expected))
    assert job_counts(result.stdout) == expected_job_counts(expected)


def test_without_replace_workflow_config_the_defaults_attacks_join(tmp_path):
    """Why the header asks for --replace-workflow-config: from a directory holding config.yaml,
    Snakemake merges the preset into it key by key, so config.yaml's attacks stay."""
    paths_file = tmp_path / "my_paths.yaml"
    paths_file.write_text(yaml.safe_dump(placeholder_paths(tmp_path / "data")))
    preset_file = ROOT / "configs" / f"{MAIN_PRESET}.yaml"
    result, config = run_from_root(tmp_path / "root", "--configfile", str(preset_file), str(paths_file))
    assert result.returncode == 0, result.stderr
    default_attacks = yaml.safe_load((ROOT / "config.yaml").read_text())["attacks"]
    assert set(config["attacks"]) == set(default_attacks) | {"badnet"}
    # The preset states every BadNet option, so its own attack keeps the paper's settings.
    assert config["attacks"]["badnet"] == validate_config(read_preset(MAIN_PRESET))["attacks"]["badnet"]
