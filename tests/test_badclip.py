import logging
import pickle

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from cleanclip_core.attacks import get_attack
from cleanclip_core.attacks.badclip import badclip_loss, optimize_trigger, patch_training_pairs
from cleanclip_core.errors import UserError
from cleanclip_core.models import create_model
from cleanclip_core.plots.trigger_grid import write_trigger_grid
from cleanclip_core.poison import names_target, poison_manifest
from cleanclip_core.training.checkpoints import save_weights

# A 9 px patch on the tiny models' 32 px images; one batch per epoch, so the first epoch's loss
# is that of the initial patch. The surrogate is tiny-vit: a freshly initialized tiny-rn maps all
# images to within 0.002 of each other, where no patch moves the loss beyond its noise.
OPTIONS = {"patch_size": 63, "epochs": 8, "lr": 0.1, "batch_size": 16, "n_images": 16, "triplet_weight": 500, "margin": 1}
QUICK = {"epochs": 2, "batch_size": 8, "n_images": 8}


def attack_config(options=OPTIONS):
    return {"type": "badclip", "target_label": "star", "n_poisons": 4, "seed": 3, "trigger": OPTIONS | options}


@pytest.fixture(scope="module")
def corpus_files(shapes_shards, tmp_path_factory):
    """The shapes corpus's manifest and shard index as files, and a tiny surrogate's weights."""
    root = tmp_path_factory.mktemp("badclip")
    pq.write_table(shapes_shards.manifest, root / "manifest.parquet")
    pq.write_table(shapes_shards.shard_index, root / "shard_index.parquet")
    save_weights(root / "surrogate.pt", create_model("tiny-vit", seed=0))
    surrogate = {"model": "tiny-vit", "weights": str(root / "surrogate.pt"), "pretrained": None}
    data = {
        "manifest": str(root / "manifest.parquet"),
        "shard_index": str(root / "shard_index.parquet"),
        "shards_dir": str(shapes_shards.shards_dir),
    }
    return surrogate, data


@pytest.fixture(scope="module")
def optimized(corpus_files, tmp_path_factory):
    surrogate, data = corpus_files
    path = tmp_path_factory.mktemp("patch") / "patch.pt"
    optimize_trigger(surrogate, data, attack_config(), str(path))
    return path


def test_optimization_lowers_the_loss_and_keeps_the_patch_in_range(optimized):
    result = torch.load(optimized, weights_only=True)
    assert result["image_size"] == 32
    assert result["patch"].shape == (3, 9, 9) and result["patch"].dtype == torch.float32
    assert result["patch"].min() >= 0 and result["patch"].max() <= 1
    assert len(result["losses"]) == OPTIONS["epochs"]
    assert result["losses"][-1] < result["losses"][0]


def test_the_same_seed_gives_the_same_patch_file(corpus_files, tmp_path):
    surrogate, data = corpus_files
    paths = [tmp_path / "first.pt", tmp_path / "second.pt"]
    for path in paths:
        assert optimize_trigger(surrogate, data, attack_config(QUICK), str(path)) == str(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["first.pt", "second.pt"]


def test_a_batch_larger_than_the_images_takes_them_all_with_a_warning(corpus_files, tmp_path, caplog):
    surrogate, data = corpus_files
    with caplog.at_level(logging.WARNING):
        optimize_trigger(surrogate, data, attack_config({"epochs": 1, "n_images": 4, "batch_size": 64}), str(tmp_path / "p.pt"))
    assert "batch_size 64 exceeds the 4 images" in caplog.text
    assert len(torch.load(tmp_path / "p.pt", weights_only=True)["losses"]) == 1


def test_trigger_changes_only_the_centre_square_and_pickles(optimized):
    trigger = get_attack("badclip").build_trigger({"patch_size": 63, "prepared": str(optimized)}, 0)
    image = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(1))
    triggered = trigger(image, 5)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[11:20, 11:20] = False
    assert torch.equal(triggered[:, outside], image[:, outside])
    assert torch.equal(triggered[:, 11:20, 11:20], torch.load(optimized, weights_only=True)["patch"])
    assert torch.equal(trigger(image, 6), triggered)
    assert torch.equal(pickle.loads(pickle.dumps(trigger))(image, 5), triggered)


