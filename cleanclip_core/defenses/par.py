"""PAR, Perturb and Recover (Singh, Croce, Hein 2024): finetune on perturbed images with the
CLIP loss while pushing the embeddings away from those of the frozen starting (poisoned) model.

Loss = mmcl − λ (L_img + L_txt): L_img (L_txt) is the batch mean of the squared L2 distance
between the cleaned and the frozen model's normalized image (text) embeddings, each dropped
(zero, no gradient) once it exceeds τ. The images, for both models, carry Gaussian noise and a
small erased square. The temperature stays the start's (the registry's learns_logit_scale); the
learning rate falls linearly to a tenth over the first half of training, then on a cosine to 0.
"""

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from open_clip.transform import PreprocessCfg
from torch import Tensor
from torchvision.transforms import v2

from cleanclip_core.augment import seeded
from cleanclip_core.losses import gathered
from cleanclip_core.objectives import TermInputs
from cleanclip_core.training.optim import stepwise
from cleanclip_core.training.views import ViewContext, sample_seed

DECAYED_LR = 0.1
"""The lr at the end of the linear decay, relative to the peak (their 3e-6 after 3e-5)."""
LINEAR_DECAY_SHARE = 0.5
"""The share of the (post-warmup) steps over which the lr falls linearly; cosine after."""
ERASED_ASPECT_RATIO = (1.0, 1.0)
"""Aspect ratio of the erased rectangle: a square."""


# -- the repulsion term --------------------------------------------------------------------


def thresholded_distance(features: Tensor, reference_features: Tensor, tau: float) -> Tensor:
    """The batch mean of the squared L2 distance between matching rows, or 0 (no gradient)
    where that mean exceeds `tau`: the term stops pushing once the embeddings are far enough."""
    distance = (features - reference_features).pow(2).sum(dim=1).mean()
    return torch.where(distance > tau, torch.zeros_like(distance), distance)


def repulsion_loss(
    image_features: Tensor,
    reference_image_features: Tensor,
    text_features: Tensor,
    reference_text_features: Tensor,
    tau: float,
    *,
    world_size: int = 1,
) -> Tensor:
    """−(L_img + L_txt) over the global batch (gathered with gradients across ranks, so the
    threshold applies to the whole batch's mean, as in PAR's code)."""
    image_features, reference_image_features, text_features, reference_text_features = gathered(
        image_features, reference_image_features, text_features, reference_text_features, world_size=world_size
    )
    return -(
        thresholded_distance(image_features, reference_image_features, tau)
        + thresholded_distance(text_features, reference_text_features, tau)
    )


def repulsion_term(inputs: TermInputs) -> Tensor:
    features, reference = inputs.features, inputs.reference
    return repulsion_loss(
        features["image"], reference["image"], features["text"], reference["text"], inputs.options["tau"],
        world_size=inputs.world_size,
    )


# -- the perturbed view --------------------------------------------------------------------


def brightening_noise(image: Tensor, std: float) -> Tensor:
    """Gaussian noise as PAR's code adds it: the noise itself is clipped to [0, 1] before it is
    added (so it only brightens), then the image is clipped to [0, 1]."""
    return (image + (torch.randn(image.shape) * std).clamp(0, 1)).clamp(0, 1)


@functools.cache
def perturbation(noise_std: float, noise_p: float, erase_p: float, erase_scale: tuple[float, float]) -> v2.Transform:
    """Noise with probability `noise_p`, then, with probability `erase_p`, a square covering
    `erase_scale` of the area set to the normalization mean. PAR's code erases after
    normalizing, with 0; every model here is normalized with open_clip's default mean
    (models.check_pretrained), so the mean in pixels is the same."""
    return v2.Compose([
        v2.RandomApply([v2.Lambda(functools.partial(brightening_noise, std=noise_std))], p=noise_p),
        v2.RandomErasing(p=erase_p, scale=erase_scale, ratio=ERASED_ASPECT_RATIO, value=list(PreprocessCfg().mean)),
    ])


def perturb_image(image: Tensor, seed: int, options: Mapping[str, Any]) -> Tensor:
    """PAR's perturbed view of `image` (uint8, or float in [0, 1], [3, H, W]) drawn with `seed`,
    float in [0, 1] (the noise is finer than 8 bits); the global RNG is left as it was."""
    transform = perturbation(
        options["noise_std"], options["noise_p"], options["erase_p"], tuple(options["erase_scale"])
    )
    return seeded(transform, F.to_dtype(image, torch.float32, scale=True), seed)


@dataclass(frozen=True)
class PerturbedViews:
    """PAR's perturbation, in place of the pair's image (the field `image`)."""

    options: Mapping[str, Any]
    image_fields: tuple[str, ...] = ("image",)
    text_fields: tuple[str, ...] = ()

    def __call__(self, pair: Mapping[str, Any], seed: int, epoch: int) -> dict[str, Any]:
        return {"image": perturb_image(pair["image"], sample_seed(seed, epoch), self.options)}


def perturbed_views(context: ViewContext) -> PerturbedViews:
    return PerturbedViews(context.options)


# -- the learning-rate schedule ------------------------------------------------------------


def par_lr(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """PAR's learning rate at `step`: after `warmup_steps` of linear warmup (none in PAR's code),
    a linear fall from `lr` to DECAYED_LR·lr over LINEAR_DECAY_SHARE of the remaining steps, both
    ends included, then a cosine from there towards 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    step, steps = step - warmup_steps, total_steps - warmup_steps
    linear_steps = int(LINEAR_DECAY_SHARE * steps)
    if step < linear_steps:
        return lr + (DECAYED_LR * lr - lr) * step / max(linear_steps - 1, 1)
    cosine_step, cosine_steps = step - linear_steps, max(steps - linear_steps, 1)
    return DECAYED_LR * lr * 0.5 * (1 + math.cos(math.pi * cosine_step / cosine_steps))


def par_schedule(
    optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int, steps_per_epoch: int, epochs: int,
    options: Mapping[str, Any],
) -> Callable[[int], float]:
    """Sets (and returns) PAR's learning rate of a step (see par_lr); `lr` is the peak."""
    total_steps = steps_per_epoch * epochs
    return stepwise(optimizer, lambda step: par_lr(step, lr, warmup_steps, total_steps))
