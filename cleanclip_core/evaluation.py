"""Zero-shot evaluation (design section 6): clean top-k accuracy and attack success rate (ASR@k).

Ranking rule, shared by every metric: classes are ranked by logit, highest first, and a tie goes
to the lower class index, as `torch.argmax` breaks it. So "the top-k predictions contain class c"
means fewer than k classes outrank c: a higher logit, or an equal logit and a lower index.
"""

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn
from torch.utils.data import DataLoader

from cleanclip_core.attacks import attack_trigger
from cleanclip_core.classes import read_classnames, target_class_index
from cleanclip_core.data.loaders import EvaluationSet, Transform
from cleanclip_core.errors import UserError
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.results import code_version, config_hash, metrics_table
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)

Template = str | Callable[[str], str]
Batches = Iterable[Mapping[str, Any]]
"""A data loader over an `EvaluationSet`: batches of {"image": [B, 3, S, S], "label": [B], ...}."""

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


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """{"top{k}": fraction of images whose top-k predictions contain the true label}, k clamped to C."""
    rank = class_rank(logits, labels)
    return {f"top{k}": (rank < k).float().mean().item() for k in ks}


def attack_success_rate(
    logits: torch.Tensor, labels: torch.Tensor, target_index: int, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """{"asr_top{k}": ASR@k} from the logits [N, C] of triggered images and their true labels [N].

    Only images whose true class is not the target count: an image of the target class that is
    predicted as the target shows no attack (CleanCLIP's released evaluation counted them).
    """
    counted = labels != target_index
    if not counted.any():
        raise UserError(
            f"no evaluation image has a true class other than the target (class {target_index}), "
            f"so the attack success rate is undefined"
        )
    target = torch.full((int(counted.sum()),), target_index, device=logits.device)
    rank = class_rank(logits[counted], target)
    return {f"asr_top{k}": (rank < k).float().mean().item() for k in ks}


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """No gradients, eval mode (batch norm statistics, no dropout), then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
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


def zero_shot_logits(
    model: nn.Module, classifier: torch.Tensor, loader: Batches, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, C] (fp32, on the CPU) and labels [N] of every image the loader yields."""
    device = torch.device(device)
    classifier = classifier.to(device, torch.float32)
    logits, labels = [], []
    with _inference(model):
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                features = model.encode_image(images, normalize=True)
            # Scored in fp32: bf16 logits (8 significant bits) would tie between many classes.
            logits.append((ZERO_SHOT_LOGIT_SCALE * features.float() @ classifier).cpu())
            labels.append(torch.as_tensor(batch["label"]))
    return torch.cat(logits), torch.cat(labels)


def evaluate_zero_shot(
    model: nn.Module,
    classifier: torch.Tensor,
    clean_loader: Batches,
    triggered_loader: Batches | None,
    target_index: int | None,
    device: torch.device | str,
    accuracy_ks: Sequence[int] = (1, 5),
    asr_ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Clean top-k accuracy, and ASR@k when given the triggered images and the target class.

    Returns {"top1", "top5", "n_images", "n_classes"} plus {"asr_top1", "asr_top5", "asr_top10",
    "n_triggered"} with a triggered loader; n_triggered counts only the images the ASR counts
    (true class not the target), and n_classes gives the chance level, 1 / n_classes.
    """
    if (triggered_loader is None) != (target_index is None):
        raise ValueError("pass both the triggered loader and the target index, or neither")
    logits, labels = zero_shot_logits(model, classifier, clean_loader, device)
    metrics: dict[str, float] = {
        **topk_accuracy(logits, labels, accuracy_ks), "n_images": len(labels), "n_classes": logits.shape[1]
    }
    if triggered_loader is not None and target_index is not None:
        logits, labels = zero_shot_logits(model, classifier, triggered_loader, device)
        metrics |= attack_success_rate(logits, labels, target_index, asr_ks)
        metrics["n_triggered"] = int((labels != target_index).sum())
    return metrics


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


def evaluate_checkpoint(
    model_name: str,
    weights: Path,
    images: EvaluationImages,
    attack: Mapping[str, Any],
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, float]:
    """Clean top-1/top-5 and ASR@1/5/10 of the checkpoint `weights` on `images` (design §6)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(model_name, weights).to(device)
    size, normalize = image_size_of(model), normalization_for(model)
    clean = images.dataset(size, normalize)
    triggered = images.dataset(size, normalize, attack)
    classifier = zero_shot_classifier(
        model, tokenizer_for(model_name), clean.classnames, OPENAI_IMAGENET_TEMPLATES, device
    )

    def batches(dataset: EvaluationSet) -> DataLoader:
        return DataLoader(dataset, batch_size, num_workers=num_workers)

    target = target_class_index(clean.classnames, attack["target_label"])
    return evaluate_zero_shot(model, classifier, batches(clean), batches(triggered), target, device)


def write_checkpoint_metrics(
    model_name: str,
    weights: str,
    images: str,
    classnames: str | None,
    attack: Mapping[str, Any],
    checkpoint: Mapping[str, Any],
    provenance: Mapping[str, Any],
    output: str,
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, float]:
    """Evaluate one checkpoint and write its tidy metrics table to `output`, carrying (as every
    table does) the settings that made it and the hash of the weights.

    The evaluation stage: plain arguments (`classnames` as read_classnames takes them, the
    checkpoint's identity columns, results.IDENTITY_SCHEMA), so launching it needs no torch.
    """
    evaluation_images = EvaluationImages(Path(images), read_classnames(classnames))
    metrics = evaluate_checkpoint(model_name, Path(weights), evaluation_images, attack, batch_size, num_workers)
    log.info(f"{weights}: " + ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
    table = metrics_table(metrics, checkpoint, config_hash(provenance), code_version())
    write_table(table, Path(output), config=dict(provenance), inputs_sha256=files_sha256([weights]))
    return metrics
