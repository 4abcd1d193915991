"""What a training step sees of a sample: normalized image and tokens, plus augmented views.

The augmented views (for the in-modal loss) are drawn from (run seed, sample index, epoch), so
every epoch differs and a resumed run redraws exactly what an uninterrupted one drew.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cleanclip_core.augment import SynonymSource, augment_caption, augment_image
from cleanclip_core.data.loaders import PoisonedTrainingSet

Tokenizer = Callable[[list[str]], torch.Tensor]


def sample_seed(seed: int, index: int) -> int:
    """A per-sample seed derived from the run's seed."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


class TrainingViews(Dataset):
    """Item i: image and text (tokens) of pair i, and their augmented views when asked for."""

    def __init__(
        self,
        pairs: PoisonedTrainingSet,
        tokenizer: Tokenizer,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        synonyms: SynonymSource | None,
        seed: int,
    ) -> None:
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.synonyms = synonyms
        self.seed = seed
        self.epoch = 0

    @property
    def augments(self) -> bool:
        return self.synonyms is not None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        item = {
            "image": self.normalize(pair["image"]),
            "text": self.tokenizer([pair["caption"]])[0],
            "index": index,
            "is_poison": pair["is_poison"],
        }
        if "label" in pair:
            item["label"] = pair["label"]
        if self.augments:
            seed = sample_seed(self.seed, index)
            image_seed = sample_seed(seed, self.epoch)
            caption = augment_caption(pair["caption"], seed, self.epoch, self.synonyms)
            item["augmented_image"] = self.normalize(augment_image(pair["image"], image_seed))
            item["augmented_text"] = self.tokenizer([caption])[0]
        return item
