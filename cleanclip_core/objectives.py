"""Training objectives: weighted sums of loss terms, named in the config.

Pretraining uses `mmcl` or `mmcl_ssl`; cleaning uses e.g. `cleanclip` (MMCL + in-modal),
`ssl_only`, `mmcl_only` or `supervised`. The weights (the λ's) come from the config's
`objectives` table.
"""

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cleanclip_core.losses import inmodal_loss, mmcl_loss, supervised_loss


def needs_augmented_views(weights: Mapping[str, float]) -> bool:
    return weights.get("inmodal", 0) != 0


def needs_labels(weights: Mapping[str, float]) -> bool:
    return weights.get("supervised", 0) != 0


class ObjectiveNetwork(nn.Module):
    """What one training step runs: the CLIP model and, for the supervised term, a linear head
    over its image embeddings (CleanCLIP's supervised variant). Only the CLIP model is kept as
    the run's weights; the head is part of the resume state."""

    def __init__(self, clip: nn.Module, n_classes: int | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(clip.visual.output_dim, n_classes) if n_classes else None

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        image_features, text_features, logit_scale = self.clip(images, texts)[:3]
        outputs = {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}
        if self.head is not None:
            outputs["class_logits"] = self.head(image_features)
        return outputs


def objective_losses(
    network: nn.Module,
    batch: Mapping[str, Any],
    weights: Mapping[str, float],
    *,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, torch.Tensor]:
    """The loss terms with a non-zero weight, on this rank's part of the batch.

    `network` is an ObjectiveNetwork (or its DistributedDataParallel wrapper). Views go through
    one call of it, the augmented views appended to the batch, so gradients are synchronized
    once per step.
    """
    images, texts = batch["image"], batch["text"]
    augmented = needs_augmented_views(weights)
    if augmented:
        images = torch.cat([images, batch["augmented_image"]])
        texts = torch.cat([texts, batch["augmented_text"]])
    outputs = network(images, texts)
    image_features, text_features, logit_scale = (
        outputs["image_features"], outputs["text_features"], outputs["logit_scale"]
    )
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
    if needs_labels(weights):
        class_logits = outputs["class_logits"][: len(batch["label"])]
        terms["supervised"] = weights["supervised"] * supervised_loss(class_logits, batch["label"])
    return terms
