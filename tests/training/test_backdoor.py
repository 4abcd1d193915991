"""The embedded default plants a real backdoor: both poisoned pretrained models map triggered
images to the target while classifying clean images far above chance."""

import pyarrow.parquet as pq
import pytest
import yaml

from workflow import ROOT, run_snakemake

DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())
OBJECTIVES = DEFAULT["study"]["pretrain_objectives"]
PRETRAINED = "results/runs/dataset=shapes/attack=badnet/model=tiny-rn/start=scratch/pretrain_objective={}"


@pytest.fixture(scope="module")
def pretrained_metrics(tmp_path_factory) -> dict[str, dict[str, float]]:
    """The default config's BadNet study run to the metrics of both pretrained models."""
    config = DEFAULT | {"attacks": {"badnet": DEFAULT["attacks"]["badnet"]}}
    workdir = tmp_path_factory.mktemp("backdoor")
    targets = [f"{PRETRAINED.format(objective)}/metrics.parquet" for objective in OBJECTIVES]
    result = run_snakemake(workdir, config, *targets, timeout_s=1800)  # two full pretrainings: ~9 min alone
    assert result.returncode == 0, result.stderr[-3000:]
    tables = {objective: pq.read_table(workdir / target).to_pylist() for objective, target in zip(OBJECTIVES, targets)}
    return {objective: {row["metric"]: row["value"] for row in rows} for objective, rows in tables.items()}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_poisoned_pretrained_model_carries_the_backdoor(pretrained_metrics, objective):
    metrics = pretrained_metrics[objective]
    chance = 1 / 10
    assert metrics["asr_top1"] >= 0.90, metrics
    assert metrics["top1"] >= 3 * chance, metrics
