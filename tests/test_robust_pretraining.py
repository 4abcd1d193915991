"""Robust pretraining: RoCLIP's pool, loss and augmented pairs, SafeCLIP's phases, split and schedule, and the
filter of detect-then-pretrain, each on a case computed by hand; their settings in a study. Real runs: tests/training/test_loop.py (resume; RoCLIP in two processes),
tests/training/test_distributed.py (several processes), tests/test_study.py (a study)."""

import logging
import math
import re
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from cleanclip_core import study
from cleanclip_core.augment import augment_caption, corpus_synonyms
from cleanclip_core.config import check_config, validate_config
from cleanclip_core.defenses import get_defense, safeclip, training_options
from cleanclip_core.defenses.filtering import filter_pairs, kept_rows
from cleanclip_core.errors import UserError
from cleanclip_core.defenses.roclip import CaptionPool, image_augmentation, roclip_term
from cleanclip_core.defenses.safeclip import SafeRatio, cross_modal_loss, safeclip_lr, safeclip_term, split_pairs
from cleanclip_core.losses import inmodal_loss, mmcl_loss
from cleanclip_core.objectives import TermInputs
from cleanclip_core.training.views import TrainingViews, ViewContext, build_views, sample_seed, view_fields
from test_presets import merged
from workflow import ROOT, job_counts, run_snakemake

SMOKE = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
SAFECLIP = {"inmodal_epochs": 1, "clip_epochs": 1, "warmup_lr": 5e-6, "safe_posterior": 0.9, "ratio_step": 0.1, "ratio_cap": 0.65}


