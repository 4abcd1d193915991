"""Zero-shot evaluation (design section 6): clean top-k accuracy and attack success rate (ASR@k).

Ranking rule, shared by every metric: classes are ranked by logit, highest first, and a tie goes
to the lower class index, as `torch.argmax` breaks it. So "the top-k predictions contain class c"
means fewer than k classes outrank c: a higher logit, or an equal logit and a lower index.

A job evaluates every checkpoint of a run in one pass over the images: each image is decoded,
fitted and triggered once, and every checkpoint scores it (`evaluate_zero_shot`).
"""

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pyarrow as pa
import torch
from torch import nn
from torch.utils.data import DataLoader

from cleanclip_core.attacks import attack_trigger
from cleanclip_core.classes import read_classnames, target_class_index
from cleanclip_core.data.loaders import EvaluationSet, Transform
from cleanclip_core.devices import on_device, stage_device
from cleanclip_core.errors import UserError
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.results import code_version, config_hash, metrics_table, run_id
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)

Template = str | Callable[[str], str]
Batches = Iterable[Mapping[str, Any]]
"""A data loader over an `EvaluationSet`: batches of {"image": [B, 3, S, S], "label": [B], ...},
with the triggered images as "triggered" [B, 3, S, S] when the set has a trigger."""
IMAGE_FIELDS = ("image", "triggered")

# CLIP's zero-shot convention (open_clip's and OpenAI's evaluation): cosine similarity times 100.
# Rankings, and so every metric here, do not depend on the scale.
ZERO_SHOT_LOGIT_SCALE = 100.0


