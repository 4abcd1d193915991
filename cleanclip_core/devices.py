"""How a stage uses its device: which one, and its speedups: channels-last ResNet towers on CUDA
and CPU, TF32 matmuls on CUDA only. A CPU otherwise runs plain fp32 PyTorch."""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import open_clip
import torch
from torch import nn


def stage_device() -> torch.device:
    """Where a stage computes: this process's GPU, else Apple's mps, else the CPU. A process of
    several on a machine (torchrun's, or a job's tasks) has its local rank's GPU (LOCAL_RANK),
    a lone one the current device (the one its launcher leased)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def has_resnet_tower(model_name: str) -> bool:
    """Whether the image tower of `model_name` is open_clip's ModifiedResNet: its config lists
    the layers of each stage, where a ViT's gives one number."""
    return isinstance(open_clip.get_model_config(model_name)["vision_cfg"].get("layers"), (list, tuple))


def uses_channels_last(model_name: str, device: torch.device) -> bool:
    """Convolutions on CUDA, and on a CPU through oneDNN, run faster in channels-last memory (a
    tiny-rn-w16 MMCL+SSL step on one CPU thread: 14% less time); a ViT's one patch convolution
    gains nothing."""
    return device.type in ("cuda", "cpu") and has_resnet_tower(model_name)


def on_device(model: nn.Module, model_name: str, device: torch.device) -> nn.Module:
    """`model` moved to `device`, its ResNet image tower in channels-last memory where that helps."""
    model = model.to(device)
    if uses_channels_last(model_name, device):
        model.visual.to(memory_format=torch.channels_last)
    return model


@contextmanager
def tf32_matmuls(device: torch.device) -> Iterator[None]:
    """fp32 matrix products in TF32 on CUDA (Ampere and later), as open_clip_train runs them;
    nothing on a CPU. (cuDNN convolutions already use TF32: PyTorch's default.) The previous
    setting is restored on exit."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    if device.type == "cuda":
        matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = before
