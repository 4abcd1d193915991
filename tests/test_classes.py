"""The evaluation's zero-shot classes, read before any model runs: ImageFolder class folders,
class-name files, the target's index among them, and the config check that uses them."""

import copy
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cleanclip_core.classes import (
    class_folders,
    evaluation_classnames,
    read_classnames,
    target_class_index,
)
from cleanclip_core.config import check_config, validate_config
from cleanclip_core.corpus import CLASSNAMES
from cleanclip_core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """An ImageFolder with `classes[name]` 8 px PNGs in each class folder."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (8, 8)).save(root / name / f"{index}.png")
    return root


def test_target_class_index_matches_the_class_name_up_to_case():
    assert target_class_index(["tench", "Banana", "goldfish"], "banana") == 1
    assert target_class_index(["tench", "banana"], "BANANA") == 1


def test_target_class_index_of_an_absent_label_lists_class_names():
    with pytest.raises(UserError, match="'tench', 'goldfish'"):
        target_class_index(["tench", "goldfish"], "banan")


def test_target_class_index_of_a_duplicated_class_name_is_an_error():
    with pytest.raises(UserError, match=r"several classes \(indices \[0, 2\]\)"):
        target_class_index(["missile", "tench", "Missile"], "missile")


def test_an_empty_class_folder_is_an_error_naming_it(tmp_path):
    # It used to be an extra zero-shot class that no image has: top-1 silently changed.
    root = image_folder(tmp_path / "val", {"cat": 2, "dog": 2})
    (root / "emu").mkdir()
    with pytest.raises(UserError, match=r"1 class folder\(s\) of .*val hold no image .* e\.g\. .*val/emu;"):
        class_folders(root)


def test_hidden_folders_and_files_are_neither_classes_nor_images(tmp_path):
    root = image_folder(tmp_path / "val", {"cat": 1, "dog": 1})
    (root / ".ipynb_checkpoints").mkdir()
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")  # a macOS AppleDouble file
    assert [folder.name for folder in class_folders(root)] == ["cat", "dog"]


def test_class_names_files_are_utf8_with_or_without_a_bom(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("\ufeffcrème brûlée\n\nbanana\n".encode())
    assert read_classnames(str(path)) == ["crème brûlée", "banana"]


def test_a_class_names_file_in_another_encoding_names_its_line(tmp_path):
    path = tmp_path / "names.txt"
    path.write_bytes("banana\ntench\ncrème brûlée\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"names\.txt:3: not UTF-8"):
        read_classnames(str(path))


def test_the_generated_corpus_classes_are_known_before_it_is_generated():
    config = validate_config({})
    assert evaluation_classnames(config) == sorted(CLASSNAMES)


def shapes_config(**attack) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["attacks"]["badnet"] |= attack
    return validate_config(config)


@pytest.mark.parametrize("target", ["banana", "stra"])
def test_a_target_that_is_no_evaluation_class_fails_the_config_check(target):
    # The schema's default target on the shapes corpus, and a typo: both were found only by the
    # evaluation, after pretraining.
    with pytest.raises(UserError, match=rf"config: attacks\.badnet\.target_label: target label '{target}' is none of the 10 class names"):
        check_config(shapes_config(target_label=target))


def test_the_target_is_checked_against_the_evaluation_folders(tmp_path):
    config = shapes_config()
    config["evaluation"]["images"] = str(image_folder(tmp_path / "val", {"star": 1, "circle": 1}))
    check_config(copy.deepcopy(config))
    (tmp_path / "val" / "star" / "0.png").unlink()
    with pytest.raises(UserError, match="hold no image"):
        check_config(config)
