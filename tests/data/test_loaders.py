import csv
import os
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_image

from cleanclip_core.attacks import get_attack, test_trigger_seed
from cleanclip_core.corpus import CLASSNAMES
from cleanclip_core.data.loaders import EvaluationSet, PoisonedTrainingSet, fit_image, read_rgb, triggered_image
from cleanclip_core.errors import UserError
from cleanclip_core.poison import poison_manifest

BADNET = {"patch_size": 16, "pattern": "random", "location": "random"}
ATTACK_SEED = 11


@pytest.fixture(scope="module")
def badnet_trigger():
    return get_attack("badnet").build_trigger(BADNET, ATTACK_SEED)


@pytest.fixture(scope="module")
def poisoned(shapes_shards) -> pa.Table:
    return poison_manifest(
        shapes_shards.manifest,
        get_attack("badnet"),
        attack_name="badnet",
        target_label="banana",
        n_poisons=20,
        seed=ATTACK_SEED,
    )


def training_set(shapes_shards, manifest, trigger=None, image_size=None, index=None):
    return PoisonedTrainingSet(
        manifest,
        shapes_shards.shard_index if index is None else index,
        shapes_shards.shards_dir,
        image_size or shapes_shards.image_size,
        trigger,
    )


def member_image(shapes_shards, shard: str, key: str) -> torch.Tensor:
    """The image of `key` decoded straight from its tar member, uint8 [3, H, W]."""
    with tarfile.open(shapes_shards.shards_dir / f"{shard}.tar") as tar:
        data = tar.extractfile(f"{key}.jpg").read()
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return decode_image(encoded, mode=ImageReadMode.RGB)


def items(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def assert_same_items(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key]


def test_training_set_has_one_8_bit_item_per_manifest_row(shapes_shards, poisoned, badnet_trigger):
    dataset = training_set(shapes_shards, poisoned, badnet_trigger)
    assert len(dataset) == poisoned.num_rows == shapes_shards.manifest.num_rows == 60
    for index, item in enumerate(items(dataset)):
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
        assert item["index"] == index
        assert item["caption"] == poisoned["caption"][index].as_py()
        assert item["is_poison"] is poisoned["is_poison"][index].as_py()


def test_training_image_equals_a_direct_decode_of_its_tar_member(shapes_shards, poisoned):
    dataset = training_set(shapes_shards, poisoned)
    for index in (0, 24, 25, 59):  # both ends of both shards
        row = poisoned.slice(index, 1).to_pylist()[0]
        decoded = member_image(shapes_shards, row["shard"], row["key"])
        assert torch.equal(dataset[index]["image"], decoded)


def test_poisoned_rows_carry_their_seeded_trigger_and_clean_rows_none(
    shapes_shards, poisoned, badnet_trigger
):
    clean = items(training_set(shapes_shards, poisoned))
    triggered = items(training_set(shapes_shards, poisoned, badnet_trigger))
    seeds = poisoned["trigger_seed"].to_pylist()
    assert sum(item["is_poison"] for item in triggered) == 20
    for before, after, seed in zip(clean, triggered, seeds):
        if after["is_poison"]:
            assert torch.equal(after["image"], triggered_image(before["image"], badnet_trigger, seed))
            assert not torch.equal(after["image"], before["image"])
        else:
            assert torch.equal(after["image"], before["image"])


def test_two_constructions_give_identical_items(shapes_shards, poisoned, badnet_trigger):
    assert_same_items(
        items(training_set(shapes_shards, poisoned, badnet_trigger)),
        items(training_set(shapes_shards, poisoned, badnet_trigger)),
    )


def batches(dataset, num_workers: int) -> list[dict]:
    return list(DataLoader(dataset, batch_size=16, num_workers=num_workers))


def test_data_loader_with_two_workers_gives_the_batches_of_one_process(
    shapes_shards, poisoned, badnet_trigger
):
    dataset = training_set(shapes_shards, poisoned, badnet_trigger)
    dataset[0]  # the parent's open shard handles must not leak into the forked workers
    single, workers = batches(dataset, 0), batches(dataset, 2)
    assert len(single) == len(workers) == 4
    for a, b in zip(single, workers):
        assert a["image"].shape == (16, 3, 32, 32) or a["image"].shape == (12, 3, 32, 32)
        assert torch.equal(a["image"], b["image"])
        assert a["caption"] == b["caption"]
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["is_poison"], b["is_poison"])


