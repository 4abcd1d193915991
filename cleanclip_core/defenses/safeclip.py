"""SafeCLIP (Yang et al., ICML'24, HangerYang/SafeCLIP): pretraining that keeps the contrastive
loss away from the pairs whose image and caption match too poorly to be trusted.

Epochs count from 1, in three phases:
- in-modal warm-up (`inmodal_epochs`): CleanCLIP's in-modal term alone, on every pair, each view
  against the other (SafeCLIP's default, without its nearest-neighbour bank);
- CLIP warm-up (`clip_epochs`): the cross-augmented CLIP loss (each image against the augmented
  captions, each caption against the augmented images) on every pair, at the constant
  learning rate `warmup_lr`;
- the split, every later epoch: before it, every pair is scored by its image-caption cosine (eval
  mode) and a two-component Gaussian mixture (scikit-learn) is fit to the scores. At the first
  such epoch the safe pairs are those whose posterior of the higher-mean component is at least
  `safe_posterior`, and their share becomes the safe ratio; later, the safe pairs are the top
  ratio x N by that posterior. After each split the ratio grows by `ratio_step`, up to
  `ratio_cap`. Safe pairs train with the cross-augmented CLIP loss, risky ones with the in-modal
  term. The learning rate restarts its warmup and cosine for this phase.

Reconstructed: SafeCLIP trains the risky and the safe pairs in two passes of each epoch; here
they share the epoch's batches and each batch weights the two losses by their pairs' shares, so
every pair counts once an epoch as in the two passes. View 1 is the pair as loaded, view 2 its
in-modal augmentation (SafeCLIP draws two augmentations). Each split is logged with its
safe share and the poisons it keeps.
"""

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import nn
from torch.utils.data import DataLoader

from cleanclip_core.defenses.ubt import pair_similarity
from cleanclip_core.losses import gathered, gathered_flags, inmodal_loss, matching_loss
from cleanclip_core.objectives import TermInputs, inmodal_term
from cleanclip_core.training.loop import EpochStart
from cleanclip_core.training.optim import stepwise, warmup_cosine_lr

log = logging.getLogger(__name__)

FLAG = "safe"
INMODAL, CLIP_WARMUP, SPLIT = "inmodal", "clip_warmup", "split"


def phase(epoch: int, options: Mapping[str, Any]) -> str:
    if epoch <= options["inmodal_epochs"]:
        return INMODAL
    if epoch <= options["inmodal_epochs"] + options["clip_epochs"]:
        return CLIP_WARMUP
    return SPLIT


class SafeRatio(nn.Module):
    """The share of the pairs the next split keeps safe (NaN before the first split)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ratio", torch.tensor(float("nan"), dtype=torch.float64))


def safe_ratio(options: Mapping[str, Any], embed_dim: int, seed: int) -> SafeRatio:
    return SafeRatio()


def cross_modal_loss(
    image: torch.Tensor, augmented_image: torch.Tensor, text: torch.Tensor, augmented_text: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """The cross-augmented CLIP loss: images against augmented captions, captions against
    augmented images."""
    return (matching_loss(image, augmented_text, logit_scale) + matching_loss(text, augmented_image, logit_scale)) / 2


def safeclip_term(inputs: TermInputs) -> torch.Tensor:
    """The loss of the epoch's phase, on the global batch."""
    current = phase(inputs.epoch, inputs.options)
    if current == INMODAL:
        return inmodal_term(inputs)
    features = inputs.features
    views = gathered(
        features["image"], features["augmented_image"], features["text"], features["augmented_text"],
        world_size=inputs.world_size,
    )
    if current == CLIP_WARMUP:
        return cross_modal_loss(*views, inputs.logit_scale)
    safe = gathered_flags(inputs.batch[FLAG].bool(), inputs.world_size)
    return _share_of(safe, views, cross_modal_loss, inputs.logit_scale) + _share_of(~safe, views, inmodal_loss, inputs.logit_scale)


def _share_of(rows: torch.Tensor, views: tuple[torch.Tensor, ...], loss: Callable, logit_scale: torch.Tensor) -> torch.Tensor:
    """`loss` of the selected rows, weighted by their share of the batch (0 without any)."""
    if not rows.any():
        return views[0].sum() * 0
    return rows.float().mean() * loss(*(view[rows] for view in views), logit_scale)


def split_pairs(start: EpochStart) -> dict[str, np.ndarray]:
    """Before a split epoch, the safe flag of every training pair; no flag before."""
    options = start.options
    if phase(start.epoch, options) != SPLIT:
        return {}
    posterior = _clean_posterior(_similarities(start), start.seed)
    ratio = start.state.ratio
    if torch.isnan(ratio):
        safe = posterior >= options["safe_posterior"]
    else:
        safe = np.zeros(len(posterior), bool)
        safe[np.argsort(-posterior, kind="stable")[: int(float(ratio) * len(posterior))]] = True
    ratio.fill_(min(safe.mean() + options["ratio_step"], options["ratio_cap"]))
    poisons = start.pairs.pairs.is_poison
    log.info(
        f"SafeCLIP epoch {start.epoch}: {safe.sum()} of {len(safe)} pairs safe ({safe.mean():.1%}), "
        f"{(safe & poisons).sum()} of {poisons.sum()} poisons among them"
    )
    return {FLAG: safe}


def _similarities(start: EpochStart) -> np.ndarray:
    """Each pair's image-caption cosine under the model as it is, in eval mode (each module's
    mode restored after)."""
    loader = DataLoader(start.pairs, start.batch_size, num_workers=start.num_workers)
    modes = {module: module.training for module in start.model.modules()}
    try:
        return pair_similarity(start.model, loader, start.device)
    finally:
        for module, training in modes.items():
            module.train(training)


def _clean_posterior(similarities: np.ndarray, seed: int) -> np.ndarray:
    """Each pair's posterior of the mixture component of higher mean image-caption cosine."""
    mixture = GaussianMixture(2, random_state=seed).fit(similarities.reshape(-1, 1).astype(np.float64))
    return mixture.predict_proba(similarities.reshape(-1, 1))[:, int(np.argmax(mixture.means_[:, 0]))]


def safeclip_lr(step: int, lr: float, warmup_steps: int, steps_per_epoch: int, epochs: int, options: Mapping[str, Any]) -> float:
    """Warmup and cosine over both warm-ups (SafeCLIP's first schedule), the constant
    `warmup_lr` during the CLIP warm-up, then warmup and cosine again over the split epochs."""
    inmodal_steps = options["inmodal_epochs"] * steps_per_epoch
    warmup_end = inmodal_steps + options["clip_epochs"] * steps_per_epoch
    if step < inmodal_steps:
        return warmup_cosine_lr(step, lr, warmup_steps, warmup_end)
    if step < warmup_end:
        return options["warmup_lr"]
    return warmup_cosine_lr(step - warmup_end, lr, warmup_steps, epochs * steps_per_epoch - warmup_end)


def safeclip_schedule(
    optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int, steps_per_epoch: int, epochs: int,
    options: Mapping[str, Any],
) -> Callable[[int], float]:
    warmup_steps = max(1, warmup_steps)
    return stepwise(optimizer, lambda step: safeclip_lr(step, lr, warmup_steps, steps_per_epoch, epochs, options))