def diagonal_cross_entropy(logits: list[list[float]]) -> float:
    """The mean over rows of -log softmax(row)[own index], by hand."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(logits)) / len(logits)


def close(tensor: torch.Tensor, rows: list[list[float]]) -> bool:
    return torch.allclose(tensor, torch.tensor(rows))


def transposed(rows: list[list[float]]) -> list[list[float]]:
    return [list(column) for column in zip(*rows)]


def test_the_pool_replaces_its_oldest_captions_and_returns_each_image_its_nearest():
    pool = CaptionPool(3, 2, seed=0)
    assert torch.allclose(pool.captions.norm(dim=1), torch.ones(3))  # random unit vectors
    pool.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    pool.push(torch.tensor([[0.6, 0.8], [0.0, -1.0]]))  # the second wraps to the first row
    assert close(pool.captions, [[0.0, -1.0], [0.0, 1.0], [0.6, 0.8]])
    assert int(pool.position) == 1
    nearest = pool.nearest(torch.tensor([[2.0, 0.1], [0.0, -3.0]]))  # cosines, not dot products
    assert close(nearest, [[0.6, 0.8], [0.0, -1.0]])
    pool.push(torch.eye(2).repeat(3, 1)[:5])  # more than it holds: the last three
    assert close(pool.captions, [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # rows 1, 2, 0, 1, 2 written
    assert int(pool.position) == 0


def test_lightly_s_pool_drops_what_passes_its_end_and_starts_from_unnormalized_vectors():
    """RoCLIP's code (lightly 1.2.39's memory bank) against the wrapping pool, batches of 3 into 5."""
    batches = [torch.tensor(rows) for rows in (
        [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], [[0.8, 0.6], [-1.0, 0.0], [0.0, -1.0]], [[-0.6, 0.8], [-0.8, 0.6], [0.6, -0.8]],
    )]
    start = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    lightly, wrapping = CaptionPool(5, 2, seed=0, update="lightly"), CaptionPool(5, 2, seed=0)
    assert torch.equal(lightly.captions, start)  # lightly discards its normalize call: about sqrt(2) long
    assert torch.allclose(wrapping.captions, start / start.norm(dim=1, keepdim=True))
    for batch in batches[:2]:
        lightly.push(batch)
        wrapping.push(batch)
    # the second batch's last caption: dropped at the end, against wrapped to the front
    assert close(lightly.captions, [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    assert close(wrapping.captions, [[0.0, -1.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6], [-1.0, 0.0]])
    assert (int(lightly.position), int(wrapping.position)) == (0, 1)
    lightly.push(batches[2])
    wrapping.push(batches[2])
    assert close(lightly.captions, [[-0.6, 0.8], [-0.8, 0.6], [0.6, -0.8], [0.8, 0.6], [-1.0, 0.0]])
    assert close(wrapping.captions, [[0.0, -1.0], [-0.6, 0.8], [-0.8, 0.6], [0.6, -0.8], [-1.0, 0.0]])
    assert (int(lightly.position), int(wrapping.position)) == (3, 4)


def test_lightly_s_pool_matches_on_cosines_and_returns_the_caption_as_it_holds_it():
    pool = CaptionPool(2, 2, seed=0, update="lightly")
    pool.captions.copy_(torch.tensor([[10.0, 0.0], [0.6, 0.8]]))  # a starting vector, a caption
    # the first image's dot products favour the long vector (6 against 1), its cosines the caption
    assert close(pool.nearest(torch.tensor([[0.6, 0.8], [1.0, 0.1]])), [[0.6, 0.8], [10.0, 0.0]])


def test_roclip_aug_trains_on_a_fresh_augmentation_of_each_image_and_one_of_each_caption():
    generator = torch.Generator().manual_seed(0)
    pairs = [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator),
              "caption": "a photo of a small red star", "index": 0}]
    sources = build_views(get_defense("roclip_aug").views, ViewContext([pairs[0]["caption"]], seed=3, synonyms="corpus"))
    assert view_fields(sources) == ((), ())  # in place of the pair's own: no extra view to encode
    views = TrainingViews(pairs, lambda captions: captions, sources, seed=3)
    first = views[0]
    views.epoch = 1
    second = views[0]
    assert first["image"].shape == (3, 32, 32) and first["image"].dtype == torch.uint8
    assert not torch.equal(first["image"], pairs[0]["image"]) and not torch.equal(first["image"], second["image"])
    caption = augment_caption(pairs[0]["caption"], sample_seed(3, 0), 0, corpus_synonyms())  # the pair's seed, epoch 0
    assert first["text"] == second["text"] == caption != pairs[0]["caption"]


@pytest.mark.parametrize("size, kernel, sigma", [(224, 21, (0.1, 2.0)), (32, 3, (0.1 / 7, 2 / 7)), (64, 7, (0.2 / 7, 4 / 7))])
def test_roclip_s_blur_keeps_its_share_of_the_image_at_every_size(size, kernel, sigma):
    blur = image_augmentation(size).transforms[-1]
    assert list(blur.kernel_size) == [kernel, kernel] and blur.sigma == pytest.approx(sigma)


def roclip_inputs(epoch: int, pool: CaptionPool) -> TermInputs:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    text = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    return TermInputs({"image": image, "text": text}, torch.tensor(1.0), {}, {"break_epoch": 2}, epoch=epoch, state=pool)


def test_on_a_matching_epoch_roclip_contrasts_each_image_with_its_nearest_pool_caption():
    pool = CaptionPool(3, 2, seed=0)
    pool.captions.copy_(torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]]))
    inputs = roclip_inputs(epoch=2, pool=pool)
    loss = roclip_term(inputs)
    # Nearest: [1, 0] for image 1 (cosine 1), [0.6, 0.8] for image 2 (0.8 against 0 and -1).
    image_logits = [[1.0, 0.6], [0.0, 0.8]]  # image i . matched caption j
    expected = (diagonal_cross_entropy(image_logits) + diagonal_cross_entropy(transposed(image_logits))) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert inputs.features["text"].grad is not None and not inputs.features["text"].grad.any()
    assert inputs.features["image"].grad.any()
    # The batch's captions entered the pool after the lookup.
    assert close(pool.captions, [[0.0, 1.0], [1.0, 0.0], [0.0, -1.0]])


def test_other_epochs_train_roclip_with_the_clip_loss_and_leave_the_pool():
    pool = CaptionPool(3, 2, seed=0)
    before = pool.captions.clone()
    inputs = roclip_inputs(epoch=3, pool=pool)
    clip = mmcl_loss(inputs.features["image"], inputs.features["text"], inputs.logit_scale)
    assert roclip_term(inputs).item() == pytest.approx(clip.item())
    assert torch.equal(pool.captions, before)


FEATURES = {
    "image": torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]),
    "augmented_image": torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]),
    "text": torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]]),
    "augmented_text": torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]),
}


def dot_rows(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    return [[float(x @ y) for y in b] for x in a]


def test_the_cross_augmented_clip_loss_pairs_each_view_with_the_other_modality_s_other_view():
    f = FEATURES
    expected = (
        diagonal_cross_entropy(dot_rows(f["image"], f["augmented_text"]))
        + diagonal_cross_entropy(dot_rows(f["text"], f["augmented_image"]))
    ) / 2
    assert float(cross_modal_loss(f["image"], f["augmented_image"], f["text"], f["augmented_text"], torch.tensor(1.0))) == pytest.approx(expected)


@pytest.mark.parametrize("epoch, phase", [(1, "inmodal"), (2, "clip_warmup"), (3, "split")])
def test_safeclip_s_term_is_its_phase_s_loss(epoch, phase):
    f, scale = FEATURES, torch.tensor(1.0)
    safe = torch.tensor([True, False, True])
    term = float(safeclip_term(TermInputs(f, scale, {"safe": safe}, SAFECLIP, epoch=epoch)))
    inmodal = inmodal_loss(f["image"], f["augmented_image"], f["text"], f["augmented_text"], scale)
    cross = cross_modal_loss(f["image"], f["augmented_image"], f["text"], f["augmented_text"], scale)
    views = [f[name] for name in ("image", "augmented_image", "text", "augmented_text")]
    split = 2 / 3 * cross_modal_loss(*(v[safe] for v in views), scale) + 1 / 3 * inmodal_loss(*(v[~safe] for v in views), scale)
    assert term == pytest.approx(float({"inmodal": inmodal, "clip_warmup": cross, "split": split}[phase]))


def test_a_split_batch_without_risky_pairs_is_the_cross_augmented_loss_of_all():
    f, scale = FEATURES, torch.tensor(1.0)
    term = safeclip_term(TermInputs(f, scale, {"safe": torch.ones(3, dtype=torch.bool)}, SAFECLIP, epoch=3))
    assert float(term) == pytest.approx(float(cross_modal_loss(*f.values(), scale)))


def test_the_first_split_keeps_the_confident_pairs_and_later_ones_a_growing_capped_share(monkeypatch):
    rng = np.random.default_rng(0)
    similarities = np.concatenate([rng.normal(0.1, 0.02, 60), rng.normal(0.6, 0.02, 40)])
    monkeypatch.setattr(safeclip, "_similarities", lambda start: similarities)
    is_poison = np.zeros(100, bool)
    is_poison[[0, 70]] = True
    state = SafeRatio()
    start = SimpleNamespace(options=SAFECLIP, state=state, seed=0, pairs=SimpleNamespace(pairs=SimpleNamespace(is_poison=is_poison)))

    assert split_pairs(SimpleNamespace(**vars(start), epoch=2)) == {}  # a warm-up epoch
    first = split_pairs(SimpleNamespace(**vars(start), epoch=3))["safe"]
    assert first.tolist() == [False] * 60 + [True] * 40  # the high-similarity component
    assert float(state.ratio) == pytest.approx(0.5)
    second = split_pairs(SimpleNamespace(**vars(start), epoch=4))["safe"]
    assert second.sum() == 50 and second[60:].all()  # the top half by posterior
    split_pairs(SimpleNamespace(**vars(start), epoch=5))
    assert float(state.ratio) == pytest.approx(0.65)  # capped


def test_safeclip_s_schedule_warms_up_twice_around_a_constant_clip_warm_up():
    options = SAFECLIP | {"inmodal_epochs": 1, "clip_epochs": 1}
    lr = [safeclip_lr(step, 1.0, 2, steps_per_epoch=10, epochs=5, options=options) for step in range(50)]
    assert lr[0] == pytest.approx(0.5) and lr[1] == pytest.approx(1.0)
    assert lr[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 18)))  # cosine over both warm-ups' 20 steps
    assert lr[10:20] == pytest.approx([5e-6] * 10)
    assert lr[20] == pytest.approx(0.5) and lr[21] == pytest.approx(1.0)  # the split's own warmup
    assert lr[49] == pytest.approx(0.5 * (1 + math.cos(math.pi * 27 / 28)))


def test_a_robust_objective_pretrains_with_its_method_and_options_and_the_plain_ones_without():
    config = validate_config({"attacks": {"badnet": {"type": "badnet"}}, "defenses": {"roclip": {"pool_size": 512}}})
    settings = study.pretrain_settings(config, "roclip", seed=0)
    assert settings["method"] == "roclip" and settings["objective"] == {"roclip": 1}
    assert settings["options"] == {"pool_size": 512, "break_epoch": 2}
    assert "method" not in study.pretrain_settings(config, "mmcl", seed=0)  # its run identity is unchanged


@pytest.mark.parametrize("update, recorded", [("wrap", False), ("lightly", True)])
def test_roclip_s_pool_update_enters_a_run_s_identity_only_away_from_its_default(update, recorded):
    """wrap is the pool runs had before the option: their digests and Snakemake's params stay."""
    default = validate_config({"attacks": {"badnet": {"type": "badnet"}}})
    config = validate_config({"attacks": {"badnet": {"type": "badnet"}}, "defenses": {"roclip": {"pool_update": update}}})
    assert default["defenses"]["roclip"]["pool_update"] == "wrap"
    settings = study.pretrain_settings(config, "roclip", seed=0)
    assert ("pool_update" in settings["options"]) == recorded
    assert (study.pretrain_digest(config, "badnet", "roclip") != study.pretrain_digest(default, "badnet", "roclip")) == recorded
    assert training_options(get_defense("roclip"), settings["options"])["pool_update"] == update