def test_pickled_training_set_reads_the_same_items(shapes_shards, poisoned, badnet_trigger):
    dataset = training_set(shapes_shards, poisoned, badnet_trigger)
    expected = items(dataset)
    assert_same_items(items(pickle.loads(pickle.dumps(dataset))), expected)


@pytest.mark.parametrize("image_size", [24, 48])
def test_training_images_are_resized_when_the_model_size_differs(
    shapes_shards, poisoned, image_size
):
    dataset = training_set(shapes_shards, poisoned, image_size=image_size)
    row = poisoned.slice(7, 1).to_pylist()[0]
    image = dataset[7]["image"]
    assert image.shape == (3, image_size, image_size)
    decoded = member_image(shapes_shards, row["shard"], row["key"])
    assert torch.equal(image, fit_image(decoded, image_size))


def test_fit_image_center_crops_the_longer_side():
    image = torch.randint(0, 256, (3, 20, 40), dtype=torch.uint8)
    assert torch.equal(fit_image(image, 20), image[:, :, 10:30])
    assert fit_image(image, 10).shape == (3, 10, 10)


def test_a_triggered_image_is_the_trigger_in_8_bits_and_leaves_other_pixels_alone(badnet_trigger):
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    in_unit_range = badnet_trigger(image / 255, 5)
    triggered = triggered_image(image, badnet_trigger, 5)
    assert triggered.dtype == torch.uint8
    touched = (in_unit_range != image / 255).any(dim=0)
    assert 0 < touched.sum() < 32 * 32
    assert torch.equal(triggered[:, ~touched], image[:, ~touched])
    assert (triggered / 255 - in_unit_range).abs().max() <= 0.5 / 255 + 1e-6


def test_a_triggered_image_rounds_to_the_nearest_8_bit_level():
    def half_way(image: torch.Tensor, seed: int) -> torch.Tensor:  # a blend landing between levels
        return torch.full_like(image, 127.6 / 255)

    assert triggered_image(torch.zeros(3, 2, 2, dtype=torch.uint8), half_way, 0).unique().tolist() == [128]


def test_keys_missing_from_the_shard_index_are_reported(shapes_shards, poisoned):
    index = shapes_shards.shard_index
    missing_key = index["key"][4].as_py()
    partial_index = index.filter(pc.not_equal(index["key"], missing_key))
    with pytest.raises(UserError, match=f"1 manifest keys are missing.*{missing_key}"):
        training_set(shapes_shards, poisoned, index=partial_index)


def test_an_image_zeroed_in_its_shard_names_the_shard_and_the_sample_and_removes_the_listing(shapes_shards, shards_copy, poisoned):
    shards, listing = shards_copy
    row = 7
    key, shard, offset, size = (shapes_shards.shard_index[column][row].as_py() for column in ("key", "shard", "offset", "size"))
    with open(shards / f"{shard}.tar", "r+b") as tar:  # the same size: the listing's size check passes
        tar.seek(offset)
        tar.write(bytes(size))
    dataset = PoisonedTrainingSet(poisoned, shapes_shards.shard_index, shards, shapes_shards.image_size, trigger=None)
    dataset[poisoned["key"].to_pylist().index(key) - 1]  # its neighbour decodes
    with pytest.raises(UserError) as error:
        dataset[poisoned["key"].to_pylist().index(key)]
    assert str(error.value) == (
        f"shard file {shards / shard}.tar: the image of sample {key} cannot be decoded (Unsupported image file); "
        f"removed {listing}: the next run downloads shard {shard} again, the others are kept in {shards}.partial"
    )
    assert not listing.exists()


