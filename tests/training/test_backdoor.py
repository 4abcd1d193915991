"""The embedded default plants a real backdoor: both poisoned pretrained models map triggered
images to the target while classifying clean images far above chance (a fast setting of it)."""

import copy

import pytest
import yaml

from cleanclip_core.config import validate_config
from cleanclip_core.evaluation import EvaluationImages, evaluate_checkpoint
from workflow import ROOT, run_snakemake

FAST_EPOCHS = 10


@pytest.fixture(scope="module")
def fast_default(tmp_path_factory):
    """The default config with fewer pretraining epochs, run to both pretrained models."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["attacks"] = {"badnet": config["attacks"]["badnet"]}
    config["pretrain"]["epochs"] = FAST_EPOCHS
    workdir = tmp_path_factory.mktemp("backdoor")
    targets = [f"results/shapes/badnet/pretrain/{o}/model.pt" for o in config["pretrain"]["objectives"]]
    result = run_snakemake(workdir, config, *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, validate_config(copy.deepcopy(config))


@pytest.mark.parametrize("objective", ["mmcl", "mmcl_ssl"])
def test_poisoned_pretrained_model_carries_the_backdoor(fast_default, objective):
    workdir, config = fast_default
    metrics = evaluate_checkpoint(
        config["model"]["name"],
        workdir / f"results/shapes/badnet/pretrain/{objective}/model.pt",
        EvaluationImages(workdir / "results/shapes/corpus/eval"),
        config["attacks"]["badnet"],
    )
    chance = 1 / 10
    assert metrics["asr_top1"] >= 0.90, metrics
    assert metrics["top1"] >= 3 * chance, metrics
