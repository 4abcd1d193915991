"""Running the real Snakemake workflow from tests, in a scratch working directory."""

import copy
import re
import subprocess
import sys
from pathlib import Path

import yaml

from cleanclip_core.config import validate_config
from cleanclip_core.study import poisoning_digest

ROOT = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "dataset": {
        "name": "tiny",
        "corpus": {"n_train": 60, "n_eval": 10, "image_size": 32, "seed": 0},
        "download": {"image_size": 16, "samples_per_shard": 30},
    },
    "execution": {"download_threads": 4},
    "attacks": {"badnet": {"type": "badnet", "target_label": "star", "n_poisons": 6}},
    "clean": {"n_clean": 40},  # of its 54 unpoisoned pairs
}

# The torch stages on one thread each, as profiles/local runs them: two small trainings or
# evaluations at once on the test machine's 2 cores.
TORCH_RULES = ("pretrain", "pretrain_surrogate", "optimize_trigger", "prepare_cleaning", "clean", "evaluate_pretrained", "evaluate_cleaned")
ONE_THREAD = ("--set-threads", *(f"{rule}=1" for rule in TORCH_RULES))


def run_snakemake(workdir: Path, config: dict, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Snakemake on the repository's Snakefile with `config`, outputs under `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "test_config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(config_file), "--cores", "2", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The jobs per rule in the `Job stats` table of a Snakemake dry run."""
    table = dry_run_output.split("Job stats:")[1]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def jobs_run(snakemake_stderr: str) -> dict[str, int]:
    """The job counts of a run's `Job stats` table."""
    table = snakemake_stderr.split("Job stats:")[1].split("\n\n")[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def attack_folder(config: dict, attack: str) -> str:
    """Where the workflow keeps an attack's poisoned data under `config`, relative to its directory."""
    full = validate_config(copy.deepcopy(config))
    return f"results/{full['dataset']['name']}/{attack}/{poisoning_digest(full, attack)}"