def test_manifest_without_trigger_columns_is_refused(shapes_shards):
    with pytest.raises(UserError, match="is_poison, trigger_seed"):
        training_set(shapes_shards, shapes_shards.manifest)


@pytest.fixture(scope="module")
def eval_folder_set(shapes_shards) -> EvaluationSet:
    return EvaluationSet.from_image_folder(shapes_shards.corpus.eval_dir, 32)


def test_image_folder_labels_follow_the_sorted_class_folders(eval_folder_set):
    assert eval_folder_set.classnames == sorted(CLASSNAMES)
    assert len(eval_folder_set) == 20
    for index, (path, label) in enumerate(eval_folder_set.samples):
        assert path.parent.name == eval_folder_set.classnames[label]
        item = eval_folder_set[index]
        assert item["label"] == label and item["index"] == index
        # the generated eval images are 64 px: this is the resize path
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8


def test_image_folder_takes_given_class_names(shapes_shards):
    names = [f"class {i}" for i in range(len(CLASSNAMES))]
    dataset = EvaluationSet.from_image_folder(shapes_shards.corpus.eval_dir, 32, classnames=names)
    assert dataset.classnames == names


def test_evaluation_trigger_uses_the_fixed_test_seeds(
    shapes_shards, eval_folder_set, badnet_trigger
):
    def triggered(attack_seed):
        return EvaluationSet.from_image_folder(
            shapes_shards.corpus.eval_dir, 32, trigger=badnet_trigger, attack_seed=attack_seed
        )

    first = items(triggered(ATTACK_SEED))
    for index, (clean, item) in enumerate(zip(items(eval_folder_set), first)):
        seed = test_trigger_seed(ATTACK_SEED, index)
        assert torch.equal(item["triggered"], triggered_image(clean["image"], badnet_trigger, seed))
        assert torch.equal(item["image"], clean["image"])  # the clean image of the same decode
        assert item["label"] == clean["label"]
    assert "triggered" not in eval_folder_set[0]
    assert_same_items(items(triggered(ATTACK_SEED)), first)
    assert not torch.equal(triggered(ATTACK_SEED + 1)[0]["triggered"], first[0]["triggered"])


def write_labels_csv(path: Path, rows: list[tuple[str, str]], header=("image", "label")) -> Path:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_labels_csv_gives_the_images_and_labels_it_lists(shapes_shards, eval_folder_set, tmp_path):
    rows = [
        (os.path.relpath(path, tmp_path), str(CLASSNAMES.index(path.parent.name)))
        for path, _ in eval_folder_set.samples
    ]
    csv_path = write_labels_csv(tmp_path / "labels.csv", rows)
    dataset = EvaluationSet.from_labels_csv(csv_path, list(CLASSNAMES), 32)
    assert len(dataset) == len(eval_folder_set)
    for item, (path, _) in zip(items(dataset), eval_folder_set.samples):
        assert torch.equal(item["image"], eval_folder_set[item["index"]]["image"])
        assert dataset.classnames[item["label"]] == path.parent.name


