"""Map-style datasets that feed training and evaluation: 8-bit images at the model's size.

Triggers are applied here, on the fly, from each row's seed, and the triggered image is kept in
8 bits, as a poisoned image file would hold it; scaling to float and normalization are the
caller's (`models.normalization_for`: the training step applies it on the device, to the batch).
Random access keeps shuffling and resuming exact.
"""

import csv
import io
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image

from cleanclip_core.attacks import test_trigger_seed
from cleanclip_core.attacks.parts import Trigger
from cleanclip_core.classes import folder_classnames, is_image
from cleanclip_core.data.shard_listing import distrust_shards
from cleanclip_core.errors import UserError
from cleanclip_core.text import read_utf8

Transform = Callable[[torch.Tensor], torch.Tensor]

TRAINING_COLUMNS = ("key", "caption", "is_poison", "trigger_seed")
WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit PNGs and TIFFs


def fit_image(image: torch.Tensor, image_size: int) -> torch.Tensor:
    """A decoded uint8 image [3, H, W] at the model's size: uint8 [3, S, S].

    An image of another size has its shorter side resized to S (bicubic, antialiased, on uint8 so
    the values stay in range) and is center-cropped; an S x S image is returned as it is.
    """
    if image.shape[-2:] != (image_size, image_size):
        if min(image.shape[-2:]) != image_size:
            image = F.resize(
                image, image_size, interpolation=F.InterpolationMode.BICUBIC, antialias=True
            )
        image = F.center_crop(image, image_size)
    return image


def triggered_image(image: torch.Tensor, trigger: Trigger, trigger_seed: int) -> torch.Tensor:
    """A uint8 image with the trigger drawn from `trigger_seed`, applied in [0, 1], back in uint8,
    rounded to the nearest level (torchvision's to_dtype truncates: a blend would lose half a
    level on average)."""
    applied = trigger(F.to_dtype(image, torch.float32, scale=True), trigger_seed)
    return applied.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def _locate(manifest: pa.Table, shard_index: pa.Table) -> pa.Table:
    """The shard index rows of the manifest's keys, in manifest order."""
    positions = pc.index_in(manifest["key"], value_set=shard_index["key"])
    if positions.null_count:
        missing = manifest["key"].filter(pc.is_null(positions))
        raise UserError(
            f"{len(missing)} manifest keys are missing from the shard index (e.g. {missing[0]}); "
            f"rebuild the shard index from the shards the manifest was built from"
        )
    return shard_index.take(positions)


def _class_labels(manifest: pa.Table) -> tuple[list[str] | None, np.ndarray | None]:
    """The sorted class names of a labelled manifest (a `classname` column) and each row's index
    into them; (None, None) for a manifest without labels."""
    if "classname" not in manifest.column_names:
        return None, None
    classnames = manifest["classname"]
    if classnames.null_count:
        raise UserError(f"{classnames.null_count} rows of the labelled training pairs have no classname")
    encoded = pc.unique(classnames).sort()
    return encoded.to_pylist(), pc.index_in(classnames, value_set=encoded).to_numpy()


