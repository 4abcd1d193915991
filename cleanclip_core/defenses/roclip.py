"""RoCLIP (Yang et al., NeurIPS'23, BigML-CS-UCLA/RoCLIP): pretraining that breaks the link
between a poisoned image and its caption by matching each image to its nearest caption of a pool.

Epochs count from 1. On every epoch whose number is a multiple of `break_epoch`, each image of
the batch is matched to its nearest caption of the pool (cosine of normalized embeddings); the
loss is the symmetric InfoNCE between the images and those detached captions, so only the image
tower and the temperature learn from it; then the batch's captions enter the pool, first in,
first out. Every other epoch trains with the CLIP loss. The pool starts as random unit vectors
drawn from the run's seed and is kept in the resume state.

As in RoCLIP's code, the text tower stays in the step's graph with a zero gradient on matching
epochs, so AdamW's momentum and weight decay still move it. Not built: RoCLIP's variant with
augmented images and captions (`--cross_aug`).
"""

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cleanclip_core.losses import gathered, mmcl_loss
from cleanclip_core.objectives import TermInputs, mmcl_term


class CaptionPool(nn.Module):
    """A first-in first-out pool of normalized caption embeddings, [size, dim]."""

    def __init__(self, size: int, dim: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("captions", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))

    def nearest(self, images: torch.Tensor) -> torch.Tensor:
        """For each image embedding, the pool's caption of highest cosine."""
        similarities = F.normalize(images.float(), dim=1) @ self.captions.T
        return self.captions[similarities.argmax(dim=1)]

    def push(self, captions: torch.Tensor) -> None:
        """Put `captions` (normalized) in place of the oldest; of more than the pool holds, the last."""
        size, count = len(self.captions), len(captions)
        kept = captions[-size:].float()
        rows = (self.position + count - len(kept) + torch.arange(len(kept), device=kept.device)) % size
        self.captions[rows] = kept
        self.position.copy_((self.position + count) % size)


def caption_pool(options: Mapping[str, Any], embed_dim: int, seed: int) -> CaptionPool:
    return CaptionPool(options["pool_size"], embed_dim, seed)


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