def test_the_filter_keeps_every_pair_outside_the_top_fraction_in_order():
    scores = np.array([0.1, 0.9, 0.3, 0.9, 0.2, 0.8, 0.0, 0.4, 0.5, 0.6])
    assert kept_rows(scores, 0.3).tolist() == [0, 2, 4, 6, 7, 8, 9]  # 0.9, 0.9 and 0.8 go
    assert kept_rows(scores, 0.1).tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9]  # a tie: the earlier goes


def test_the_filtered_manifest_is_the_poisoned_one_less_its_top_scored_pairs(tmp_path, caplog):
    manifest = pa.table({"key": ["a", "b", "c", "d"], "is_poison": [False, True, False, True], "caption": list("wxyz")})
    pq.write_table(manifest, tmp_path / "poisoned.parquet")
    pq.write_table(pa.table({"key": ["a", "b", "c", "d"], "score": [0.1, 0.9, 0.95, 0.2]}), tmp_path / "scores.parquet")
    with caplog.at_level(logging.INFO):
        filter_pairs(str(tmp_path / "scores.parquet"), str(tmp_path / "poisoned.parquet"), 0.5, str(tmp_path / "kept.parquet"))
    assert pq.read_table(tmp_path / "kept.parquet").select(manifest.column_names).equals(manifest.take([0, 3]))
    assert "removed 2 of 4 pairs (50.0%), 1 of 2 poisons among them; 1 poisons left" in caplog.text
    pq.write_table(pa.table({"key": ["b", "a", "c", "d"], "score": [0.0] * 4}), tmp_path / "scores.parquet")
    with pytest.raises(UserError, match="scores.parquet: its pairs are not those of .*poisoned.parquet, row for row"):
        filter_pairs(str(tmp_path / "scores.parquet"), str(tmp_path / "poisoned.parquet"), 0.5, str(tmp_path / "kept.parquet"))