class PoisonedTrainingSet(Dataset):
    """Training pairs of a poisoned manifest, read from webdataset shards by byte offset.

    Item i is manifest row i: {image [3, S, S] uint8, caption, index, is_poison},
    its class `label` (an index into `classnames`) when the manifest has a `classname` column,
    and the row's value of each boolean column named in `flags` (e.g. a defense's selection).
    A poisoned row's image is `triggered_image(image, trigger, trigger_seed)`; with trigger None
    every image is clean (the view the poisoned rows had before poisoning).
    """

    def __init__(
        self,
        poisoned_manifest: pa.Table,
        shard_index: pa.Table,
        shards_dir: Path,
        image_size: int,
        trigger: Trigger | None,
        flags: tuple[str, ...] = (),
    ) -> None:
        missing_columns = [c for c in (*TRAINING_COLUMNS, *flags) if c not in poisoned_manifest.column_names]
        if missing_columns:
            raise UserError(f"the poisoned manifest lacks columns {', '.join(missing_columns)}")
        located = _locate(poisoned_manifest, shard_index)
        shards = located["shard"].combine_chunks().dictionary_encode()
        self._shard_names: list[str] = shards.dictionary.to_pylist()
        self._shard_codes = shards.indices.to_numpy()
        self._offsets = located["offset"].to_numpy()
        self._sizes = located["size"].to_numpy()
        self._keys = located["key"].combine_chunks()
        # Arrow and numpy arrays, not Python lists: forked workers share them without copying.
        self._captions = poisoned_manifest["caption"].combine_chunks()
        self.is_poison: np.ndarray = poisoned_manifest["is_poison"].to_numpy()
        self._trigger_seeds = poisoned_manifest["trigger_seed"].fill_null(0).to_numpy()
        self.classnames, self._labels = _class_labels(poisoned_manifest)
        self._flags = {name: poisoned_manifest[name].to_numpy() for name in flags}
        self.shards_dir = Path(shards_dir)
        self.image_size = image_size
        self.trigger = trigger
        self._files: dict[int, BinaryIO] = {}
        self._files_pid = os.getpid()

    @classmethod
    def from_files(
        cls,
        poisoned_manifest: Path,
        shard_index: Path,
        shards_dir: Path,
        image_size: int,
        trigger: Trigger | None,
        flags: tuple[str, ...] = (),
    ) -> "PoisonedTrainingSet":
        return cls(
            pq.read_table(poisoned_manifest), pq.read_table(shard_index), shards_dir,
            image_size, trigger, flags=flags,
        )

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def captions(self) -> list[str]:
        """Every row's caption (the poisoned one where poisoned), in row order."""
        return self._captions.to_pylist()

    def __getitem__(self, index: int) -> dict[str, Any]:
        is_poison = bool(self.is_poison[index])
        image = fit_image(self._decoded(index), self.image_size)
        if is_poison and self.trigger is not None:
            image = triggered_image(image, self.trigger, int(self._trigger_seeds[index]))
        item = {
            "image": image,
            "caption": self._captions[index].as_py(),
            "index": index,
            "is_poison": is_poison,
        }
        if self._labels is not None:
            item["label"] = int(self._labels[index])
        return item | {name: bool(values[index]) for name, values in self._flags.items()}

    def _decoded(self, index: int) -> torch.Tensor:
        """Row `index`'s stored image, uint8 [3, H, W]. One that cannot be decoded (its shard was
        damaged after the download) is a UserError naming the shard file and the sample's key,
        and the shards' listing is removed, so that the next run downloads them again."""
        try:
            return decode_image(self._image_bytes(index), mode=ImageReadMode.RGB)
        except RuntimeError as error:
            # torchvision's message starts with its function and source line
            reason = re.sub(r"^\w+, \S+:\d+, ", "", str(error)).split(". ")[0]
            shard = self._shard_path(self._shard_codes[index])
            problem = f"shard file {shard}: the image of sample {self._keys[index].as_py()} cannot be decoded ({reason})"
            raise distrust_shards(self.shards_dir, problem, shard) from None

    def _image_bytes(self, index: int) -> torch.Tensor:
        buffer = bytearray(int(self._sizes[index]))
        shard = self._shard_file(int(self._shard_codes[index]))
        shard.seek(int(self._offsets[index]))
        if shard.readinto(buffer) != len(buffer):
            problem = f"shard file {shard.name} ends before the image of sample {self._keys[index].as_py()}"
            raise distrust_shards(self.shards_dir, problem, Path(shard.name))
        return torch.frombuffer(buffer, dtype=torch.uint8)

    def _shard_file(self, code: int) -> BinaryIO:
        # A forked worker inherits the parent's handles, whose file position the parent shares.
        if self._files_pid != os.getpid():
            self._files, self._files_pid = {}, os.getpid()
        file = self._files.get(code)
        if file is None:
            path = self._shard_path(code)
            if not path.is_file():
                raise distrust_shards(self.shards_dir, f"shard file {path} does not exist", path)
            file = self._files[code] = open(path, "rb")
        return file

    def _shard_path(self, code: int) -> Path:
        return self.shards_dir / f"{self._shard_names[code]}.tar"

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers receive a pickled copy: open handles do not travel.
        return self.__dict__ | {"_files": {}}


