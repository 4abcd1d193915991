"""Training objectives: weighted sums of loss terms, named in the config.

Pretraining uses `mmcl` or `mmcl_ssl`; cleaning uses e.g. `cleanclip` (MMCL + in-modal),
`ssl_only` or `mmcl_only`. The weights (the λ's) come from the config's `objectives` table.
"""

from collections.abc import Mapping
from typing import Any

import torch

from cleanclip_core.losses import inmodal_loss, mmcl_loss

def needs_augmented_views(weights: Mapping[str, float]) -> bool:
    return weights.get("inmodal", 0) != 0


def objective_losses(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    weights: Mapping[str, float],
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """The loss terms with a non-zero weight, on this rank's part of the batch.

    Views go through one call of `model` (the DistributedDataParallel wrapper when distributed),
    the augmented views appended to the batch, so gradients are synchronized once per step.
    """
    images, texts = batch["image"], batch["text"]
    augmented = needs_augmented_views(weights)
    if augmented:
        images = torch.cat([images, batch["augmented_image"]])
        texts = torch.cat([texts, batch["augmented_text"]])
    image_features, text_features, logit_scale = model(images, texts)[:3]
    distributed = {"rank": rank, "world_size": world_size}
    terms = {}
    if augmented:
        image_features, augmented_image_features = image_features.chunk(2)
        text_features, augmented_text_features = text_features.chunk(2)
        terms["inmodal"] = weights["inmodal"] * inmodal_loss(
            image_features, augmented_image_features, text_features, augmented_text_features,
            logit_scale, **distributed,
        )
    if weights.get("mmcl", 0) != 0:
        terms["mmcl"] = weights["mmcl"] * mmcl_loss(
            image_features, text_features, logit_scale, **distributed
        )
    return terms
