"""Test-time detectors: each scores evaluation images under a model, higher meaning more likely
triggered.

- BDetCLIP (ICML'25): a triggered image's embedding moves towards no class's description, so
  the gap between its similarity to each class's benign prompts and to the same prompts spoiled
  by an unrelated sentence shrinks. Omega(x) = sum over classes of cos(x, benign_c) -
  cos(x, malignant_c); the score is -Omega. The paper's benign prompts are a language model's
  descriptions of each class; here they are appearance templates (BDETCLIP_TEMPLATES), as the
  malignant ones are those templates followed by each of UNRELATED_SENTENCES.
- STRIP (Gao et al., for classifiers; adapted with the zero-shot head): the image is overlaid
  with `overlays` clean images (pixel sums, saturating at 255); a trigger keeps its prediction
  through the blend, so the mean entropy of the zero-shot softmax is low; the score is minus it.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from cleanclip_core.classes import read_classnames, target_class_index
from cleanclip_core.detection import evaluation_items, write_judged
from cleanclip_core.detectors import get_detector
from cleanclip_core.devices import on_device, stage_device
from cleanclip_core.evaluation import EvaluationImages, ZeroShotModel, zero_shot_classifier, zero_shot_logits
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.registry import resolve
from cleanclip_core.tables import files_sha256

BDETCLIP_TEMPLATES = (
    "a photo of a {}.",
    "a close-up photo of the {}.",
    "a picture showing a {} in the middle.",
    "an image whose main object is a {}.",
    "a clear photo of one {}.",
    "a small {} in a photo.",
    "a drawing of a {}.",
)
UNRELATED_SENTENCES = (
    "The train leaves the station at noon.",
    "Prices of wheat rose again this year.",
    "She kept the letters in a drawer.",
)


@dataclass(frozen=True)
class TestTimeInputs:
    checkpoint: ZeroShotModel  # the model with its zero-shot classifier
    tokenizer: Any
    classnames: Sequence[str]
    images: torch.Tensor  # [n, 3, S, S] uint8: the images to score
    clean_reference: torch.Tensor  # [m, 3, S, S] uint8: clean images the defender holds
    normalize: Any  # the model's normalization of uint8 images
    device: torch.device
    seed: int = 0
    batch_size: int = 256  # images per forward pass: how it runs, not what it computes


def bdetclip_omega(image: torch.Tensor, benign: torch.Tensor, malignant: torch.Tensor) -> torch.Tensor:
    """Sum over classes of cos(image, benign_c) - cos(image, malignant_c); every row normalized."""
    return (image @ benign.T).sum(dim=1) - (image @ malignant.T).sum(dim=1)


def _class_prompts(inputs: TestTimeInputs, templates: Sequence[str]) -> torch.Tensor:
    """Per class, the renormalized mean of its prompts' normalized text embeddings [C, D]: the
    zero-shot classifier of these templates."""
    return zero_shot_classifier(inputs.checkpoint.model, inputs.tokenizer, inputs.classnames, templates, inputs.device).T.float()


def _image_features(inputs: TestTimeInputs, images: torch.Tensor) -> torch.Tensor:
    encode = inputs.checkpoint.model.encode_image
    return torch.cat([
        encode(inputs.normalize(batch.to(inputs.device)), normalize=True).float()
        for batch in images.split(inputs.batch_size)
    ])


def bdetclip_scores(inputs: TestTimeInputs, options: Mapping[str, Any]) -> torch.Tensor:
    templates = BDETCLIP_TEMPLATES[: options["templates"]]
    benign = _class_prompts(inputs, templates)
    malignant = _class_prompts(inputs, [f"{template} {sentence}" for template in templates for sentence in UNRELATED_SENTENCES])
    return -bdetclip_omega(_image_features(inputs, inputs.images), benign, malignant).cpu()


def superimposed(images: torch.Tensor, overlays: torch.Tensor, alpha: float) -> torch.Tensor:
    """Every image [n] blended with every overlay [k]: image + alpha x overlay, saturating at
    255, as uint8 [n, k, 3, S, S]."""
    blended = images[:, None].float() + alpha * overlays[None].float()
    return blended.clamp(0, 255).round().to(torch.uint8)


def mean_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """The mean over the last-but-one axis of each distribution's entropy (nats)."""
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=-1)


def strip_scores(inputs: TestTimeInputs, options: Mapping[str, Any]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(inputs.seed)
    count = min(options["overlays"], len(inputs.clean_reference))
    overlays = inputs.clean_reference[torch.randperm(len(inputs.clean_reference), generator=generator)[:count]]
    scores = []
    for image in inputs.images:
        blends = superimposed(image[None], overlays, options["alpha"])[0]
        logits = zero_shot_logits(inputs.checkpoint, inputs.normalize(blends.to(inputs.device)), inputs.device)
        scores.append(-mean_entropy(logits.softmax(dim=-1)[None]))
    return torch.cat(scores).cpu()


def detect_test(
    model: str, weights: str, images: str, classnames: str | None, attack: Mapping[str, Any], detector: str,
    settings: Mapping[str, Any], scores_table: str, quality_table: str, batch_size: int = 256, num_workers: int = 0,
) -> None:
    """The test-time stage: score the evaluation images under the model at `weights`, each clean
    or, for `triggered_share` of those not of the target class, with the attack's test trigger,
    and judge the scores against the clean reference images (detection.write_judged)."""
    device = stage_device()
    clip = on_device(create_model(model, Path(weights)), model, device).eval()
    dataset = EvaluationImages(Path(images), read_classnames(classnames)).dataset(image_size_of(clip), None, attack)
    batches = list(DataLoader(dataset, batch_size, num_workers=num_workers))
    clean, triggered = (torch.cat([batch[name] for batch in batches]) for name in ("image", "triggered"))
    labels = torch.cat([batch["label"] for batch in batches]).numpy()
    reference, is_triggered = evaluation_items(
        labels, target_class_index(dataset.classnames, attack["target_label"]),
        settings["reference_images"], settings["triggered_share"], settings["seed"],
    )
    tokenizer = tokenizer_for(model)
    inputs = TestTimeInputs(
        ZeroShotModel.build(clip, tokenizer, dataset.classnames, device), tokenizer, dataset.classnames,
        torch.where(torch.from_numpy(is_triggered)[:, None, None, None], triggered, clean), clean[reference],
        normalization_for(clip), device, settings["seed"], batch_size,
    )
    with torch.inference_mode():
        scores = resolve(get_detector(detector).score)(inputs, settings["options"]).numpy().astype(np.float64)
    provenance = {
        "config": {"detector": detector, "attack": dict(attack), "settings": dict(settings)},
        "inputs_sha256": files_sha256([Path(weights)]),
    }
    items = pa.table({"index": np.arange(len(labels)), "label": labels})
    write_judged(detector, items, is_triggered, reference, scores, settings, provenance, scores_table, quality_table)
