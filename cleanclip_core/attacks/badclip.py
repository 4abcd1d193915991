"""BadCLIP (Liang et al., CVPR 2024): a patch optimized against a frozen clean CLIP, pasted at the
image centre.

Trigger params: patch_size (side at 224 px, scaled with the image's smaller side) and prepared,
the file `optimize_trigger` wrote. The optimization's own options (epochs, lr, batch_size,
n_images, triplet_weight, margin) are read by `optimize_trigger` alone.

The optimization follows the public code (LiangSiyuan21/BadCLIP, src/embeding_optimize_patch.py)
with two differences: the clean embeddings of the triplet's negatives come from an unpatched copy
of the images (the public code pastes the patch into them in place first, so anchor and negative
coincide), and the patch is projected back onto [0, 1] after each step instead of being clipped
in the forward pass (where a clipped pixel gets no gradient and cannot come back).
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from cleanclip_core.attacks import NATURAL
from cleanclip_core.attacks.badnet import paste_patch
from cleanclip_core.attacks.parts import FixedPart, Trigger, scaled_size
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.devices import stage_device
from cleanclip_core.errors import UserError
from cleanclip_core.losses import mmcl_loss
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.poison import names_target, poison_captions
from cleanclip_core.training.checkpoints import save_torch

log = logging.getLogger(__name__)


def paste_at_centre(image: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """A copy of `image` ([C, H, W] or [B, C, H, W]) with `patch` [C, s, s] at its centre (the
    top-left corner at ((H - s) // 2, (W - s) // 2))."""
    height, width = image.shape[-2:]
    side = patch.shape[-1]
    return paste_patch(image, patch, (height - side) // 2, (width - side) // 2)


# The trigger -------------------------------------------------------------------------------------


def load_patch(path: str | Path) -> torch.Tensor:
    """The optimized patch [3, s, s] in [0, 1] that `optimize_trigger` wrote to `path`."""
    if not Path(path).is_file():
        raise UserError(f"the optimized BadCLIP patch {path} does not exist; run its optimization first")
    return torch.load(path, map_location="cpu", weights_only=True)["patch"]


def _resized_patch(patch: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The patch at side shape[-1]: itself, or resized bicubic (antialiased when it shrinks, as
    images are fitted) and clipped back to [0, 1], which bicubic overshoot may leave."""
    side = shape[-1]
    if patch.shape[-1] == side:
        return patch
    resized = TF.resize(patch, [side, side], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    return resized.clamp_(0, 1)


def _paste_trigger(
    patch_at_224: float, patch: FixedPart, image: torch.Tensor, _trigger_seed: int
) -> torch.Tensor:
    side = scaled_size(patch_at_224, min(image.shape[-2:]))
    return paste_at_centre(image, patch((image.shape[0], side, side), image))


def build_trigger(params: Mapping[str, Any], attack_seed: int) -> Trigger:
    """The optimized patch, the same for every image and trigger seed, at the image centre."""
    patch = load_patch(params["prepared"])
    return partial(_paste_trigger, float(params["patch_size"]), FixedPart(partial(_resized_patch, patch)))


# The optimization --------------------------------------------------------------------------------


def _clean_pairs(keys: pa.Array, captions: pa.Array) -> pa.Table:
    """Rows for PoisonedTrainingSet that no trigger touches."""
    n = len(keys)
    return pa.table({
        "key": keys,
        "caption": captions,
        "is_poison": pa.array(np.zeros(n, dtype=bool)),
        "trigger_seed": pa.nulls(n, pa.int64()),
    })


def patch_training_pairs(manifest: pa.Table, target_label: str, n_images: int, seed: int) -> pa.Table:
    """`n_images` rows whose caption does not name the target (all of them where there are
    fewer), each paired with a natural caption of the dataset that does, drawn from `seed`."""
    target_captions = poison_captions(manifest["caption"], NATURAL, target_label)
    eligible = np.flatnonzero(~names_target(manifest["caption"], target_label).to_numpy())
    if n_images > eligible.size:
        log.warning(
            f"BadCLIP: n_images={n_images} exceeds the {eligible.size} rows whose caption does not "
            f"name {target_label!r}; optimizing the patch on all of them"
        )
        n_images = eligible.size
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(eligible, size=n_images, replace=False))
    captions = target_captions.take(rng.integers(len(target_captions), size=n_images))
    return _clean_pairs(manifest["key"].take(rows).combine_chunks(), captions)


def target_images(manifest: pa.Table, target_label: str) -> pa.Table:
    """The rows whose caption names the target: the triplet's positives."""
    rows = manifest.filter(names_target(manifest["caption"], target_label))
    return _clean_pairs(rows["key"].combine_chunks(), rows["caption"].combine_chunks())


def badclip_loss(
    patched: torch.Tensor,
    texts: torch.Tensor,
    clean: torch.Tensor,
    positives: torch.Tensor,
    logit_scale: torch.Tensor,
    triplet_weight: float,
    margin: float,
) -> torch.Tensor:
    """Symmetric InfoNCE between patched images and their target captions, plus `triplet_weight`
    times a triplet margin loss (L2 distance) that pulls each patched image's embedding toward a
    target image's and away from its own clean embedding. All embeddings normalized, [B, D]."""
    contrastive = mmcl_loss(patched, texts, logit_scale)
    triplet = F.triplet_margin_loss(patched, positives, clean, margin=margin, p=2)
    return contrastive + triplet_weight * triplet


def _generators(seed: int, n: int) -> list[torch.Generator]:
    """`n` independent generators from one seed (patch init, data order, positive draws)."""
    states = np.random.SeedSequence(seed).generate_state(n)
    return [torch.Generator().manual_seed(int(state)) for state in states]


@dataclass(frozen=True)
class FrozenSurrogate:
    """The attacker's clean CLIP, frozen: normalized embeddings of [0, 1] images and of captions."""

    model: torch.nn.Module
    normalize: Callable[[torch.Tensor], torch.Tensor]
    tokenize: Callable[[list[str]], torch.Tensor]
    device: torch.device

    @classmethod
    def load(cls, surrogate: Mapping[str, Any]) -> "FrozenSurrogate":
        """From the stage's `surrogate` argument: model name, weights file or pretrained tag."""
        if surrogate["weights"] is None and surrogate["pretrained"] is None:
            raise UserError("the BadCLIP surrogate needs trained weights: give it a weights file or a pretrained tag")
        device = stage_device()
        model = create_model(surrogate["model"], surrogate["weights"], pretrained=surrogate["pretrained"])
        model = model.to(device).eval().requires_grad_(False)
        return cls(model, normalization_for(model), tokenizer_for(surrogate["model"]), device)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device):
            return self.model.encode_image(self.normalize(images), normalize=True).float()

    def texts(self, captions: list[str]) -> torch.Tensor:
        with _autocast(self.device):
            return self.model.encode_text(self.tokenize(captions).to(self.device), normalize=True).float()

    def all_images(self, dataset: PoisonedTrainingSet, batch_size: int, num_workers: int) -> torch.Tensor:
        """The embeddings [N, D] of every image of `dataset`, in order."""
        with torch.no_grad():
            loader = DataLoader(dataset, batch_size, num_workers=num_workers)
            return torch.cat([self.images(batch["image"].to(self.device)) for batch in loader])


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _initial_patch(side: int, generator: torch.Generator) -> torch.Tensor:
    """N(0.5, 0.25) per pixel and channel, clipped to [0, 1] (BadCLIP's random init)."""
    return (torch.randn((3, side, side), generator=generator) * 0.25 + 0.5).clamp_(0, 1)


def _patch_step(
    surrogate: FrozenSurrogate,
    patch: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    positives: torch.Tensor,
    options: Mapping[str, Any],
) -> torch.Tensor:
    """One Adam step on the patch, projected back onto [0, 1]; returns the detached loss."""
    images = TF.to_dtype(batch["image"].to(surrogate.device, non_blocking=True), torch.float32, scale=True)
    with torch.no_grad():
        texts, clean = surrogate.texts(batch["caption"]), surrogate.images(images)
    patched = surrogate.images(paste_at_centre(images, patch))
    loss = badclip_loss(
        patched, texts, clean, positives, surrogate.model.logit_scale.exp(),
        options["triplet_weight"], options["margin"],
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        patch.clamp_(0, 1)
    return loss.detach()


def optimize_trigger(
    surrogate: dict[str, Any], data: dict[str, Any], attack: dict[str, Any], out_path: str, num_workers: int = 0
) -> str:
    """The BadCLIP preparation stage: optimize the patch against the frozen `surrogate` (model,
    weights, pretrained) on the dataset of `data` (manifest, shard_index, shards_dir) as the
    `attack` config entry says; write {patch, image_size, losses} to `out_path`, return it."""
    options, target, seed = attack["trigger"], attack["target_label"], attack["seed"]
    frozen = FrozenSurrogate.load(surrogate)
    image_size = image_size_of(frozen.model)
    manifest = pq.read_table(data["manifest"], columns=["key", "caption"])
    shard_index = pq.read_table(data["shard_index"])

    def images(rows: pa.Table) -> PoisonedTrainingSet:
        return PoisonedTrainingSet(rows, shard_index, Path(data["shards_dir"]), image_size, trigger=None)

    pairs = images(patch_training_pairs(manifest, target, options["n_images"], seed))
    batch_size = options["batch_size"]
    if batch_size > len(pairs):
        log.warning(f"BadCLIP: batch_size {batch_size} exceeds the {len(pairs)} images; one batch of them all an epoch")
        batch_size = len(pairs)
    positives = frozen.all_images(images(target_images(manifest, target)), batch_size, num_workers)
    log.info(f"BadCLIP: optimizing the patch on {len(pairs)} images, {len(positives)} images of {target!r} as positives")

    init, order, draws = _generators(seed, 3)
    patch = _initial_patch(scaled_size(options["patch_size"], image_size), init).to(frozen.device).requires_grad_()
    optimizer = torch.optim.Adam([patch], lr=options["lr"])
    loader = DataLoader(
        pairs, batch_size, sampler=RandomSampler(pairs, generator=order), drop_last=True,
        num_workers=num_workers, pin_memory=frozen.device.type == "cuda",
    )
    losses = []
    for epoch in range(options["epochs"]):
        description = f"BadCLIP patch, epoch {epoch + 1}/{options['epochs']}"
        epoch_losses = []
        for batch in tqdm(loader, desc=description, leave=False, disable=None):
            # Each image meets a random target image, drawn with replacement: a small corpus may
            # have fewer target images than a batch holds.
            drawn = torch.randint(len(positives), (len(batch["index"]),), generator=draws).to(frozen.device)
            epoch_losses.append(_patch_step(frozen, patch, optimizer, batch, positives[drawn], options))
        losses.append(torch.stack(epoch_losses).mean().item())
        log.info(f"{description}: loss {losses[-1]:.4f}")

    result = {"patch": patch.detach().cpu(), "image_size": image_size, "losses": losses}
    save_torch(result, Path(out_path))
    return str(out_path)
