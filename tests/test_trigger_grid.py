import pytest
import torch
from PIL import Image

from cleanclip_core.attacks import get_attack
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.errors import UserError
from cleanclip_core.plots.trigger_grid import plot_trigger_grid, save_trigger_grid
from cleanclip_core.poison import poison_manifest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def training_sets(shapes_shards, n_poisons):
    attack = get_attack("blended")
    manifest = poison_manifest(
        shapes_shards.manifest,
        attack,
        attack_name="blended",
        target_label="banana",
        n_poisons=n_poisons,
        seed=0,
    )
    trigger = attack.build_trigger({"alpha": 0.2}, 0)
    return [
        PoisonedTrainingSet(manifest, shapes_shards.shard_index, shapes_shards.shards_dir, 32, view)
        for view in (None, trigger)
    ]


def test_trigger_grid_is_a_png_written_without_leftovers(shapes_shards, tmp_path):
    path = tmp_path / "blended.png"
    save_trigger_grid(*training_sets(shapes_shards, 10), path, "blended, alpha 0.2", n=6)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        width, height = image.size
    assert 600 <= width <= 1500 and 300 <= height <= 800
    assert [file.name for file in tmp_path.iterdir()] == ["blended.png"]


def test_trigger_grid_of_a_single_unchanged_image(tmp_path):
    image = torch.rand(1, 3, 8, 8)
    plot_trigger_grid(image, image.clone(), ["a caption"], tmp_path / "one.png", "no trigger")
    assert (tmp_path / "one.png").read_bytes().startswith(PNG_SIGNATURE)


def test_trigger_grid_needs_a_poisoned_row(shapes_shards, tmp_path):
    with pytest.raises(UserError, match="no poisoned rows"):
        save_trigger_grid(*training_sets(shapes_shards, 0), tmp_path / "none.png", "nothing")
