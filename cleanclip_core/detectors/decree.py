"""DECREE (Feng et al., CVPR'23): a backdoored image encoder maps any image carrying its trigger
to nearly one embedding, so a small stamp that makes the shadow images' embeddings agree exists
for it and not for a clean encoder.

A mask m [H, W] (shared by the channels) and a pattern p [3, H, W], both tanh-parametrized into
[0, 1], stamp x' = (1 - m) x + m p; Adam minimizes -(mean off-diagonal cosine of the stamped
embeddings) + lambda ||m||_1 (the L1 over the mask's 3 channels). A step succeeds when the mean
|cosine| exceeds `threshold`; lambda grows x5 after more than `patience` successes in a row and
shrinks /5 (to no less than `lambda_floor`) after more than `patience` failures. The statistic
is PL1 = the L1 of the smallest successful mask (the final one if none succeeded) / (3 H W);
the score is -PL1.
"""

from collections.abc import Mapping
from dataclasses import dataclass
import logging
from typing import Any

import torch

from cleanclip_core.detectors.model_level import ModelInputs, shadow_images

log = logging.getLogger(__name__)

INITIAL_LAMBDA = 1e-3
LAMBDA_FACTOR = 5.0
LR_FACTORS = (1.0, 0.2, 0.1)  # before, between and after the milestones: DECREE's 0.5, 0.1, 0.05


def bounded(raw: torch.Tensor) -> torch.Tensor:
    """The tanh parametrization: any real tensor into [0, 1]."""
    return torch.tanh(raw) / 2 + 0.5


def unbounded(values: torch.Tensor) -> torch.Tensor:
    """The inverse of `bounded`, kept off the infinities at 0 and 1."""
    return torch.atanh((2 * values - 1).clamp(-0.999, 0.999))


def stamped(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - m) x + m p: images [n, 3, H, W] in [0, 1], mask [H, W], pattern [3, H, W]."""
    return (1 - mask) * images + mask * pattern


def mean_off_diagonal_cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """The mean cosine similarity between every two different rows of [n, D] (n >= 2)."""
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    n = len(unit)
    return ((unit @ unit.T).sum() - (unit * unit).sum()) / (n * (n - 1))


@dataclass
class PenaltyWeight:
    """DECREE's lambda, adapted to the run of successes or failures of the steps."""

    floor: float
    patience: int
    value: float = INITIAL_LAMBDA
    successes: int = 0
    failures: int = 0

    def update(self, success: bool) -> None:
        self.successes, self.failures = (self.successes + 1, 0) if success else (0, self.failures + 1)
        if self.successes > self.patience:
            self.value, self.successes = self.value * LAMBDA_FACTOR, 0
        elif self.failures > self.patience:
            self.value, self.failures = max(self.value / LAMBDA_FACTOR, self.floor), 0


def milestone_lr(lr: float, milestones: list[int], epoch: int) -> float:
    return lr * LR_FACTORS[sum(epoch >= milestone for milestone in milestones)]


def warn_if_collapsed(inputs: ModelInputs, images: torch.Tensor, threshold: float) -> None:
    """Log a warning when the encoder already maps the unstamped `images` together."""
    with torch.no_grad():
        agreement = mean_off_diagonal_cosine(inputs.encoder(inputs.normalize(images))).abs().item()
    if agreement > threshold:
        log.warning(f"decree: the encoder maps the clean shadow images together already (mean |cosine| {agreement:.3f}): "
                    "any stamp succeeds, and PL1 tells nothing (an undertrained or collapsed encoder)")


def decree_pl1(inputs: ModelInputs, options: Mapping[str, Any]) -> float:
    """PL1 of the encoder over the shadow images (see the module's docstring)."""
    encoder = inputs.encoder.eval().requires_grad_(False)
    shadow = shadow_images(inputs, options["shadow_images"])
    warn_if_collapsed(inputs, shadow[: options["batch_size"]], options["threshold"])
    height, width = shadow.shape[-2:]
    generator = torch.Generator().manual_seed(inputs.seed)
    raw_mask = unbounded(torch.rand(height, width, generator=generator)).to(inputs.device).requires_grad_()
    raw_pattern = unbounded(torch.rand(3, height, width, generator=generator)).to(inputs.device).requires_grad_()
    optimizer = torch.optim.Adam([raw_mask, raw_pattern], lr=options["lr"], betas=(0.5, 0.9))
    weight = PenaltyWeight(options["lambda_floor"], options["patience"])
    best, stale = None, 0  # the smallest successful L1; steps since it last shrank
    # equal batches of about batch_size, never a short last one, and of two images at least
    batches = max(1, min(round(len(shadow) / options["batch_size"]), len(shadow) // 2))
    for epoch in range(options["epochs"]):
        for group in optimizer.param_groups:
            group["lr"] = milestone_lr(options["lr"], options["lr_milestones"], epoch)
        agreements = []
        for rows in torch.randperm(len(shadow), generator=generator).tensor_split(batches):
            mask = bounded(raw_mask)
            cosine = mean_off_diagonal_cosine(encoder(inputs.normalize(stamped(shadow[rows], mask, bounded(raw_pattern)))))
            l1 = 3 * mask.sum()
            optimizer.zero_grad()
            (-cosine + weight.value * l1).backward()
            optimizer.step()
            success = cosine.abs().item() > options["threshold"]
            if success and (best is None or l1.item() < best):
                best, stale = l1.item(), 0
            elif best is not None:
                stale += 1
            weight.update(success)
            agreements.append(cosine.abs().item())
        if sum(agreements) / len(agreements) > options["threshold"] and stale > options["early_stop_patience"]:
            break
    l1 = best if best is not None else 3 * bounded(raw_mask).sum().item()
    pl1 = l1 / (3 * height * width)
    log.info(f"decree: PL1 {pl1:.4g} after {epoch + 1} epochs, of the "
             f"{'smallest successful' if best is not None else 'final (no step succeeded)'} mask")
    return pl1


def decree_scores(inputs: ModelInputs, options: Mapping[str, Any]) -> float:
    return -decree_pl1(inputs, options)