def filtered_config(**sections) -> dict:
    return validate_config({"attacks": {"badnet": {"type": "badnet"}}, "study": {"pretrain_objectives": ["mmcl", "filtered"]}} | sections)


def test_a_filtered_model_s_identity_holds_its_filter_and_the_others_do_not():
    config = filtered_config()
    other_k = filtered_config(detection={"options": {"dao": {"k": 8}}})
    other_fraction = filtered_config(defenses={"filtered": {"fraction": 0.01}})
    digests = [study.pretrain_digest(c, "badnet", "filtered") for c in (config, other_k, other_fraction)]
    assert len(set(digests)) == 3
    assert study.pretrain_digest(config, "badnet", "mmcl") == study.pretrain_digest(other_k, "badnet", "mmcl")
    assert study.used_detectors(config) == ["dao"]  # the filter's detector scores though the study names none


@pytest.mark.parametrize("filtered, message", [
    ({"base": "mmcl_ssl"}, "defenses.filtered.base: 'mmcl_ssl' is not one of the study's other pretraining objectives (mmcl)"),
    ({"detector": "strip"}, "defenses.filtered.detector: 'strip' is not a training-set detector (k_distance, lid"),
])
def test_a_filter_needs_a_base_model_of_the_study_and_a_training_set_detector(filtered, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_config(filtered_config(defenses={"filtered": filtered}, clean={"n_clean": 1000}))


def test_a_filtered_model_pretrains_on_the_pairs_its_base_model_s_detector_left(tmp_path):
    config = merged(SMOKE, {"study": {"pretrain_objectives": ["mmcl", "filtered"], "detectors": []}})
    result = run_snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    attacks = len(SMOKE["study"]["attacks"])
    assert (counts["embed_training"], counts["detect_training"], counts["filter_pairs"]) == (attacks, attacks, attacks)
    assert "detection_summary" not in counts  # the study itself names no detector
    kept = re.findall(r"pretrain_objective=mmcl/pretrain_seed=0/pretrain_settings=\w+/detection/detector=dao/"
                      r"detection_settings=\w+/kept_0\.1/manifest\.parquet", result.stdout)
    assert kept
