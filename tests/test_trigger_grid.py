import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from cleanclip_core.attacks import attack_trigger, get_attack
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.errors import UserError
from cleanclip_core.plots.trigger_grid import plot_trigger_grid, save_trigger_grid, write_trigger_grid
from cleanclip_core.poison import poison_manifest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def blended_manifest(shapes_shards, n_poisons):
    return poison_manifest(
        shapes_shards.manifest,
        get_attack("blended"),
        attack_name="blended",
        target_label="banana",
        n_poisons=n_poisons,
        seed=0,
    )


def training_sets(shapes_shards, n_poisons):
    manifest = blended_manifest(shapes_shards, n_poisons)
    trigger = get_attack("blended").build_trigger({"alpha": 0.2}, 0)
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


def test_trigger_grid_draws_the_images_at_the_models_input_size_as_training_sees_them(shapes_shards, tmp_path):
    """The shards hold 32 px images and RN50 takes 224 px: the loader fits each image to 224 px
    before the blended noise, whose pattern depends on the image's size, is added."""
    manifest_path, attack = tmp_path / "blended.parquet", {"type": "blended", "trigger": {"alpha": 0.2}, "seed": 0}
    pq.write_table(blended_manifest(shapes_shards, 10), manifest_path)
    shard_index_path = tmp_path / "shard_index.parquet"
    pq.write_table(shapes_shards.shard_index, shard_index_path)
    figure = write_trigger_grid(
        manifest_path, shard_index_path, shapes_shards.shards_dir, "RN50", attack, tmp_path / "grid.png", "blended"
    )
    seen = PoisonedTrainingSet.from_files(manifest_path, shard_index_path, shapes_shards.shards_dir, 224,
                                          attack_trigger(attack))
    first_poison = int(np.flatnonzero(seen.is_poison)[0])
    columns = len(figure.axes) // 3
    drawn = figure.axes[columns].images[0].get_array()  # the triggered row's first image
    assert drawn.shape == (224, 224, 3)
    in_unit_range = F.to_dtype(seen[first_poison]["image"], torch.float32, scale=True)
    np.testing.assert_array_equal(drawn, in_unit_range.permute(1, 2, 0).numpy())