def class_rank(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The 0-based rank of `classes[i]` among the logits [N, C] of row i, under the module's tie rule."""
    # A NaN logit compares false with everything, which would rank every class first.
    if logits.isnan().any():
        raise UserError("the logits contain NaN: the model being evaluated has diverged")
    score = logits.gather(1, classes[:, None])
    lower_index = torch.arange(logits.shape[1], device=logits.device) < classes[:, None]
    return ((logits > score) | ((logits == score) & lower_index)).sum(dim=1)


def topk_accuracy(label_ranks: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top{k}": fraction of images whose true class ranks among the first k} from the rank of
    each image's true class (`class_rank`); k above the number of classes counts every image."""
    return {f"top{k}": (label_ranks < k).double().mean().item() for k in ks}


def target_ranks(logits: torch.Tensor, labels: torch.Tensor, target_index: int) -> torch.Tensor:
    """The target's rank among the logits [N, C] of each triggered image whose true class is not
    the target: an image of the target class that is predicted as the target shows no attack
    (CleanCLIP's released evaluation counted them)."""
    counted = labels.to(logits.device) != target_index
    target = torch.full((int(counted.sum()),), target_index, device=logits.device)
    return class_rank(logits[counted], target)


def attack_success_rate(target_ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"asr_top{k}": ASR@k} from the target's rank in each counted triggered image (`target_ranks`)."""
    if not len(target_ranks):
        raise UserError(
            "no evaluation image has a true class other than the target, so the attack success rate is undefined"
        )
    return {f"asr_top{k}": (target_ranks < k).double().mean().item() for k in ks}


@contextmanager
def _inference(*models: nn.Module) -> Iterator[None]:
    """No autograd at all (inference mode), eval mode (batch norm statistics, no dropout), then
    the caller's modes again."""
    were_training = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for model, was_training in zip(models, were_training):
            model.train(was_training)


def zero_shot_classifier(
    model: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: torch.device | str,
) -> torch.Tensor:
    """Zero-shot weights [D, C]: per class, the mean of its normalized template embeddings, renormalized.

    Built without autocast: it is computed once per checkpoint and every image is scored against it.
    """
    with _inference(model):
        return open_clip.build_zero_shot_classifier(
            model,
            tokenizer,
            classnames,
            templates,
            num_classes_per_batch=10,
            device=device,
            use_tqdm=False,
        )


@dataclass(frozen=True)
class ZeroShotModel:
    """A checkpoint ready to score images: its CLIP model, on the evaluation device, and its
    zero-shot classifier [D, C] in fp32 there."""

    model: nn.Module
    classifier: torch.Tensor

    @classmethod
    def build(
        cls, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], classnames: Sequence[str], device: torch.device
    ) -> "ZeroShotModel":
        """The model with its classifier over the 80 OpenAI ImageNet templates, built once."""
        classifier = zero_shot_classifier(model, tokenizer, classnames, open_clip.OPENAI_IMAGENET_TEMPLATES, device)
        return cls(model, classifier.to(device, torch.float32))


def zero_shot_logits(checkpoint: ZeroShotModel, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Logits [B, C] (fp32, on the device) of a batch of images: 100 x the cosine similarity of
    each image's embedding to each class's."""
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        features = checkpoint.model.encode_image(images.to(device, non_blocking=True), normalize=True)
    # Scored in fp32: bf16 logits (8 significant bits) would tie between many classes.
    return ZERO_SHOT_LOGIT_SCALE * features.float() @ checkpoint.classifier


def batch_logits(
    checkpoints: Sequence[ZeroShotModel], batch: Mapping[str, Any], device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """Per checkpoint, the logits of each image field the batch holds (IMAGE_FIELDS)."""
    fields = [name for name in IMAGE_FIELDS if name in batch]
    return [{name: zero_shot_logits(checkpoint, batch[name], device) for name in fields} for checkpoint in checkpoints]


@dataclass
class ImageRanks:
    """One checkpoint's ranks, batch by batch: of each clean image's true class, and of the target
    in each counted triggered image (its true class not the target). 8 bytes an image, where
    logits take 4 a class."""

    n_classes: int
    target_index: int | None
    images: list[torch.Tensor] = field(default_factory=list)  # each image's index in the evaluation set
    labels: list[torch.Tensor] = field(default_factory=list)
    label: list[torch.Tensor] = field(default_factory=list)
    target: list[torch.Tensor] = field(default_factory=list)

    def add(self, logits: Mapping[str, torch.Tensor], labels: torch.Tensor, images: torch.Tensor) -> None:
        self.images.append(images)
        self.labels.append(labels)
        if "image" in logits:
            self.label.append(class_rank(logits["image"], labels.to(logits["image"].device)).cpu())
        if "triggered" in logits:
            if self.target_index is None:
                raise ValueError("triggered images need the target class to score the attack")
            self.target.append(target_ranks(logits["triggered"], labels, self.target_index).cpu())

    def metrics(self, accuracy_ks: Sequence[int] = (1, 5), asr_ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.label:
            label = torch.cat(self.label)
            metrics |= topk_accuracy(label, accuracy_ks) | {"n_images": len(label), "n_classes": self.n_classes}
        if self.target:
            target = torch.cat(self.target)
            metrics |= attack_success_rate(target, asr_ks) | {"n_triggered": len(target)}
        return metrics

    def table(self) -> pa.Table:
        """A row per evaluation image: its index in the evaluation set, its label, the rank of its
        true class (clean image) and of the target (triggered image; null where its class is the
        target), 0-based, as every metric counts them."""
        labels = torch.cat(self.labels).numpy()
        columns = {"image": torch.cat(self.images).numpy().astype("int32"), "label": labels.astype("int32")}
        if self.label:
            columns["label_rank"] = torch.cat(self.label).numpy().astype("int32")
        if self.target:
            counted = labels != self.target_index
            target = np.zeros(len(labels), dtype="int32")
            target[counted] = torch.cat(self.target).numpy()
            columns["target_rank"] = pa.array(target, mask=~counted)
        return pa.table(columns)


def evaluate_ranks(
    checkpoints: Sequence[ZeroShotModel], batches: Batches, target_index: int | None, device: torch.device | str
) -> list[ImageRanks]:
    """Per checkpoint, the ranks of every image of the batches (each `image`'s true class and,
    where they hold `triggered` images, the target's), in one pass over the batches.

    Every checkpoint scores a batch before the next is read: memory holds the models, one batch
    and each image's rank per checkpoint, never every image or every logit.
    """
    device = torch.device(device)
    ranks = [ImageRanks(checkpoint.classifier.shape[1], target_index) for checkpoint in checkpoints]
    with _inference(*(checkpoint.model for checkpoint in checkpoints)):
        for batch in batches:
            labels = torch.as_tensor(batch["label"])
            images = torch.as_tensor(batch["index"]) if "index" in batch else torch.full_like(labels, -1)
            for checkpoint_ranks, logits in zip(ranks, batch_logits(checkpoints, batch, device)):
                checkpoint_ranks.add(logits, labels, images)
    return ranks


def evaluate_zero_shot(
    checkpoints: Sequence[ZeroShotModel],
    batches: Batches,
    target_index: int | None,
    device: torch.device | str,
    accuracy_ks: Sequence[int] = (1, 5),
    asr_ks: Sequence[int] = (1, 5, 10),
) -> list[dict[str, float]]:
    """Per checkpoint: clean top-k accuracy of the batches' `image`s and, where they hold
    `triggered` images, ASR@k towards `target_index`, in one pass over the batches
    (`evaluate_ranks`).

    Each metrics dict holds {"top1", "top5", "n_images", "n_classes"} and, with triggered images,
    {"asr_top1", "asr_top5", "asr_top10", "n_triggered"}; n_triggered counts only the images the
    ASR counts (true class not the target), and n_classes gives the chance level, 1 / n_classes.
    """
    return [ranks.metrics(accuracy_ks, asr_ks) for ranks in evaluate_ranks(checkpoints, batches, target_index, device)]


@dataclass(frozen=True)
class EvaluationImages:
    """Labelled evaluation images: an ImageFolder root or a CleanCLIP-style labels.csv, with
    the class names in label order (None: the ImageFolder's folder names)."""

    path: Path
    classnames: list[str] | None = None

    def dataset(
        self, image_size: int, transform: Transform, attack: Mapping[str, Any] | None = None
    ) -> EvaluationSet:
        """The images, each carrying the attack's fixed test trigger when an attack is given."""
        triggering = {
            "trigger": attack_trigger(attack) if attack else None,
            "attack_seed": attack["seed"] if attack else 0,
            "transform": transform,
        }
        if Path(self.path).suffix == ".csv":
            if self.classnames is None:
                raise UserError(f"{self.path}: a labels.csv needs the class names of its labels")
            return EvaluationSet.from_labels_csv(self.path, self.classnames, image_size, **triggering)
        return EvaluationSet.from_image_folder(self.path, image_size, self.classnames, **triggering)


def evaluate_checkpoints(
    model_name: str,
    weights: Sequence[Path],
    images: EvaluationImages,
    attack: Mapping[str, Any],
    batch_size: int = 256,
    num_workers: int = 0,
) -> list[ImageRanks]:
    """The ranks, and so clean top-1/top-5 and ASR@1/5/10 (design §6), of each checkpoint file in
    `weights` (a run's epochs), in one pass over `images`.

    Every checkpoint's model stays on the device, built with its classifier once, and scores each
    batch in turn: a run's 20 RN50 checkpoints take about 8 GB of GPU memory (102M fp32
    parameters each), and the images pass once instead of 20 times, so data loading, the cost
    that dominates evaluation on a GPU, is paid once per run.
    """
    device = stage_device()
    models = (on_device(create_model(model_name, path), model_name, device) for path in weights)
    first = next(models)
    dataset = images.dataset(image_size_of(first), normalization_for(first), attack)
    tokenizer = tokenizer_for(model_name)
    checkpoints = [ZeroShotModel.build(model, tokenizer, dataset.classnames, device) for model in chain([first], models)]
    loader = DataLoader(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    target = target_class_index(dataset.classnames, attack["target_label"])
    log.info(f"evaluating {len(checkpoints)} checkpoints on {len(dataset)} images, clean and triggered")
    return evaluate_ranks(checkpoints, _with_progress(loader, len(checkpoints)), target, device)


def _with_progress(loader: DataLoader, checkpoints: int) -> Iterator[Mapping[str, Any]]:
    """The loader's batches, with a progress line at about every tenth of them."""
    every, started = max(1, len(loader) // 10), time.perf_counter()
    for index, batch in enumerate(loader, 1):
        yield batch
        if index % every == 0 or index == len(loader):
            images = index * loader.batch_size
            log.info(f"evaluated {min(images, len(loader.dataset))} of {len(loader.dataset)} images x {checkpoints} "
                     f"checkpoints, {images * checkpoints / (time.perf_counter() - started):.0f} images/s")


def write_checkpoints_metrics(
    model_name: str,
    weights: Sequence[str],
    images: str,
    classnames: str | None,
    attack: Mapping[str, Any],
    checkpoints: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, Any],
    outputs: Sequence[str],
    ranks_output: str | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
) -> list[dict[str, float]]:
    """Evaluate the checkpoint files `weights` in one pass and write each one's tidy metrics
    table to its path in `outputs`, and every image's ranks under every checkpoint to
    `ranks_output` (a row per checkpoint and image, `ImageRanks.table` with the checkpoint's
    run_id and epoch), each carrying (as every table does) the settings that made it and the
    hash of its weights.

    The evaluation stage: plain arguments (`classnames` as read_classnames takes them, each
    checkpoint's identity columns, results.IDENTITY_SCHEMA), so launching it needs no torch.
    """
    evaluation_images = EvaluationImages(Path(images), read_classnames(classnames))
    ranks = evaluate_checkpoints(model_name, [Path(path) for path in weights], evaluation_images, attack, batch_size, num_workers)
    metrics = [checkpoint_ranks.metrics() for checkpoint_ranks in ranks]
    for path, checkpoint, output, values in zip(weights, checkpoints, outputs, metrics, strict=True):
        log.info(f"{path}: " + ", ".join(f"{name} {value:.4g}" for name, value in values.items()))
        table = metrics_table(values, checkpoint, config_hash(provenance), code_version())
        write_table(table, Path(output), config=dict(provenance), inputs_sha256=files_sha256([path]))
    if ranks_output:
        tables = pa.concat_tables(_identified(r.table(), checkpoint) for r, checkpoint in zip(ranks, checkpoints))
        write_table(tables, Path(ranks_output), config=dict(provenance), inputs_sha256=files_sha256(weights))
    return metrics


def _identified(table: pa.Table, checkpoint: Mapping[str, Any]) -> pa.Table:
    """The table with its checkpoint's run_id and epoch in front."""
    rows = table.num_rows
    table = table.add_column(0, "run_id", pa.array([run_id(checkpoint)] * rows))
    return table.add_column(1, "epoch", pa.array([checkpoint["epoch"]] * rows, pa.int32()))
