"""PAR: the repulsion term, the perturbed view, the schedule, and a real cleaning run."""

import math

import pyarrow.parquet as pq
import pytest
import torch

from cleanclip_core.attacks import get_attack
from cleanclip_core.config import validate_config
from cleanclip_core.defenses.par import PerturbedViews, par_lr, par_schedule, perturb_image
from cleanclip_core.models import create_model
from cleanclip_core.objectives import TermInputs
from cleanclip_core.registry import resolve
from cleanclip_core.terms import TERMS
from cleanclip_core.poison import poison_manifest
from cleanclip_core.training.checkpoints import save_weights
from cleanclip_core.training.loop import TrainingData, TrainSettings, train
from cleanclip_core.training.optim import MAX_LOGIT_SCALE, adamw

OPTIONS = validate_config({})["defenses"]["par"]  # the schema's defaults
GREY = 0.5
ERASED = 0.48145466  # open_clip's default normalization mean, red channel


def repulsion(image, reference_image, text, reference_text, tau=2.15) -> torch.Tensor:
    inputs = TermInputs(
        features={"image": image, "text": text},
        logit_scale=torch.tensor(1.0),
        batch={},
        options={"tau": tau},
        reference={"image": torch.tensor(reference_image), "text": torch.tensor(reference_text)},
    )
    return resolve(TERMS["repulsion"].loss)(inputs)


def test_repulsion_is_minus_the_batch_mean_squared_distances_of_images_and_texts():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    loss = repulsion(image, [[0.0, 1.0], [0.0, 1.0]], text, [[0.8, 0.6], [1.0, 0.0]])
    # images: squared distances 2 and 0, mean 1; texts: 0.2² + 0.2² = 0.08 and 0, mean 0.04
    assert loss.item() == pytest.approx(-1.04)
    loss.backward()
    # d/dx of −mean ||x − r||² is −2 (x − r) / B, B = 2
    assert torch.allclose(image.grad, torch.tensor([[-1.0, 1.0], [0.0, 0.0]]))
    assert torch.allclose(text.grad, torch.tensor([[0.2, -0.2], [0.0, 0.0]]))


def test_a_distance_past_tau_counts_zero_with_no_gradient_and_one_at_tau_counts():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # opposite: squared distance 4
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)  # distances 2 and 0: mean 1
    loss = repulsion(image, [[-1.0, 0.0], [0.0, -1.0]], text, [[0.0, 1.0], [0.0, 1.0]], tau=1.0)
    assert loss.item() == -1.0  # the text term sits exactly at tau: kept (the threshold is strict)
    loss.backward()
    assert torch.equal(image.grad, torch.zeros(2, 2))
    assert text.grad.abs().sum() > 0


def grey_image(side: int = 64) -> torch.Tensor:
    return torch.full((3, side, side), GREY)


def test_the_perturbation_is_a_function_of_the_seed_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    draws = [perturb_image(grey_image(), seed, OPTIONS) for seed in (1, 1, 2)]
    assert torch.equal(draws[0], draws[1])
    assert torch.equal(torch.get_rng_state(), state)
    views = PerturbedViews(OPTIONS)
    pair = {"image": grey_image(), "index": 0}
    assert torch.equal(views(pair, 5, 0)["image"], views(pair, 5, 0)["image"])
    assert len({views(pair, 5, epoch)["image"].sum().item() for epoch in range(8)}) > 1


def test_noise_and_erasing_each_hit_about_half_the_images():
    draws = [perturb_image(grey_image(), seed, OPTIONS) for seed in range(400)]
    noised = [draw for draw in draws if (draw > GREY).any()]
    erased = [draw for draw in draws if (draw[0] == ERASED).any()]
    assert 160 < len(noised) < 240 and 160 < len(erased) < 240
    # The noise is σ·z clipped to [0, 1] before it is added: mean σ/√(2π), and it never darkens.
    assert all((draw[0][draw[0] != ERASED] >= GREY).all() for draw in draws)
    increments = torch.cat([draw[0][draw[0] != ERASED] - GREY for draw in noised[:50]])
    assert increments.mean().item() == pytest.approx(0.2 / math.sqrt(2 * math.pi), rel=0.05)


