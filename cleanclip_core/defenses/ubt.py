"""UBT, Unlearning Backdoor Threats (Liang et al. 2024, arXiv 2403.16257 and 2409.19526): find a
small unlearning set in the poisoned data itself, then unlearn it locally.

No public code exists and the papers' method sections could not be read; this is a
reconstruction from their abstracts and from the related option of the BadCLIP code
(LiangSiyuan21/BadCLIP, `--remove_fraction 0.02`: the pairs of highest image-text similarity are
taken for poisons). Every open choice is an option of the config's `defenses.ubt` section.

- `detect`, the preparation stage: (A) score every pair by the cosine of its image and text
  embeddings under the poisoned model; the top `suspicious_fraction` are suspicious (a backdoor
  is a shortcut: its pairs match unusually well). (B) Overfit the model briefly on the
  suspicious set (`overfit_loss`: the CLIP loss by default), which strengthens the shortcut, and
  re-score it; its `unlearn_pairs` highest pairs are the unlearning set. It writes the detection
  table and the manifest the cleaning run trains on: the pairs outside the suspicious set (or
  `retain_pairs` of them) and the unlearning set, repeated so that it makes `unlearn_share` of
  the rows and so turns up in most batches, flagged `unlearn`.
- (C) The cleaning run updates only `local_parameters` (default: the image tower's first layer,
  the patch embedding or "image tokenizer" of a ViT) with the terms `unlearn` (the unlearning
  pairs' image-text cosine, pushed down) and `retain` (the CLIP loss on the other pairs).
"""

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cleanclip_core.attacks import attack_trigger
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.devices import stage_device
from cleanclip_core.errors import UserError
from cleanclip_core.losses import gathered, gathered_flags, mmcl_loss
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.objectives import TermInputs
from cleanclip_core.tables import files_sha256, write_table
from cleanclip_core.training.optim import adamw, clamp_logit_scale
from cleanclip_core.training.views import TrainingViews

log = logging.getLogger(__name__)

FLAG = "unlearn"


def detect(
    model: str,
    weights: str,
    data: dict[str, Any],
    options: dict[str, Any],
    seed: int,
    table: str,
    manifest: str,
    num_workers: int = 0,
    batch_size: int = 256,
) -> str:
    """UBT's preparation stage, from plain arguments (`data`: the fields of the training loop's
    TrainingData): write the detection `table` (every pair: key, is_poison, suspicion,
    suspicion_after_overfit, suspicious, selected) and the cleaning run's `manifest` (the
    poisoned manifest's columns and `unlearn`); return the manifest's path. `batch_size` (pairs
    per scoring pass) and `num_workers` say how it runs, not what it computes."""
    device = stage_device()
    clip = create_model(model, Path(weights)).to(device)
    poisoned = pq.read_table(data["manifest"])
    pairs = pair_views(clip, model, poisoned, data, seed)

    def score(rows: Dataset) -> np.ndarray:
        return pair_similarity(clip, DataLoader(rows, batch_size, num_workers=num_workers), device)

    suspicion = score(pairs)
    n_suspicious = _suspicious_count(options["suspicious_fraction"], len(suspicion))
    suspicious_rows = top_rows(suspicion, np.arange(len(suspicion)), n_suspicious)
    overfit(clip, Subset(pairs, suspicious_rows), options, seed, device, num_workers)
    after_overfit = score(Subset(pairs, suspicious_rows))
    selected_rows = top_rows(after_overfit, suspicious_rows, options["unlearn_pairs"])

    detection = detection_table(poisoned, suspicion, suspicious_rows, after_overfit, selected_rows)
    cleaning_pairs = unlearning_manifest(poisoned, suspicious_rows, selected_rows, options, seed)
    provenance = {
        "config": {"model": model, "options": options, "seed": seed, "attack": data["attack"]},
        "inputs_sha256": files_sha256([Path(weights), Path(data["manifest"])]),
    }
    write_table(detection, Path(table), **provenance)
    write_table(cleaning_pairs, Path(manifest), **provenance)
    quality = detection_quality(detection)
    log.info("UBT: " + ", ".join(f"{name} {value:.4g}" for name, value in quality.items()))
    return manifest


