"""RoCLIP (Yang et al., NeurIPS'23, BigML-CS-UCLA/RoCLIP): pretraining that breaks the link
between a poisoned image and its caption by matching each image to its nearest caption of a pool.

Epochs count from 1. On every epoch whose number is a multiple of `break_epoch`, each image of
the batch is matched to its nearest caption of the pool (cosine of normalized embeddings); the
loss is the symmetric InfoNCE between the images and those detached captions, so only the image
tower and the temperature learn from it; then the batch's captions enter the pool, first in,
first out. Every other epoch trains with the CLIP loss. The pool starts as random vectors drawn
from the run's seed and is kept in the resume state.

How the pool takes a batch (`pool_update`): `wrap` puts a batch that passes the pool's end at
its front, and the pool starts as unit vectors; `lightly` is RoCLIP's code, lightly 1.2.39's
memory bank: the part of a batch beyond the pool's end is dropped and the next batch starts at
the front, and the starting vectors are not normalized (lightly discards its normalize call), so
a caption matched from them is about sqrt(embed_dim) long. Both match on cosines.

As in RoCLIP's code, the text tower stays in the step's graph with a zero gradient on matching
epochs, so AdamW's momentum and weight decay still move it.

`roclip_aug` is RoCLIP's `--cross_aug` variant: every pair trains on an augmentation of its image
drawn afresh at each load (flip, random resized crop, colour jitter, grayscale, Gaussian blur:
SimCLR's, as RoCLIP's code has it) and on one EDA augmentation of its caption drawn once. The
blur's kernel (21 px) and sigma (0.1-2) are RoCLIP's at 224 px, scaled to the image's size.
"""

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from cleanclip_core.augment import augment_caption, seeded, synonym_source
from cleanclip_core.losses import gathered, mmcl_loss
from cleanclip_core.objectives import TermInputs, mmcl_term
from cleanclip_core.training.views import ViewContext, sample_seed

BLUR_KERNEL, BLUR_SIGMA, AT_SIZE = 21, (0.1, 2.0), 224  # RoCLIP's blur, at its image size


class CaptionPool(nn.Module):
    """A first-in first-out pool of caption embeddings, [size, dim], that takes batches as
    `update` says (`wrap` or `lightly`, see above)."""

    def __init__(self, size: int, dim: int, seed: int, update: str = "wrap") -> None:
        super().__init__()
        self.update = update
        captions = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("captions", captions if update == "lightly" else F.normalize(captions, dim=1))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))

    def nearest(self, images: torch.Tensor) -> torch.Tensor:
        """For each image embedding, the pool's caption of highest cosine, as the pool holds it."""
        # a wrapping pool holds unit vectors only; lightly's compares normalized copies
        captions = F.normalize(self.captions, dim=1) if self.update == "lightly" else self.captions
        similarities = F.normalize(images.float(), dim=1) @ captions.T
        return self.captions[similarities.argmax(dim=1)]

    def push(self, captions: torch.Tensor) -> None:
        """Put `captions` (normalized) in place of the oldest."""
        if self.update == "lightly":
            self._push_up_to_the_end(captions)
        else:
            self._push_wrapping(captions)

    def _push_wrapping(self, captions: torch.Tensor) -> None:
        """Past the pool's end, on at its front; of more than the pool holds, the last."""
        size, count = len(self.captions), len(captions)
        kept = captions[-size:].float()
        rows = (self.position + count - len(kept) + torch.arange(len(kept), device=kept.device)) % size
        self.captions[rows] = kept
        self.position.copy_((self.position + count) % size)

    def _push_up_to_the_end(self, captions: torch.Tensor) -> None:
        """lightly's: up to the pool's end, the rest dropped; once it is reached, on from the front."""
        size, position = len(self.captions), int(self.position)
        kept = captions[:size - position].float()
        self.captions[position:position + len(kept)] = kept
        self.position.fill_((position + len(kept)) % size)


def caption_pool(options: Mapping[str, Any], embed_dim: int, seed: int) -> CaptionPool:
    return CaptionPool(options["pool_size"], embed_dim, seed, options["pool_update"])


def matching_epoch(epoch: int, break_epoch: int) -> bool:
    return epoch % break_epoch == 0


def roclip_term(inputs: TermInputs) -> torch.Tensor:
    """The CLIP loss, or on a matching epoch the InfoNCE of the images against their nearest
    pool captions (the global batch's, as one process has it)."""
    if not matching_epoch(inputs.epoch, inputs.options["break_epoch"]):
        return mmcl_term(inputs)
    image, text = gathered(inputs.features["image"], inputs.features["text"], world_size=inputs.world_size)
    pool = inputs.state
    matched = pool.nearest(image.detach()).to(image.dtype)
    pool.push(text.detach())
    return mmcl_loss(image, matched, inputs.logit_scale) + 0 * text.sum()


@functools.cache
def image_augmentation(size: int) -> v2.Transform:
    """RoCLIP's image augmentation for `size` px images."""
    scale = size / AT_SIZE
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomResizedCrop(size, antialias=True),
        v2.RandomApply([v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.GaussianBlur(max(3, round(BLUR_KERNEL * scale) // 2 * 2 + 1), tuple(sigma * scale for sigma in BLUR_SIGMA)),
    ])


def augment_image(image: Tensor, seed: int) -> Tensor:
    """RoCLIP's augmentation of `image` (uint8 [3, S, S]) drawn with `seed`, uint8."""
    return seeded(image_augmentation(image.shape[-1]), image, seed)


@dataclass(frozen=True)
class AugmentedPairs:
    """RoCLIP's `--cross_aug` data, in place of the pair's image and caption."""

    synonyms: Callable[[str], Any]
    image_fields: tuple[str, ...] = ("image",)
    text_fields: tuple[str, ...] = ("text",)

    def __call__(self, pair: Mapping[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        # the caption's augmentation is drawn once, as RoCLIP's code draws it when it loads the data
        return {"image": augment_image(pair["image"], sample_seed(seed, epoch)),
                "text": augment_caption(pair["caption"], seed, 0, self.synonyms)}


def augmented_pairs(context: ViewContext) -> AugmentedPairs:
    return AugmentedPairs(synonym_source(context.synonyms))
