"""The zero-shot classes of the evaluation images, known before any model runs, and the target's
place among them. Torch-free: the config check reads them at DAG build, before any training job.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cleanclip_core import corpus
from cleanclip_core.errors import UserError
from cleanclip_core.text import read_utf8
from cleanclip_core.zero_shot_metadata import imagenet_classnames

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def class_folders(root: Path) -> list[Path]:
    """An ImageFolder's class folders in label (sorted) order, each holding at least one image;
    hidden folders and files (.ipynb_checkpoints, macOS's ._ files) are not classes or images.

    A folder without images would still be a zero-shot class that no image has, and so would
    change every image's ranking: it is an error, as in torchvision's ImageFolder.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"evaluation image folder {root} does not exist")
    folders = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not folders:
        raise UserError(f"{root} has no class folders; an ImageFolder holds one folder of images per class")
    empty = [folder for folder in folders if not any(map(is_image, folder.iterdir()))]
    if empty:
        suffixes = ", ".join(IMAGE_SUFFIXES)
        raise UserError(
            f"{len(empty)} class folder(s) of {root} hold no image ({suffixes}), e.g. {empty[0]}; "
            f"remove them or add their images, since each folder is a zero-shot class"
        )
    return folders


def read_classnames(source: str | None) -> list[str] | None:
    """Class names in label order: `imagenet` (open_clip's ImageNet-1K names), a UTF-8 text file
    with one name per line, or None (an ImageFolder's folder names)."""
    if source is None:
        return None
    if source == "imagenet":
        return imagenet_classnames()
    path = Path(source)
    if not path.is_file():
        raise UserError(f"class names file {path} does not exist")
    text = read_utf8(path, "class names")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path} holds no class names (one per line)")
    return names


def evaluation_classnames(config: Mapping[str, Any]) -> list[str]:
    """The class names zero-shot evaluation will rank, from the config and the files it names:
    the configured names, an ImageFolder's folder names, or the generated corpus's classes."""
    evaluation = config["evaluation"]
    named = read_classnames(evaluation["classnames"])
    images = evaluation["images"]
    if images is None:
        return named or sorted(corpus.CLASSNAMES)
    if Path(images).suffix == ".csv":
        if named is None:
            raise UserError(f"config: evaluation.classnames: the labels file {images} needs the class names of its labels")
        return named
    return folder_classnames(Path(images), named)[1]


def folder_classnames(root: Path, named: list[str] | None) -> tuple[list[Path], list[str]]:
    """An ImageFolder's class folders and their class names: `named` (e.g. for ImageNet's wnid
    folders), one per folder in sorted order, else the folders' names."""
    folders = class_folders(root)
    if named is not None and len(named) != len(folders):
        raise UserError(f"{root} has {len(folders)} class folders but {len(named)} class names were given")
    return folders, named or [folder.name for folder in folders]


def target_class_index(classnames: Sequence[str], target_label: str) -> int:
    """The index of `target_label` among the class names, matched exactly up to case."""
    matches = [i for i, name in enumerate(classnames) if name.casefold() == target_label.casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(
            f"target label {target_label!r} names several classes (indices {matches}); "
            f"rename the duplicates in the class names"
        )
    examples = ", ".join(repr(name) for name in classnames[:5])
    raise UserError(
        f"target label {target_label!r} is none of the {len(classnames)} class names "
        f"(e.g. {examples}); choose one of them"
    )
