"""The model-level stage: a detector scores a pretrained or cleaned model's image encoder once,
from clean unlabelled shadow images (the study's evaluation images, their labels unused); higher
is more likely backdoored. The study's detection summary ranks its models by these scores
(detection.model_level_summary)."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from cleanclip_core.classes import read_classnames
from cleanclip_core.detectors import get_detector
from cleanclip_core.devices import on_device, stage_device
from cleanclip_core.errors import UserError
from cleanclip_core.evaluation import EvaluationImages
from cleanclip_core.models import create_model, image_size_of, normalization_for
from cleanclip_core.registry import resolve
from cleanclip_core.tables import files_sha256, write_table


@dataclass(frozen=True)
class ModelInputs:
    encoder: nn.Module  # normalized images [n, 3, S, S] -> embeddings [n, D] (open_clip's `visual`)
    images: Dataset  # clean images, each item's "image" [3, S, S] uint8: the shadow images' pool
    normalize: Callable[[torch.Tensor], torch.Tensor]  # the model's normalization of [0, 1] images
    device: torch.device
    seed: int = 0
    num_workers: int = 0  # loader processes: how it runs, not what it computes


def shadow_images(inputs: ModelInputs, count: int) -> torch.Tensor:
    """`count` of the pool's images (all of them when fewer), drawn by the seed, as float [0, 1]
    on the device."""
    if len(inputs.images) < 2:
        raise UserError(f"a model-level detector needs at least 2 shadow images; the evaluation set has {len(inputs.images)}")
    generator = torch.Generator().manual_seed(inputs.seed)
    rows = torch.randperm(len(inputs.images), generator=generator)[:count].tolist()
    loader = DataLoader(Subset(inputs.images, rows), batch_size=256, num_workers=inputs.num_workers)
    return torch.cat([batch["image"] for batch in loader]).to(inputs.device).float() / 255


def detect_model(
    model: str, weights: str, images: str, classnames: str | None, identity: Mapping[str, Any], is_backdoored: bool,
    detector: str, settings: Mapping[str, Any], scores_table: str, num_workers: int = 0,
) -> None:
    """Score the model at `weights` and write its one row: `identity`, is_backdoored and score."""
    device = stage_device()
    clip = on_device(create_model(model, Path(weights)), model, device).eval()
    dataset = EvaluationImages(Path(images), read_classnames(classnames)).dataset(image_size_of(clip), None)
    inputs = ModelInputs(clip.visual, dataset, normalization_for(clip), device, settings["seed"], num_workers)
    score = float(resolve(get_detector(detector).score)(inputs, settings["options"]))
    provenance = {
        "config": {"detector": detector, "identity": dict(identity), "settings": dict(settings)},
        "inputs_sha256": files_sha256([Path(weights)]),
    }
    row = dict(identity) | {"is_backdoored": is_backdoored, "score": score}
    write_table(pa.Table.from_pylist([row]), Path(scores_table), **provenance)