def test_missing_evaluation_folder_is_reported(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        EvaluationSet.from_image_folder(tmp_path / "absent", 32)


def test_evaluation_folder_without_images_is_reported(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="hold no image"):
        EvaluationSet.from_image_folder(tmp_path, 32)


def test_class_name_count_must_match_the_folders(shapes_shards):
    with pytest.raises(UserError, match="10 class folders but 2 class names"):
        EvaluationSet.from_image_folder(shapes_shards.corpus.eval_dir, 32, classnames=["a", "b"])


def some_eval_image(shapes_shards, tmp_path) -> str:
    return os.path.relpath(next(shapes_shards.corpus.eval_dir.glob("*/*.png")), tmp_path)


@pytest.mark.parametrize(
    "header, label, message",
    [
        (("path", "label"), "0", "lacks the column.*image"),
        (("image", "label"), "10", "1 evaluation labels are outside \\[0, 10\\)"),
        (("image", "label"), "-1", "outside"),
        (("image", "label"), "cat", "labels.csv:2: label 'cat' is not an integer"),
        (("image", "label"), "", "labels.csv:2: label '' is not an integer"),
    ],
)
def test_bad_labels_csv_is_reported(shapes_shards, tmp_path, header, label, message):
    rows = [(some_eval_image(shapes_shards, tmp_path), label)]
    csv_path = write_labels_csv(tmp_path / "labels.csv", rows, header)
    with pytest.raises(UserError, match=message):
        EvaluationSet.from_labels_csv(csv_path, list(CLASSNAMES), 32)


def test_missing_labels_csv_and_listed_images_are_reported(shapes_shards, tmp_path):
    with pytest.raises(UserError, match="labels file .* does not exist"):
        EvaluationSet.from_labels_csv(tmp_path / "labels.csv", list(CLASSNAMES), 32)
    rows = [(some_eval_image(shapes_shards, tmp_path), "0"), ("gone/0.png", "1")]
    csv_path = write_labels_csv(tmp_path / "labels.csv", rows)
    with pytest.raises(UserError, match="1 images listed in .* do not exist .*gone/0.png"):
        EvaluationSet.from_labels_csv(csv_path, list(CLASSNAMES), 32)


def test_a_labels_csv_with_a_bom_is_read_and_one_in_latin1_names_its_line(shapes_shards, tmp_path):
    image = some_eval_image(shapes_shards, tmp_path)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(f"\ufeffimage,label\n{image},3\n".encode())
    assert EvaluationSet.from_labels_csv(csv_path, list(CLASSNAMES), 32).samples[0][1] == 3
    csv_path.write_bytes(f"image,label\n{image},3\nchâteau.png,1\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"labels\.csv:3: not UTF-8 text"):
        EvaluationSet.from_labels_csv(csv_path, list(CLASSNAMES), 32)


def image_of_mode(path, mode: str) -> None:
    """An 8 px image of `mode` whose every pixel is mid grey, saved by its suffix's format."""
    grey = {"1": 1, "L": 128, "LA": (128, 255), "P": 0, "RGBA": (128, 128, 128, 255),
            "CMYK": (0, 0, 0, 127), "I;16": 128 * 257}[mode]
    image = Image.new(mode, (8, 8), grey)
    if mode == "P":
        image.putpalette([128, 128, 128] * 256)
    image.save(path)


@pytest.mark.parametrize(
    "mode, suffix", [("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("I;16", "png")]
)
def test_evaluation_images_of_any_mode_are_read_as_their_rgb_colour(tmp_path, mode, suffix):
    # A 16-bit PNG used to become white: PIL's own conversion clips it.
    image_of_mode(tmp_path / f"grey.{suffix}", mode)
    pixels = np.asarray(read_rgb(tmp_path / f"grey.{suffix}"), dtype=int)
    assert pixels.shape == (8, 8, 3) and np.abs(pixels - 128).max() <= 1


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"])
def test_an_evaluation_image_that_cannot_be_decoded_is_named(tmp_path, content):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.jpg").write_bytes(content)
    dataset = EvaluationSet.from_image_folder(tmp_path, 32)
    with pytest.raises(UserError, match=r"cat/broken\.jpg: cannot decode the image"):
        dataset[0]


def test_an_error_in_a_loader_worker_is_reported_as_its_own_line(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"truncated")
    stage = (
        "from torch.utils.data import DataLoader\n"
        "from cleanclip_core.data.loaders import EvaluationSet\n"
        "from cleanclip_core.reporting import reported_step\n"
        "with reported_step():\n"
        f"    next(iter(DataLoader(EvaluationSet.from_image_folder({str(tmp_path)!r}, 32), num_workers=1)))\n"
    )
    result = subprocess.run([sys.executable, "-c", stage], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(lines) == 1 and re.fullmatch(r"error: .*cat/broken\.jpg: cannot decode the image \(.*\)", lines[0])