def pair_views(clip: nn.Module, model: str, poisoned: pa.Table, data: Mapping[str, Any], seed: int) -> TrainingViews:
    """Every pair of the poisoned manifest as the model sees it: poisoned images triggered,
    captions tokenized (images are normalized on the device, by `pair_features`)."""
    trigger = attack_trigger(data["attack"]) if data["attack"] else None
    pairs = PoisonedTrainingSet(
        poisoned, pq.read_table(data["shard_index"]), Path(data["shards_dir"]), image_size_of(clip), trigger
    )
    return TrainingViews(pairs, tokenizer_for(model), [], seed)


def _suspicious_count(fraction: float, n: int) -> int:
    count = int(fraction * n)
    if count == 0:
        raise UserError(f"defenses.ubt.suspicious_fraction {fraction} of {n} pairs is no pair; raise it")
    return count


def pair_similarity(clip: nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """The cosine of each pair's image and text embeddings (fp32), in the loader's order."""
    clip.eval()
    similarities = []
    with torch.no_grad():
        for batch in tqdm(loader, desc="scoring pairs", leave=False):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                image, text = pair_features(clip, batch, device)[:2]
            similarities.append(pair_cosine(image.float(), text.float()).cpu())
    return torch.cat(similarities).numpy()


def pair_features(clip: nn.Module, batch: Mapping[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    """The model's outputs for a batch of pairs, its images normalized on the device."""
    return clip(normalization_for(clip)(batch["image"].to(device)), batch["text"].to(device))


def pair_cosine(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Each row's image-text cosine (the features are normalized)."""
    return (image * text).sum(dim=-1)


def _alignment_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    return -pair_cosine(image, text).mean()


OVERFIT_LOSSES = {"clip": mmcl_loss, "cosine": _alignment_loss}
"""`clip`: the CLIP loss (InfoNCE among the suspicious pairs); `cosine`: minus the pairs' mean
cosine, with no negatives, so a direction shared by many pairs (a trigger's) gains fastest."""


def top_rows(scores: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """The `count` rows of highest score (all of them when fewer), in row order; a tie goes to
    the earlier row."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(rows[order[:count]])


def overfit(
    clip: nn.Module,
    suspicious: Dataset,
    options: Mapping[str, Any],
    seed: int,
    device: torch.device,
    num_workers: int = 0,
) -> None:
    """Train every parameter for `overfit_steps` steps of `overfit_loss` on the suspicious pairs
    (AdamW, `overfit_lr`, no weight decay, batches of `overfit_batch_size` in a seeded order).

    Batch-norm statistics stay those of the poisoned model (eval mode): the suspicious set is
    small and unlike the data they were estimated on, and the re-scoring uses them."""
    batch_size = min(options["overfit_batch_size"], len(suspicious))
    loader = DataLoader(
        suspicious, batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = adamw(clip, options["overfit_lr"], weight_decay=0.0)
    clip.eval()
    progress = tqdm(total=options["overfit_steps"], desc="overfitting the suspicious pairs", leave=False)
    step = 0
    while step < options["overfit_steps"]:
        for batch in loader:
            if step == options["overfit_steps"]:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                image, text, logit_scale = pair_features(clip, batch, device)[:3]
                loss = OVERFIT_LOSSES[options["overfit_loss"]](image, text, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clamp_logit_scale(clip)
            step += 1
            progress.update()
    progress.close()


def detection_table(
    poisoned: pa.Table,
    suspicion: np.ndarray,
    suspicious_rows: np.ndarray,
    after_overfit: np.ndarray,
    selected_rows: np.ndarray,
) -> pa.Table:
    """One row per pair; `suspicion_after_overfit` is null outside the suspicious set (only it is
    re-scored)."""
    n = len(suspicion)
    after = np.full(n, np.nan, dtype=np.float32)
    after[suspicious_rows] = after_overfit
    return pa.table({
        "key": poisoned["key"],
        "is_poison": poisoned["is_poison"],
        "suspicion": pa.array(suspicion, pa.float32()),
        "suspicion_after_overfit": pa.array(after, pa.float32(), from_pandas=True),
        "suspicious": pa.array(np.isin(np.arange(n), suspicious_rows)),
        "selected": pa.array(np.isin(np.arange(n), selected_rows)),
    })


def unlearning_manifest(
    poisoned: pa.Table, suspicious_rows: np.ndarray, selected_rows: np.ndarray, options: Mapping[str, Any], seed: int
) -> pa.Table:
    """The cleaning run's pairs: those outside the suspicious set (all, or `retain_pairs` drawn
    from `seed`), then the unlearning set repeated to make about `unlearn_share` of the rows,
    with a boolean column `unlearn`. Suspicious pairs left out of the unlearning set are left
    out altogether: the CLIP loss on them would relearn what is being unlearned."""
    retained = np.setdiff1d(np.arange(len(poisoned)), suspicious_rows)
    if options["retain_pairs"] is not None:
        if options["retain_pairs"] > len(retained):
            raise UserError(
                f"defenses.ubt.retain_pairs {options['retain_pairs']} exceeds the {len(retained)} "
                "pairs outside the suspicious set"
            )
        retained = np.sort(np.random.default_rng(seed).choice(retained, options["retain_pairs"], replace=False))
    repeated = np.tile(selected_rows, unlearning_repeats(len(selected_rows), len(retained), options["unlearn_share"]))
    flags = np.concatenate([np.zeros(len(retained), bool), np.ones(len(repeated), bool)])
    return poisoned.take(np.concatenate([retained, repeated])).append_column(FLAG, pa.array(flags))


def unlearning_repeats(n_unlearn: int, n_retained: int, share: float) -> int:
    """How many copies of the unlearning set make it `share` of the rows (at least one copy)."""
    return max(1, round(share * n_retained / ((1 - share) * n_unlearn)))


def detection_quality(table: pa.Table) -> dict[str, float]:
    """Precision and recall against the true poisons of the unlearning set (`precision`,
    `recall`) and of the suspicious set (`suspicious_precision`, `suspicious_recall`), and the
    sizes; a precision (recall) is nan when the set (the poisons) is empty."""
    is_poison = table["is_poison"].to_numpy(zero_copy_only=False)
    quality: dict[str, float] = {"n_pairs": len(is_poison), "n_poisons": int(is_poison.sum())}
    for column, prefix in (("selected", ""), ("suspicious", "suspicious_")):
        flagged = table[column].to_numpy(zero_copy_only=False)
        found = int((flagged & is_poison).sum())
        quality[f"n_{column}"] = int(flagged.sum())
        quality[f"{prefix}precision"] = found / quality[f"n_{column}"] if flagged.any() else float("nan")
        quality[f"{prefix}recall"] = found / quality["n_poisons"] if is_poison.any() else float("nan")
    return quality


def local_parameters(model: nn.Module, options: Mapping[str, Any]) -> list[str]:
    """The parameters local unlearning updates: those under the prefixes `trainable`."""
    prefixes = options["trainable"]
    names = [name for name, _ in model.named_parameters() if any(_under(name, prefix) for prefix in prefixes)]
    if not names:
        examples = ", ".join(name for name, _ in list(model.named_parameters())[:4])
        raise UserError(f"defenses.ubt.trainable {prefixes} names no parameter of the model ({examples}, ...)")
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix.rstrip(".") + ".")


def _whole_batch(inputs: TermInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image and text features and unlearn flags of the global batch: with several processes,
    every rank's rows (features gathered with gradients, as the CLIP loss gathers them), so both
    terms are those of the whole batch however its flagged rows fall on the ranks."""
    if FLAG not in inputs.batch:
        raise UserError("the unlearn and retain terms need the ubt method's manifest (a boolean column unlearn)")
    image, text, flags = inputs.features["image"], inputs.features["text"], inputs.batch[FLAG].bool()
    image, text = gathered(image, text, world_size=inputs.world_size)
    return image, text, gathered_flags(flags, inputs.world_size)


def unlearn_loss(inputs: TermInputs) -> torch.Tensor:
    """The mean image-text cosine of the unlearning pairs (0 when the batch has none)."""
    image, text, flags = _whole_batch(inputs)
    return pair_cosine(image[flags], text[flags]).sum() / flags.sum().clamp(min=1)


def retain_loss(inputs: TermInputs) -> torch.Tensor:
    """The CLIP loss among the pairs outside the unlearning set (0 when there are none)."""
    image, text, flags = _whole_batch(inputs)
    if flags.all():
        return image.sum() * 0
    # The rows are already gathered: the loss of the whole batch, as on a single process.
    return mmcl_loss(image[~flags], text[~flags], inputs.logit_scale)