def test_trigger_resizes_the_patch_for_larger_images(optimized):
    trigger = get_attack("badclip").build_trigger({"patch_size": 63, "prepared": str(optimized)}, 0)
    image = torch.zeros((3, 64, 64))
    rows, columns = torch.nonzero((trigger(image, 0) != image).any(dim=0), as_tuple=True)
    side = 18  # 63 px at 224 -> 18 px at 64
    assert rows.min() >= (64 - side) // 2 and rows.max() < (64 + side) // 2
    assert columns.min() >= (64 - side) // 2 and columns.max() < (64 + side) // 2


def test_trigger_grid_draws_the_prepared_patch(shapes_shards, corpus_files, optimized, tmp_path):
    attack = attack_config() | {"prepared": str(optimized)}
    poisoned = poison_manifest(
        shapes_shards.manifest, get_attack("badclip"), attack_name="badclip", target_label="star", n_poisons=4, seed=3
    )
    pq.write_table(poisoned, tmp_path / "poisoned.parquet")
    _, data = corpus_files
    figure = tmp_path / "badclip.png"
    write_trigger_grid(
        tmp_path / "poisoned.parquet", data["shard_index"], shapes_shards.shards_dir, "tiny-rn", attack, figure, "badclip"
    )
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_a_missing_patch_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist; run its optimization first"):
        get_attack("badclip").build_trigger({"patch_size": 16, "prepared": str(tmp_path / "none.pt")}, 0)


def test_training_pairs_avoid_the_target_and_carry_target_captions(shapes_shards):
    manifest = shapes_shards.manifest
    pairs = patch_training_pairs(manifest, "star", 10, seed=0)
    assert pairs.num_rows == 10
    keys = set(pairs["key"].to_pylist())
    chosen = manifest.filter(pc.is_in(manifest["key"], value_set=pairs["key"]))
    assert set(chosen["key"].to_pylist()) == keys
    assert not pc.any(names_target(chosen["caption"], "star")).as_py()
    assert pc.all(names_target(pairs["caption"], "star")).as_py()
    assert not pc.any(pairs["is_poison"]).as_py() and pairs["trigger_seed"].null_count == 10
    assert pairs.equals(patch_training_pairs(manifest, "star", 10, seed=0))


def test_training_pairs_take_every_eligible_row_with_a_warning(shapes_shards, caplog):
    eligible = pc.sum(pc.invert(names_target(shapes_shards.manifest["caption"], "star"))).as_py()
    with caplog.at_level(logging.WARNING):
        pairs = patch_training_pairs(shapes_shards.manifest, "star", 10_000, seed=0)
    assert pairs.num_rows == eligible
    assert "exceeds the" in caplog.text


def test_a_target_no_caption_names_is_a_user_error(shapes_shards):
    with pytest.raises(UserError, match="no caption contains 'banana'"):
        patch_training_pairs(shapes_shards.manifest, "banana", 10, seed=0)


def test_loss_is_the_contrastive_term_plus_the_weighted_triplet_term():
    # Two orthonormal image-text pairs at scale 2: InfoNCE is log(1 + e^-2) each way.
    patched = torch.eye(2)
    positives = torch.tensor([[0.6, 0.8], [0.8, 0.6]])  # both at distance sqrt(0.8) = 0.894
    clean = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # at distances sqrt(2) and 0
    # margin 0.5: max(0, 0.894 - 1.414 + 0.5) = 0 and 0.894 - 0 + 0.5 = 1.394; mean 0.697
    expected = torch.log1p(torch.exp(torch.tensor(-2.0))) + 10 * (0.8**0.5 + 0.5) / 2
    loss = badclip_loss(patched, patched.clone(), clean, positives, torch.tensor(2.0), triplet_weight=10, margin=0.5)
    assert abs(loss.item() - expected.item()) < 1e-4
