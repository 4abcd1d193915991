"""DECREE, the model-level detector: its parts on cases computed by hand, a backdoored encoder
told from a clean one, its registry entry, the study's summary of the models' scores, and the
plan of a study that names it."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from cleanclip_core import study
from cleanclip_core.config import validate_config
from cleanclip_core.detection import model_level_summary
from cleanclip_core.detectors import DETECTORS, LEVELS, MODEL, detectors_of
from cleanclip_core.detectors.decree import (
    PenaltyWeight, bounded, decree_pl1, mean_off_diagonal_cosine, milestone_lr, stamped, unbounded,
)
from cleanclip_core.detectors.model_level import ModelInputs
from cleanclip_core.errors import UserError
from cleanclip_core.plots.detection import CELL, MODEL_CELL
from workflow import ROOT, job_counts, run_snakemake

SIZE, CORNER = 16, 4
DEFAULTS = {name: option["default"] for name, option in DETECTORS["decree"].options["properties"].items()}


class PatchEncoder(nn.Module):
    """A random linear map of the centred image into 256 dimensions (a stamp must cover most of
    the image to make every image's embedding agree); backdoored, plus a large fixed vector once
    the top-left CORNER x CORNER patch turns white."""

    def __init__(self, backdoored: bool):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.projection = torch.randn(256, 3 * SIZE * SIZE, generator=generator)
        self.target = 100 * torch.randn(256, generator=generator)
        self.backdoored = backdoored

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = (images - 0.5).flatten(1) @ self.projection.T
        if not self.backdoored:
            return embeddings
        white = images[:, :, :CORNER, :CORNER].mean(dim=(1, 2, 3))
        return embeddings + torch.sigmoid(10 * (white - 0.8))[:, None] * self.target


def shadow(count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"image": (255 * torch.rand(3, SIZE, SIZE, generator=generator)).to(torch.uint8)} for _ in range(count)]


def pl1(encoder: nn.Module, images: list[dict], seed: int = 0) -> float:
    inputs = ModelInputs(encoder, images, lambda x: x, torch.device("cpu"), seed)
    return decree_pl1(inputs, DEFAULTS | {"shadow_images": 64, "batch_size": 32})


def test_the_smallest_stamp_of_a_backdoored_encoder_is_about_its_trigger():
    images = shadow(64)
    backdoored, clean = pl1(PatchEncoder(True), images), pl1(PatchEncoder(False), images)
    assert backdoored < 2.5 * CORNER**2 / SIZE**2 < 0.5 < clean  # the trigger's share of the image: 1/16


def test_it_is_deterministic_given_the_seed_and_leaves_the_encoder_frozen():
    images, encoder = shadow(16), PatchEncoder(True)
    encoder.projection = nn.Parameter(encoder.projection)
    assert pl1(encoder, images) == pl1(encoder, images)
    assert not encoder.projection.requires_grad and not encoder.training


def test_an_encoder_that_maps_every_image_together_is_called_collapsed(caplog):
    class Collapsed(nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return 1 + 1e-3 * images.flatten(1)[:, :4]  # every embedding about (1, 1, 1, 1)

    pl1(Collapsed(), shadow(8))
    assert "maps the clean shadow images together already" in caplog.text


def test_fewer_than_two_shadow_images_are_refused():
    with pytest.raises(UserError, match="at least 2 shadow images"):
        pl1(PatchEncoder(False), shadow(1))


def test_the_stamp_blends_the_pattern_in_where_the_mask_is():
    images = torch.zeros(1, 3, 1, 2)
    mask, pattern = torch.tensor([[1.0, 0.25]]), torch.ones(3, 1, 2)
    assert stamped(images, mask, pattern)[0, :, 0].tolist() == [[1.0, 0.25]] * 3
    assert torch.allclose(bounded(unbounded(torch.tensor([0.1, 0.5, 0.9]))), torch.tensor([0.1, 0.5, 0.9]))


def test_the_cosine_is_the_mean_over_pairs_of_different_rows():
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert mean_off_diagonal_cosine(embeddings).item() == pytest.approx((1 + 0 + 0) / 3)


def test_lambda_grows_after_a_run_of_successes_and_shrinks_to_its_floor_after_failures():
    weight = PenaltyWeight(floor=1e-4, patience=2)
    for _ in range(3):
        weight.update(True)
    assert weight.value == pytest.approx(5e-3)
    for _ in range(9):  # three runs of three failures: /5, /5 and the floor
        weight.update(False)
    assert weight.value == pytest.approx(1e-4)


def test_the_learning_rate_drops_at_each_milestone():
    assert [milestone_lr(0.5, [30, 50], epoch) for epoch in (0, 29, 30, 50)] == pytest.approx([0.5, 0.5, 0.1, 0.05])


def test_decree_is_the_model_level_detector():
    assert MODEL in LEVELS and DETECTORS["decree"].level == MODEL
    assert detectors_of(["dao", "decree", "strip"], MODEL) == ["decree"]
    config = validate_config(yaml.safe_load((ROOT / "configs/smoke.yaml").read_text()) | {"detection": {"options": {"decree": {"epochs": 3}}}})
    assert config["detection"]["options"]["decree"] == DEFAULTS | {"epochs": 3}
    assert set(study.detection_settings(config, "decree")) == {"options", "seed"}


def models(scores: dict[str, list[float]], **cleaning) -> pd.DataFrame:
    """One scores row per model: the attacks' scores, badnet's backdoored, control's clean; with
    `cleaning`, its dimensions' values (a cleaned model's)."""
    return pd.DataFrame([
        {"dataset": "smoke", "attack": attack, "model": "tiny-rn", "start": "scratch", "pretrain_objective": "mmcl",
         "pretrain_seed": seed, "pretrain_settings": attack[:3], "level": MODEL, "detector": "decree", "detection_settings": "y",
         "is_backdoored": attack == "badnet", "score": score} | cleaning
        for attack, values in scores.items() for seed, score in enumerate(values)
    ])


def test_the_summary_ranks_the_backdoored_models_against_the_clean_ones():
    row = model_level_summary(models({"badnet": [-0.1, -0.3], "control": [-0.2, -0.5]}), CELL, 100, 0).iloc[0]
    assert row.level == MODEL and (row.attack, row.pretrain_settings) == ("badnet+control", "bad+con")
    assert (row.n_scored, row.n_poisons, row.n_replicates) == (4, 2, 2)
    assert row.auroc == pytest.approx(3 / 4)  # -0.3 is below -0.2: 3 of the 4 pairs ordered right
    assert row.auroc_low <= row.auroc <= row.auroc_high
    assert all(math.isnan(row[name]) for name in ("precision", "recall", "f1", "fpr"))


def test_cleaned_models_are_ranked_per_method_and_per_count_of_cleaning_poisons_each_against_the_control():
    cleaned = {"clean_method": "cleanclip", "lr": 0.003, "clean_seed": 0, "clean_settings": "c"}
    table = model_level_summary(pd.concat([
        models({"badnet": [-0.1, -0.3], "control": [-0.2, -0.5]}),
        models({"badnet": [-0.4, -0.6], "control": [-0.2, -0.5]}, cleaning_poisons=0, **cleaned),
        models({"badnet": [-0.05, -0.15]}, cleaning_poisons=5, **cleaned),
    ]), MODEL_CELL, 100, 0)
    assert table.clean_method.isna().tolist() == [True, False, False]  # the pretrained models' row first
    by_poisons = table.iloc[1:].set_index("cleaning_poisons")
    assert by_poisons.n_scored.to_dict() == {0: 4, 5: 4} and set(by_poisons.attack) == {"badnet+control"}
    # after cleaning without poisons only -0.4 > -0.5 of the four pairs is ordered right; with 5 all are
    assert by_poisons.auroc.to_dict() == pytest.approx({0: 1 / 4, 5: 1.0})
    assert table.iloc[0].auroc == pytest.approx(3 / 4)


def test_models_of_one_class_have_no_auroc_and_the_log_says_why(caplog):
    row = model_level_summary(models({"badnet": [-0.1, -0.3]}), CELL, 100, 0).iloc[0]
    assert np.isnan(row.auroc) and "only backdoored models" in caplog.text


def test_a_study_naming_decree_scores_every_pretrained_and_cleaned_model_once(tmp_path):
    config = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    config["study"]["detectors"] = ["dao", "decree"]
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    pretrained, cleaned = len(study.pretrained_models(validate_config(config))), len(study.cleaning_runs(validate_config(config)))
    assert (counts["detect_model"], counts["detect_cleaned_model"], counts["detect_training"]) == (pretrained, cleaned, pretrained)
    assert counts["detection_summary"] == 1