class EvaluationSet(Dataset):
    """Labelled evaluation images: {image, label, index}, the image [3, S, S] in uint8, or as
    `transform` (e.g. normalization_for's) returns it.

    With a trigger, item i also holds `triggered`: the same decoded image with the fixed test
    trigger, `triggered_image(image, trigger, test_trigger_seed(attack_seed, i))`, the same for
    every checkpoint evaluated. Each image is decoded and fitted once for both.
    """

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classnames: list[str],
        image_size: int,
        trigger: Trigger | None = None,
        attack_seed: int = 0,
        transform: Transform | None = None,
    ) -> None:
        if not samples:
            raise UserError("the evaluation set has no images")
        outside = [(path, label) for path, label in samples if not 0 <= label < len(classnames)]
        if outside:
            path, label = outside[0]
            raise UserError(
                f"{len(outside)} evaluation labels are outside [0, {len(classnames)}) for "
                f"{len(classnames)} class names (e.g. label {label} of {path})"
            )
        self.samples = samples
        self.classnames = classnames
        self.image_size = image_size
        self.trigger = trigger
        self.attack_seed = attack_seed
        self.transform = transform

    @classmethod
    def from_image_folder(
        cls,
        root: Path,
        image_size: int,
        classnames: list[str] | None = None,
        *,
        trigger: Trigger | None = None,
        attack_seed: int = 0,
        transform: Transform | None = None,
    ) -> "EvaluationSet":
        """One folder per class, labels in sorted folder order; class names default to the folders'.

        Pass `classnames` where folders are ids (ImageNet's wnids), in the same sorted order.
        """
        folders, classnames = folder_classnames(Path(root), classnames)
        samples = [
            (path, label)
            for label, folder in enumerate(folders)
            for path in sorted(folder.iterdir())
            if is_image(path)
        ]
        return cls(samples, list(classnames), image_size, trigger, attack_seed, transform)

    @classmethod
    def from_labels_csv(
        cls,
        csv_path: Path,
        classnames: list[str],
        image_size: int,
        *,
        trigger: Trigger | None = None,
        attack_seed: int = 0,
        transform: Transform | None = None,
    ) -> "EvaluationSet":
        """CleanCLIP's layout: a CSV with the header `image,label`.

        image is a path relative to the CSV's folder, label an index into `classnames`.
        """
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise UserError(f"evaluation labels file {csv_path} does not exist")
        reader = csv.DictReader(io.StringIO(read_utf8(csv_path, "labels file"), newline=""))
        missing = {"image", "label"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(
                f"{csv_path} lacks the column(s) {', '.join(sorted(missing))}; "
                f"expected a header 'image,label'"
            )
        samples = [
            (csv_path.parent / row["image"], _label(row["label"], csv_path, reader.line_num))
            for row in reader
        ]
        absent = [path for path, _ in samples if not path.is_file()]
        if absent:
            raise UserError(
                f"{len(absent)} images listed in {csv_path} do not exist (e.g. {absent[0]})"
            )
        return cls(samples, list(classnames), image_size, trigger, attack_seed, transform)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        image = fit_image(F.pil_to_tensor(read_rgb(path)), self.image_size)
        item = {"image": self._transformed(image), "label": label, "index": index}
        if self.trigger is not None:
            triggered = triggered_image(image, self.trigger, test_trigger_seed(self.attack_seed, index))
            item["triggered"] = self._transformed(triggered)
        return item

    def _transformed(self, image: torch.Tensor) -> torch.Tensor:
        return image if self.transform is None else self.transform(image)


def read_rgb(path: Path) -> Image.Image:
    """An image file as 8-bit RGB, whatever its mode; a file PIL cannot decode (truncated, not an
    image, a decompression bomb) is a UserError naming it."""
    try:
        with Image.open(path) as image:
            if image.mode in WIDE_INTEGER_MODES:  # PIL's conversion would clip them to white
                image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257).round().astype(np.uint8))
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise UserError(f"{path}: cannot decode the image ({error})") from None


def _label(text: str | None, csv_path: Path, line: int) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise UserError(f"{csv_path}:{line}: label {text!r} is not an integer class index") from None
