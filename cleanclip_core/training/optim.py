"""AdamW with weight decay only on weight matrices, and open_clip's warmup-then-cosine schedule."""

import math
from collections.abc import Callable

import torch
from open_clip_train.scheduler import cosine_lr

MAX_LOGIT_SCALE = math.log(100)


def decays(name: str, parameter: torch.nn.Parameter) -> bool:
    """Weight decay applies to weight matrices, not to biases, norms, embeddings' 1-D gains or
    the logit scale."""
    return parameter.ndim >= 2 and "logit_scale" not in name


def adamw(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.AdamW:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trainable if decays(n, p)], "weight_decay": weight_decay},
        {"params": [p for n, p in trainable if not decays(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, lr: float, warmup_steps: int, total_steps: int
) -> Callable[[int], float]:
    """Sets (and returns) the learning rate of a step: linear warmup, then cosine to 0."""
    return cosine_lr(optimizer, lr, max(1, warmup_steps), total_steps)


def clamp_logit_scale(model: torch.nn.Module) -> None:
    """Keep the learned temperature at most ln(100), as CLIP does after every step; a fixed one
    (not trained) stays exactly as it started."""
    if not model.logit_scale.requires_grad:
        return
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
