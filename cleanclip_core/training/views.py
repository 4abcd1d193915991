"""What a training step sees of a sample: normalized image and tokens, plus the extra views
that the objective's terms and the defense ask for.

A view source, named by an entry of the registry VIEWS (cleanclip_core.terms), is built once
per run from a `ViewContext`; it returns for a pair (its image, uint8 [3, S, S], and caption) a
dict of fields: images (uint8, or float in [0, 1]), captions (str), which are tokenized, and
flags, passed through. A field named `image` (or `text`)
replaces the pair's own image (or caption): a perturbed view; every other field is an extra view. Images
leave the loader as they are: 8-bit ones are a quarter of the bytes to collate and to copy to
the GPU, where the training step scales and normalizes the batch.
Views are drawn from (run seed, sample index, epoch), so every epoch differs and a resumed run
redraws exactly what an uninterrupted one drew.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cleanclip_core.augment import augment_caption, augment_image, synonym_source
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.registry import resolve
from cleanclip_core.terms import VIEWS

Tokenizer = Callable[[list[str]], torch.Tensor]


def sample_seed(seed: int, index: int) -> int:
    """A per-sample seed derived from the run's seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


@dataclass(frozen=True)
class ViewContext:
    """What a view source may depend on: the run's captions (one per pair, in order) and seed,
    its lexical resource (`synonyms`: wordnet or corpus), the defense's options and when the
    EDA views of captions are drawn (`eda`: per_epoch or once)."""

    captions: Sequence[str]
    seed: int
    synonyms: str
    options: Mapping[str, Any] = field(default_factory=dict)
    eda: str = "per_epoch"


class ViewSource(Protocol):
    image_fields: tuple[str, ...]
    text_fields: tuple[str, ...]

    def __call__(self, pair: Mapping[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        """The fields of sample `pair["index"]` in `epoch`; `seed` is the sample's seed."""


@dataclass(frozen=True)
class AugmentedViews:
    """CleanCLIP's in-modal views: AutoAugment of the image, drawn every epoch, and EDA of the
    caption, drawn every epoch or, `eda_once`, once for the run (the first epoch's), as
    CleanCLIP's code draws them when it loads the data."""

    synonyms: Callable[[str], Any]
    eda_once: bool = False
    image_fields: tuple[str, ...] = ("augmented_image",)
    text_fields: tuple[str, ...] = ("augmented_text",)

    def __call__(self, pair: Mapping[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        return {
            "augmented_image": augment_image(pair["image"], sample_seed(seed, epoch)),
            "augmented_text": augment_caption(pair["caption"], seed, 0 if self.eda_once else epoch, self.synonyms),
        }


def augmented_views(context: ViewContext) -> AugmentedViews:
    return AugmentedViews(synonym_source(context.synonyms), eda_once=context.eda == "once")


def build_views(names: tuple[str, ...], context: ViewContext) -> list[ViewSource]:
    """The view sources of a run, from the registry VIEWS (cleanclip_core.terms)."""
    return [resolve(VIEWS.entry(name).build)(context) for name in names]


def view_fields(sources: list[ViewSource]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The extra image and text fields of a batch: those of the sources, less `image` and `text`."""
    images = tuple(f for source in sources for f in source.image_fields if f != "image")
    texts = tuple(f for source in sources for f in source.text_fields if f != "text")
    return images, texts


class CaptionTokens:
    """A tokenizer's tokens of one caption, remembered for the last `size` distinct captions.

    Tokenizing was a third of the tiny default's data loading (a profiled MMCL+SSL epoch: 3.9 of
    10.9 s, normalizing included), and the captions of a generated corpus, and their EDA views,
    recur across samples and epochs; a web corpus's rarely do.
    """

    def __init__(self, tokenizer: Tokenizer, size: int = 1 << 16) -> None:
        self.tokenizer = tokenizer
        self.size = size
        self._known: dict[str, torch.Tensor] = {}

    def __call__(self, caption: str) -> torch.Tensor:
        tokens = self._known.get(caption)
        if tokens is None:
            if len(self._known) >= self.size:
                del self._known[next(iter(self._known))]  # the oldest
            tokens = self._known[caption] = self.tokenizer([caption])[0]
        return tokens


def collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    """torch's default_collate, stacking each image field ([3, H, W] tensors) in pixel-interleaved
    order, the memory layout the JPEG decoder and PIL give: a plain copy, at 40% of the time of
    reordering 224 px images into planes, into a batch in channels-last memory, which a
    channels-last ResNet takes as it is."""
    images = [name for name, value in items[0].items() if torch.is_tensor(value) and value.ndim == 3]
    batch = default_collate([item | {name: item[name].permute(1, 2, 0) for name in images} for item in items])
    return batch | {name: batch[name].permute(0, 3, 1, 2) for name in images}


class TrainingViews(Dataset):
    """Item i: image (uint8) and text (tokens) of pair i, the fields of the view sources, and
    its value of each of the epoch's flags (`epoch_flags`: a boolean per pair, set before the
    epoch by a method that splits its data anew every epoch)."""

    def __init__(self, pairs: PoisonedTrainingSet, tokenizer: Tokenizer, sources: list[ViewSource], seed: int) -> None:
        self.pairs = pairs
        self.tokens = CaptionTokens(tokenizer)
        self.sources = sources
        self.seed = seed
        self.epoch = 0
        self.epoch_flags: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        fields = {"image": pair["image"], "text": pair["caption"]}
        seed = sample_seed(self.seed, index)
        for source in self.sources:
            fields |= source(pair | {"image": fields["image"]}, seed, self.epoch)
        item = {name: self.tokens(value) if isinstance(value, str) else value for name, value in fields.items()}
        item |= {name: value for name, value in pair.items() if name not in ("image", "caption")}
        return item | {name: bool(flags[index]) for name, flags in self.epoch_flags.items()}
