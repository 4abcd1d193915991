"""The training objectives' terms: multimodal contrastive (MMCL), in-modal self-supervised, supervised.

Features are L2-normalized embeddings [B, D]; `logit_scale` is the exponentiated temperature, a
scalar tensor as open_clip's model returns it. With world_size > 1 the features of all ranks are
gathered (with gradients) so every rank computes the loss of the whole global batch.
"""

import functools

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_autograd
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import Tensor


@functools.cache
def _clip_loss(rank: int, world_size: int) -> ClipLoss:
    return ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)


def mmcl_loss(
    image_features: Tensor, text_features: Tensor, logit_scale: Tensor, *, rank: int = 0, world_size: int = 1
) -> Tensor:
    """Symmetric InfoNCE: each image against every caption and each caption against every image."""
    return _clip_loss(rank, world_size)(image_features, text_features, logit_scale)


def gathered(*features: Tensor, world_size: int) -> tuple[Tensor, ...]:
    """Aligned feature batches with the rows of every rank, in rank order, as one process has
    them; gathered with gradients, so a loss of the global batch gives each rank's rows their
    gradient."""
    if world_size == 1:
        return features
    return tuple(torch.cat(distributed_autograd.all_gather(batch)) for batch in features)


def gathered_flags(flags: Tensor, world_size: int) -> Tensor:
    """A boolean column of the batch with the rows of every rank, in rank order."""
    if world_size == 1:
        return flags
    every_rank = [torch.empty_like(flags, dtype=torch.uint8) for _ in range(world_size)]
    dist.all_gather(every_rank, flags.to(torch.uint8))
    return torch.cat(every_rank).bool()


def matching_loss(features: Tensor, matches: Tensor, logit_scale: Tensor) -> Tensor:
    """InfoNCE of each row of `features` against every row of `matches`, its own as the target."""
    logits = logit_scale * features @ matches.T
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def inmodal_loss(
    image_features: Tensor,
    augmented_image_features: Tensor,
    text_features: Tensor,
    augmented_text_features: Tensor,
    logit_scale: Tensor,
    *,
    world_size: int = 1,
) -> Tensor:
    """CleanCLIP's in-modal term: each image against every augmented image, each caption against
    every augmented caption, the matching view as the target; the mean of the two modalities."""
    image_features, augmented_image_features, text_features, augmented_text_features = gathered(
        image_features, augmented_image_features, text_features, augmented_text_features, world_size=world_size
    )
    return (
        matching_loss(image_features, augmented_image_features, logit_scale)
        + matching_loss(text_features, augmented_text_features, logit_scale)
    ) / 2


def supervised_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """CleanCLIP's supervised variant: cross-entropy of the linear head's class logits."""
    return F.cross_entropy(logits, labels)
