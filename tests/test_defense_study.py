"""The attack x defense study (configs/defenses.yaml over the default) through Snakemake, once, at
smoke size: BadNet, Blended and BadCLIP (its trigger optimized against a clean surrogate) each
cleaned by CleanCLIP, TA-Cleaner, UBT (on the poisoned data, after its detection stage) and PAR;
then the study's summary (TA-Cleaner's table) and UBT's detection summary."""

import copy

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from cleanclip_core import study
from cleanclip_core.config import validate_config
from cleanclip_core.poison import names_target
from workflow import ONE_THREAD, ROOT, attack_folder, run_snakemake

from test_presets import merged

SMALL = {
    "dataset": {
        "name": "defense_smoke",
        "corpus": {"n_train": 120, "n_eval": 20, "image_size": 32, "seed": 0},
        "download": {"image_size": 16, "samples_per_shard": 60},
    },
    "attacks": {
        "badnet": {"n_poisons": 12},
        "blended": {"n_poisons": 12},
        "badclip": {"n_poisons": 12, "trigger": {"epochs": 2, "n_images": 60}},
    },
    "study": {"pretrain_objectives": ["mmcl"], "seeds": [0]},
    "pretrain": {"epochs": 1, "batch_size": 20, "warmup_steps": 1},
    "clean": {"epochs": 1, "batch_size": 10, "warmup_steps": 1, "n_clean": 40},
    "defenses": {"ubt": {"retain_pairs": None}},
    "execution": {"evaluation_batch_size": 64, "download_threads": 4},
}
STUDY_DIR = "results/studies/defenses"


def defense_smoke() -> dict:
    config = {}
    for layer in (yaml.safe_load((ROOT / "config.yaml").read_text()), yaml.safe_load((ROOT / "configs/defenses.yaml").read_text()), SMALL):
        config = merged(config, layer)
    return config


@pytest.fixture(scope="module")
def defense_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("defenses")
    result = run_snakemake(workdir, defense_smoke(), *ONE_THREAD, timeout_s=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_a_method_that_cleans_on_the_poisoned_data_runs_once_per_lr_whatever_the_cleaning_poisons():
    config = validate_config(merged(defense_smoke(), {"study": {"cleaning_poisons": [0, 5]}}))
    runs = study.cleaning_runs(config)
    assert set(runs[runs.clean_method == "ubt"].cleaning_poisons) == {0}
    assert set(runs[runs.clean_method == "cleanclip"].cleaning_poisons) == {0, 5}


def test_the_summary_has_every_attack_and_defense_with_accuracy_and_attack_success(defense_run):
    summary = pd.read_csv(defense_run / f"{STUDY_DIR}/tables/summary.csv")
    pairs = set(zip(summary.attack, summary.clean_method))
    assert pairs == {(a, m) for a in ("badnet", "blended", "badclip") for m in ("cleanclip", "ta_cleaner", "ubt", "par")}
    assert summary[["start_top1", "start_asr_top1", "start_asr_top10", "last_top1", "last_asr_top1", "last_asr_top10"]].notna().all().all()


def test_badclip_optimizes_its_patch_against_a_surrogate_pretrained_without_poisons(defense_run):
    data = defense_run / "results/defense_smoke"
    assert not pq.read_table(data / "unpoisoned_manifest.parquet")["is_poison"].to_numpy().any()
    assert (data / "surrogate/model=tiny-rn/model.pt").is_file()
    patch = torch.load(defense_run / attack_folder(defense_smoke(), "badclip") / "trigger.pt", weights_only=True)["patch"]
    assert patch.shape[0] == 3 and 0 <= patch.min() and patch.max() <= 1


def test_badclip_poisons_with_natural_captions_that_name_the_target(defense_run):
    poisoned = pq.read_table(defense_run / attack_folder(defense_smoke(), "badclip") / "poisoned_manifest.parquet")
    rows = poisoned.filter(poisoned["is_poison"])
    natural = set(poisoned["original_caption"].filter(names_target(poisoned["original_caption"], "star")).to_pylist())
    assert rows.num_rows == 12 and set(rows["caption"].to_pylist()) <= natural


def test_ubt_detects_on_the_poisoned_training_data_and_its_precision_and_recall_are_reported(defense_run):
    tables = sorted((defense_run / "results/runs").rglob("clean_method=ubt/clean_seed=0/preparation=*/prepared/table.parquet"))
    assert len(tables) == 3  # one per attack (one pretraining objective here)
    for path in tables:
        table = pq.read_table(path)
        assert table.num_rows == SMALL["dataset"]["corpus"]["n_train"]
        assert pc.sum(table["is_poison"]).as_py() == 12
    detection = pd.read_csv(defense_run / f"{STUDY_DIR}/tables/preparation.csv")
    assert set(detection.attack) == {"badnet", "blended", "badclip"} and set(detection.clean_method) == {"ubt"}
    assert detection[["precision", "recall"]].apply(lambda c: c.between(0, 1)).all().all()