def test_the_erased_square_covers_half_a_percent_to_one_percent_of_the_image():
    areas = [(perturb_image(grey_image(224), seed, OPTIONS)[0] == ERASED).sum().item() for seed in range(40)]
    sides = [math.isqrt(area) for area in areas if area]
    assert sides and all(side * side == area for side, area in zip(sides, filter(None, areas)))
    assert all(16 <= side <= 22 for side in sides)  # √(0.005 · 224²) ≈ 15.8 to √(0.01 · 224²) = 22.4


def test_par_schedule_falls_linearly_to_a_tenth_over_the_first_half_then_on_a_cosine():
    model = torch.nn.Linear(2, 2)
    optimizer = adamw(model, 3e-5, 1e-4)
    lr_at = par_schedule(optimizer, 3e-5, 0, steps_per_epoch=5, epochs=2, options={})
    assert lr_at(0) == pytest.approx(3e-5)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(3e-5)
    assert lr_at(2) == pytest.approx(1.65e-5)  # half way from 3e-5 to 3e-6
    assert lr_at(4) == pytest.approx(3e-6)  # the linear part's last step (numpy linspace's end)
    assert lr_at(5) == pytest.approx(3e-6)  # the cosine's first
    assert lr_at(7) == pytest.approx(3e-6 * (1 + math.cos(2 * math.pi / 5)) / 2)
    assert lr_at(9) == pytest.approx(3e-6 * (1 + math.cos(4 * math.pi / 5)) / 2)


def test_a_warmup_precedes_the_par_schedule():
    assert [par_lr(step, 1.0, 2, 12) for step in (0, 1, 2, 6)] == pytest.approx([0.5, 1.0, 1.0, 0.1])


@pytest.fixture(scope="module")
def clean_pairs(shapes_shards, tmp_path_factory) -> TrainingData:
    root = tmp_path_factory.mktemp("par")
    some = shapes_shards.manifest.slice(0, 16)  # 4 steps of 4
    # No poisons: the loader wants a poisoned manifest's columns.
    unpoisoned = poison_manifest(
        some, get_attack("badnet"), attack_name="badnet", target_label="star", n_poisons=0, seed=0
    )
    pq.write_table(unpoisoned, root / "manifest.parquet")
    pq.write_table(shapes_shards.shard_index, root / "shard_index.parquet")
    return TrainingData(root / "manifest.parquet", root / "shard_index.parquet", shapes_shards.shards_dir, None)


def test_a_par_run_logs_the_repulsion_and_keeps_the_start_temperature(clean_pairs, tmp_path):
    start = create_model("tiny-vit", seed=0)
    with torch.no_grad():
        start.logit_scale.fill_(4.60546875)  # OpenAI's half-precision ln(100), above the clamp
    save_weights(tmp_path / "start.pt", start)
    settings = TrainSettings(
        model="tiny-vit", objective={"mmcl": 1.0, "repulsion": 0.5}, epochs=1, batch_size=4, lr=1e-3,
        warmup_steps=0, weight_decay=1e-4, seed=0, synonyms="corpus", method="par", options=OPTIONS,
    )
    final = train(settings, clean_pairs, tmp_path / "run", init_weights=tmp_path / "start.pt")

    cleaned = torch.load(final, weights_only=True)["state_dict"]
    assert cleaned["logit_scale"].item() == 4.60546875 > MAX_LOGIT_SCALE
    assert not torch.equal(cleaned["visual.conv1.weight"], start.state_dict()["visual.conv1.weight"])
    log = pq.read_table(tmp_path / "run" / "train_log.parquet").to_pylist()
    # At the first step both models embed the same perturbed batch with the same weights (the
    # frozen one through attention's inference kernels, whose sums may differ in the last bits).
    assert log[0]["loss_repulsion"] == pytest.approx(0.0, abs=1e-9)
    assert all(row["loss_repulsion"] < 0 for row in log[1:])
    assert [row["lr"] for row in log[:2]] == pytest.approx([1e-3, par_lr(1, 1e-3, 0, len(log))])
