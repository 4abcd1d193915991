"""Training objectives: weighted sums of loss terms, named in the config.

Pretraining uses `mmcl` or `mmcl_ssl`; cleaning uses e.g. `cleanclip` (MMCL + in-modal),
`ssl_only`, `mmcl_only`, `supervised` or a defense's own terms. The weights (the λ's) come from
the config's `objectives` table; each term is an entry of the registry `TERMS`
(cleanclip_core.terms) that declares what it needs.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cleanclip_core.losses import inmodal_loss, mmcl_loss, supervised_loss
from cleanclip_core.registry import resolve
from cleanclip_core.terms import TERMS, Term


@dataclass(frozen=True)
class TermInputs:
    """What a term sees of one step: the normalized features of every view (`image`, `text` and
    each extra view's fields), the reference copy's features of `image` and `text` (when a term
    needs them), the logit scale, the batch itself (labels, flags), the supervised head's logits,
    the defense's options, the CLIP model being trained and its frozen reference copy (for a
    term of their parameters, e.g. a penalty on the distance between them), the epoch (from 1)
    and the method's state (a module whose buffers a term may update, e.g. RoCLIP's pool)."""

    features: Mapping[str, torch.Tensor]
    logit_scale: torch.Tensor
    batch: Mapping[str, Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    reference: Mapping[str, torch.Tensor] = field(default_factory=dict)
    class_logits: torch.Tensor | None = None
    rank: int = 0
    world_size: int = 1
    model: nn.Module | None = None
    reference_model: nn.Module | None = None
    epoch: int = 1
    state: nn.Module | None = None


def active_terms(weights: Mapping[str, float]) -> list[Term]:
    """The registered terms an objective weights above zero."""
    return [TERMS.entry(name) for name, weight in weights.items() if weight != 0]


def needed_views(weights: Mapping[str, float]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(view for term in active_terms(weights) for view in term.views))


def needs_labels(weights: Mapping[str, float]) -> bool:
    return any(term.needs_labels for term in active_terms(weights))


def needs_reference(weights: Mapping[str, float]) -> bool:
    return any(term.needs_reference for term in active_terms(weights))


def mmcl_term(inputs: TermInputs) -> torch.Tensor:
    return mmcl_loss(
        inputs.features["image"], inputs.features["text"], inputs.logit_scale,
        rank=inputs.rank, world_size=inputs.world_size,
    )


def inmodal_term(inputs: TermInputs) -> torch.Tensor:
    features = inputs.features
    return inmodal_loss(
        features["image"], features["augmented_image"], features["text"], features["augmented_text"],
        inputs.logit_scale, world_size=inputs.world_size,
    )


def supervised_term(inputs: TermInputs) -> torch.Tensor:
    return supervised_loss(inputs.class_logits, inputs.batch["label"])


class ObjectiveNetwork(nn.Module):
    """What one training step runs: the CLIP model and, for the supervised term, a linear head
    over its image embeddings (CleanCLIP's supervised variant), and the method's `state`, if it
    keeps one across steps. Only the CLIP model is kept as the run's weights; the head and the
    state are part of the resume state."""

    def __init__(self, clip: nn.Module, n_classes: int | None = None, state: nn.Module | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(clip.visual.output_dim, n_classes) if n_classes else None
        self.state = state

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        image_features, text_features, logit_scale = self.clip(images, texts)[:3]
        outputs = {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}
        if self.head is not None:
            outputs["class_logits"] = self.head(image_features)
        return outputs


def _split(features: torch.Tensor, fields: list[str], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return dict(zip(fields, features.split([len(batch[name]) for name in fields])))


def objective_losses(
    network: nn.Module,
    batch: Mapping[str, Any],
    weights: Mapping[str, float],
    *,
    image_fields: tuple[str, ...] = (),
    text_fields: tuple[str, ...] = (),
    options: Mapping[str, Any] | None = None,
    reference: nn.Module | None = None,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 1,
) -> dict[str, torch.Tensor]:
    """The weighted loss terms with a non-zero weight, on this rank's part of the batch, in
    `epoch` (from 1).

    `network` is an ObjectiveNetwork (or its DistributedDataParallel wrapper). The batch's
    `image` and `text` and its extra views (`image_fields`, `text_fields`) go through one call
    of it, so gradients are synchronized once per step. `reference`, a frozen CLIP model, embeds
    `image` and `text` for the terms that compare against it.
    """
    objective_network = getattr(network, "module", network)
    model = objective_network.clip
    images = ["image", *image_fields]
    texts = ["text", *text_fields]
    outputs = network(torch.cat([batch[name] for name in images]), torch.cat([batch[name] for name in texts]))
    features = _split(outputs["image_features"], images, batch) | _split(outputs["text_features"], texts, batch)
    class_logits = outputs.get("class_logits")
    inputs = TermInputs(
        features,
        outputs["logit_scale"],
        batch,
        options or {},
        _reference_features(reference, batch) if reference is not None else {},
        None if class_logits is None else class_logits[: len(batch["image"])],
        rank,
        world_size,
        model,
        reference,
        epoch,
        objective_network.state,
    )
    return {term.name: weights[term.name] * resolve(term.loss)(inputs) for term in active_terms(weights)}


def _reference_features(reference: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        image_features, text_features = reference(batch["image"], batch["text"])[:2]
    return {"image": image_features, "text": text_features}

