"""The training loop shared by pretraining and cleaning: build, loop, log, checkpoint.

Each epoch ends with its checkpoint (written atomically); a killed run started again with the
same settings resumes from the last one and ends with the same weights as an uninterrupted run:
data order, augmentations and initialization are all functions of the seed and the epoch. How it
executes (data-loader processes, torch.compile) is not a setting: a run may resume with other
execution. A step uses fused AdamW and, for a ResNet image tower, channels-last memory, on CUDA
and on a CPU; on CUDA it runs in bf16 autocast with TF32 matmuls too.
Until the run ends, everything it writes stays in `partial/` under its output folder: a
workflow manager that deletes the outputs of an interrupted job before rerunning it deletes
nothing the resumed run needs. A finished run keeps its files there (hard links) with a record of
its settings until a job reads its outputs (training/finished.py): a rerun whose outputs were
deleted before Snakemake took them publishes them again without training.
"""

import copy
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from cleanclip_core.attacks import attack_trigger, resolve
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.devices import on_device, stage_device, tf32_matmuls
from cleanclip_core.errors import UserError
from cleanclip_core.reporting import changed_settings
from cleanclip_core.models import create_model, image_size_of, normalization_for, require_checkpoint, tokenizer_for
from cleanclip_core.defenses import Defense, get_defense, method_problems, training_options
from cleanclip_core.objectives import ObjectiveNetwork, needed_views, needs_labels, needs_reference, objective_losses
from cleanclip_core.tables import atomic_output, files_sha256
from cleanclip_core.training.batches import GlobalBatchSlices
from cleanclip_core.training.checkpoints import load_resume_state, save_resume_state, save_torch, save_weights
from cleanclip_core.training.finished import FINISHED, PARTIAL, RESUME_STATE
from cleanclip_core.training.optim import adamw, clamp_logit_scale, warmup_cosine
from cleanclip_core.training.views import (
    TrainingViews, ViewContext, ViewSource, build_views, collate_views, view_fields,
)

log = logging.getLogger(__name__)

LOG_EVERY_STEPS = 20
STEP_LOG = "train_log.parquet"
BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


@dataclass(frozen=True)
class TrainSettings:
    model: str
    objective: dict[str, float]
    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    seed: int
    synonyms: str
    method: str | None = None
    """The cleaning method (a key of cleanclip_core.defenses' registry, or None: plain training)."""
    options: dict[str, Any] = field(default_factory=dict)
    """The method's options (the config's `defenses` section)."""
    eda: str = "per_epoch"
    """When each caption's EDA view is drawn: `per_epoch` or `once` (CleanCLIP's code)."""


@dataclass(frozen=True)
class Recipe:
    """What a training step computes: the objective's weights, the model's input normalization
    (applied on the device to the batch's images), the batch's extra view fields, the method's
    options and the frozen reference model some terms compare against."""

    objective: dict[str, float]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    image_fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    reference: torch.nn.Module | None = None


@dataclass(frozen=True)
class TrainingData:
    """Where the training pairs are: a (poisoned) manifest, the shards, and the attack's trigger."""

    manifest: Path
    shard_index: Path
    shards_dir: Path
    attack: dict[str, Any] | None
    """The attack config whose trigger the poisoned rows carry; None: no row is triggered."""

    def pairs(self, image_size: int, flags: tuple[str, ...] = ()) -> PoisonedTrainingSet:
        trigger = attack_trigger(self.attack) if self.attack else None
        return PoisonedTrainingSet.from_files(
            self.manifest, self.shard_index, self.shards_dir, image_size, trigger, flags
        )


@dataclass(frozen=True)
class EpochStart:
    """What a method's hook before each epoch sees: the epoch (from 1), the method's options and
    state, the run's seed, the model being trained and its training pairs as they are (no
    views), with how to score them (device, pairs per batch, loader processes)."""

    epoch: int
    options: dict[str, Any]
    state: torch.nn.Module | None
    seed: int
    model: torch.nn.Module
    pairs: TrainingViews
    device: torch.device
    batch_size: int
    num_workers: int


def epoch_weights(out_dir: Path, epoch: int) -> Path:
    """Where the weights after `epoch` epochs are kept (when every epoch is kept)."""
    return Path(out_dir) / f"epoch_{epoch:03d}.pt"


def train(
    settings: TrainSettings,
    data: TrainingData,
    out_dir: Path,
    *,
    init_weights: Path | None = None,
    pretrained: str | None = None,
    keep_every_epoch: bool = False,
    num_workers: int = 0,
    torch_compile: bool = False,
) -> Path:
    """Train on `data`, from `init_weights` (a local file), open_clip's `pretrained` tag or the
    seed; write the step log and the final weights, whose path is returned: `epoch_NNN.pt` for
    every epoch if `keep_every_epoch` (`model.pt` then names the last), else `model.pt` alone.
    `num_workers` data-loader processes;
    `torch_compile` compiles the step's forward pass (torch.compile)."""
    out_dir = Path(out_dir)
    partial = out_dir / PARTIAL
    partial.mkdir(parents=True, exist_ok=True)
    rank, world_size = _distributed_rank()
    device = stage_device()
    if settings.batch_size % world_size:
        raise UserError(f"batch size {settings.batch_size} does not split over {world_size} processes")

    defense = get_defense(settings.method)
    options = training_options(defense, settings.options)
    if init_weights is not None:
        require_checkpoint(init_weights)
    # A resume state or finished run is only valid for the same settings, starting weights and kept files.
    run_settings = asdict(settings) | {
        "init_weights": init_weights and files_sha256([init_weights]),
        "pretrained": pretrained,
        "keep_every_epoch": keep_every_epoch,
    }
    final = epoch_weights(out_dir, settings.epochs) if keep_every_epoch else out_dir / "model.pt"
    if _finished_earlier(partial, run_settings, rank):
        if rank == 0:
            log.info(f"{out_dir}: finished earlier with these settings; publishing the files kept in {PARTIAL}/, no epoch trained")
            _publish(partial, out_dir, run_settings)
        return final
    model = create_model(settings.model, init_weights, seed=settings.seed, pretrained=pretrained)
    model = on_device(model, settings.model, device)
    reference = _frozen_copy(model) if needs_reference(settings.objective) else None
    _limit_training(model, defense, options)
    pairs = data.pairs(image_size_of(model), defense.flags)
    if problems := method_problems(settings.method, options, asdict(settings), len(pairs)):
        raise UserError("\n".join(problems))  # a downloaded dataset's pairs are known only now
    state = method_state(defense, options, model, settings.seed)
    trained = ObjectiveNetwork(model, _n_classes(pairs, settings.objective), state).to(device)
    optimizer = adamw(trained, settings.lr, settings.weight_decay, defense.betas)
    resumed = _resume_state(partial, run_settings, rank, world_size)
    epochs_done, step = 0, 0
    if resumed is not None:
        trained.load_state_dict(resumed["state_dict"])
        optimizer.load_state_dict(resumed["optimizer"])
        epochs_done, step = resumed["epochs_done"], resumed["steps_done"]
        log.info(f"resuming {out_dir} after epoch {epochs_done}")

    sources = view_sources(settings, pairs.captions)
    tokenizer = tokenizer_for(settings.model)
    views = TrainingViews(pairs, tokenizer, sources, settings.seed)
    plain_pairs = TrainingViews(pairs, tokenizer, [], settings.seed)
    recipe = Recipe(settings.objective, normalization_for(model), *view_fields(sources), options, reference)
    sampler = GlobalBatchSlices(len(views), settings.batch_size, settings.seed, rank, world_size)
    loader = DataLoader(
        views, batch_sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda", collate_fn=collate_views,
    )
    if len(loader) == 0:
        raise UserError(f"batch size {settings.batch_size} exceeds the {len(views)} training pairs")
    schedule = resolve(defense.schedule) if defense.schedule else warmup_cosine
    lr_at = schedule(optimizer, settings.lr, settings.warmup_steps, len(loader), settings.epochs, options)
    network = distributed_network(trained, settings.model, settings.objective, world_size, device)
    network = torch.compile(network) if torch_compile else network
    rows = _earlier_log_rows(partial / STEP_LOG, epochs_done)
    pending: list[dict] = []  # logged steps whose values are still tensors

    started, first_epoch = time.perf_counter(), epochs_done
    for epoch in range(epochs_done, settings.epochs):
        sampler.set_epoch(epoch)
        views.epoch = epoch
        if defense.epoch_start:
            start = EpochStart(epoch + 1, options, state, settings.seed, model, plain_pairs, device,
                               settings.batch_size, num_workers)
            views.epoch_flags = _rank_zero_flags(resolve(defense.epoch_start)(start), world_size)
        progress = tqdm(loader, desc=f"epoch {epoch + 1}/{settings.epochs}", disable=rank != 0 or None, leave=False)
        last_step_end = time.perf_counter()
        for batch in progress:
            lr = lr_at(step)
            terms = training_step(network, model, optimizer, batch, recipe, device, epoch + 1)
            seconds, last_step_end = time.perf_counter() - last_step_end, time.perf_counter()
            pending.append({"epoch": epoch + 1, "step": step, "lr": lr, "samples_per_s": settings.batch_size / seconds} | terms)
            step += 1
            if step % LOG_EVERY_STEPS == 0:
                rows += _finite_rows(pending, epochs_done, partial, settings.lr)
                progress.set_postfix(loss=f"{rows[-1]['loss']:.3f}", lr=f"{lr:.2e}")
        rows += _finite_rows(pending, epochs_done, partial, settings.lr)
        epochs_done = epoch + 1
        if rank == 0:
            _end_epoch(partial, trained, optimizer, rows, epochs_done, step, run_settings, keep_every_epoch, world_size)
        log.info(_epoch_line(out_dir, epochs_done, settings, float(rows[-1]["loss"]), len(loader),
                             (time.perf_counter() - started) / (epochs_done - first_epoch)))
        _barrier(world_size)

    if rank == 0:
        if keep_every_epoch:
            (partial / "model.pt").unlink(missing_ok=True)  # linked before a kill while publishing
            os.link(epoch_weights(partial, settings.epochs), partial / "model.pt")
        else:
            save_weights(partial / "model.pt", model)
        _publish(partial, out_dir, run_settings)
    return final


def view_sources(settings: TrainSettings, captions: Sequence[str]) -> list[ViewSource]:
    """The view sources of a run: those its objective's terms and its method need."""
    defense = get_defense(settings.method)
    options = training_options(defense, settings.options)
    context = ViewContext(captions, settings.seed, settings.synonyms, options, settings.eda)
    return build_views(needed_views(settings.objective) + defense.views, context)


def run_training(
    settings: dict[str, Any],
    data: dict[str, Any],
    out_dir: str,
    init_weights: str | None = None,
    pretrained: str | None = None,
    keep_every_epoch: bool = False,
    num_workers: int = 0,
    torch_compile: bool = False,
) -> str:
    """The training stage: `train` from plain arguments (the fields of TrainSettings and
    TrainingData), so launching it needs no torch; returns the final weights' path."""
    final = train(
        TrainSettings(**settings), TrainingData(**data), Path(out_dir),
        init_weights=init_weights, pretrained=pretrained, keep_every_epoch=keep_every_epoch,
        num_workers=num_workers, torch_compile=torch_compile,
    )
    return str(final)


def training_step(
    network: torch.nn.Module,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, Any],
    recipe: Recipe,
    device: torch.device,
    epoch: int = 1,
) -> dict[str, torch.Tensor]:
    """One optimizer step of `epoch` (from 1) on this process's part of the batch; returns the
    detached loss terms.

    `network` is the ObjectiveNetwork over `model`, or its DistributedDataParallel wrapper. The terms stay tensors (no
    device sync per step); the loop checks them for NaN every LOG_EVERY_STEPS steps.
    """
    rank, world_size = _distributed_rank()
    batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch |= {name: recipe.normalize(batch[name]) for name in ("image", *recipe.image_fields)}
    with tf32_matmuls(device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            terms = objective_losses(
                network, batch, recipe.objective, image_fields=recipe.image_fields, text_fields=recipe.text_fields,
                options=recipe.options, reference=recipe.reference, rank=rank, world_size=world_size, epoch=epoch,
            )
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    clamp_logit_scale(model)
    logged = {"loss": loss} | {f"loss_{name}": term for name, term in terms.items()}
    return {name: value.detach() for name, value in logged.items()} | {
        "logit_scale": model.logit_scale.detach().exp()
    }


def distributed_network(
    trained: ObjectiveNetwork, model_name: str, objective: dict[str, float], world_size: int, device: torch.device
) -> torch.nn.Module:
    """The network one step runs: with several processes, its DistributedDataParallel wrapper, whose
    batch norms normalize with the statistics of the global batch, as one process does."""
    if world_size == 1:
        return trained
    if any(isinstance(module, BATCH_NORMS) and module.training for module in trained.modules()):
        if device.type != "cuda":
            raise UserError(
                f"{model_name} has batch norms, which {world_size} processes on {device.type} (gloo) cannot "
                f"synchronize: each would normalize with its own part of the batch, another objective than "
                f"one process's; train it in one process, on GPUs, or choose a ViT"
            )
        trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trained)
    # A supervised-only objective leaves the text tower without gradients.
    return DistributedDataParallel(trained, find_unused_parameters=needs_labels(objective))


def global_values(pending: list[dict]) -> list[dict]:
    """The pending log rows as plain numbers, each term the mean over the processes: a term
    computed on each process's rows (the supervised one) is then the global batch's."""
    if not pending:
        return []
    names = [name for name, value in pending[0].items() if torch.is_tensor(value)]
    values = torch.stack([torch.stack([row[name].float() for name in names]) for row in pending])
    _, world_size = _distributed_rank()
    if world_size > 1:
        dist.all_reduce(values)
        values /= world_size
    return [row | dict(zip(names, row_values.tolist())) for row, row_values in zip(pending, values)]



def _epoch_line(out_dir: Path, epochs_done: int, settings: TrainSettings, loss: float, steps: int, epoch_s: float) -> str:
    """The progress line of an epoch: which run (its dimensions' values: parallel jobs share a
    console), where it is, how fast, and how long it has left."""
    run = "/".join(part.split("=", 1)[1] for part in Path(out_dir).parts if "=" in part) or str(out_dir)
    left = epoch_s * (settings.epochs - epochs_done)
    return (
        f"{run}: epoch {epochs_done}/{settings.epochs} ({steps * epochs_done} steps): loss {loss:.4f}, "
        f"{steps * settings.batch_size / epoch_s:.0f} samples/s, {left / 60:.1f} min left"
    )

def _finite_rows(pending: list[dict], epochs_done: int, folder: Path, lr: float) -> list[dict]:
    """The pending log rows as plain numbers, global (emptying `pending`); stop if a loss is not
    finite, keeping the last checkpoint."""
    finished = global_values(pending)
    pending.clear()
    for row in finished:
        if not math.isfinite(row["loss"]):
            raise UserError(
                f"the loss became {row['loss']} at epoch {row['epoch']}, step {row['step']}: "
                f"training stopped, keeping the checkpoint of epoch {epochs_done} in {folder}; "
                f"try a lower learning rate than {lr}"
            )
    return finished


def _resume_state(partial: Path, run_settings: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """The state an interrupted run with the same settings left in `partial`, or None to start
    afresh from an empty `partial`: an earlier run's epoch weights or step log left there would
    be published with this run's files."""
    state = load_resume_state(partial / RESUME_STATE)
    _barrier(world_size)  # every process has read the state before it is discarded
    if state is not None and state["settings"] != run_settings:
        if rank == 0:
            log.warning(f"discarding the partial run in {partial}: {changed_settings(state['settings'], run_settings)} changed")
        state = None
    if state is None and rank == 0:
        shutil.rmtree(partial)
        partial.mkdir()
    if state is not None and state.get("world_size") != world_size and rank == 0:
        log.warning(
            f"resuming {partial} with {world_size} processes, {state.get('world_size')} before: the global batches "
            f"are the same, but their sums run in another order, so the weights differ in their last bits "
            f"from those of an uninterrupted run"
        )
    return state


def method_state(defense: Defense, options: dict[str, Any], model: torch.nn.Module, seed: int) -> torch.nn.Module | None:
    """A fresh state of the method (RoCLIP's pool), or None for one that keeps none."""
    return resolve(defense.state)(options, model.visual.output_dim, seed) if defense.state else None


def _rank_zero_flags(flags: dict[str, np.ndarray], world_size: int) -> dict[str, np.ndarray]:
    """The epoch's flags as the first process computed them: a fit on slightly different sums
    must not split the data differently on another process."""
    if world_size > 1:
        shared = [flags]
        dist.broadcast_object_list(shared, src=0)
        flags = shared[0]
    return flags


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The starting model, frozen: the reference some terms compare the cleaned model against."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def _limit_training(model: torch.nn.Module, defense: Defense, options: dict[str, Any]) -> None:
    """Freeze what the method does not update: all but its trainable parameters, the temperature.
    A frozen batch norm keeps its statistics too (eval mode): the rest of the model stays as it was."""
    if defense.trainable:
        trainable = set(resolve(defense.trainable)(model, options))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)
        for module in model.modules():
            frozen = not any(parameter.requires_grad for parameter in module.parameters())
            if isinstance(module, BATCH_NORMS) and frozen:
                module.eval()
    if not defense.learns_logit_scale:
        model.logit_scale.requires_grad_(False)


def _n_classes(pairs: PoisonedTrainingSet, objective: dict[str, float]) -> int | None:
    """The supervised head's classes: those of the labelled training pairs."""
    if not needs_labels(objective):
        return None
    if pairs.classnames is None:
        raise UserError(
            "the supervised objective needs labelled training pairs; give clean.labels "
            "(a Parquet table of url and classname) for a downloaded dataset"
        )
    return len(pairs.classnames)


def _end_epoch(folder, trained, optimizer, rows, epochs_done, steps_done, settings, keep_every_epoch, world_size) -> None:
    """Write the epoch's weights and log, then the resume state: the state is the commit point."""
    if keep_every_epoch:
        save_weights(epoch_weights(folder, epochs_done), trained.clip)
    with atomic_output(folder / STEP_LOG) as temporary:
        pq.write_table(pa.Table.from_pylist(rows), temporary)
    save_resume_state(
        folder / RESUME_STATE, trained, optimizer,
        epochs_done=epochs_done, steps_done=steps_done, settings=settings, world_size=world_size,
    )


def _publish(partial: Path, out_dir: Path, run_settings: dict[str, Any]) -> None:
    """Link the finished run's files from `partial` into `out_dir`, keeping them in `partial` with
    the record of the run's settings in place of its resume state.

    The resume state goes last: a run killed while publishing publishes again when restarted.
    """
    for path in sorted(partial.iterdir()):
        if path.name not in (RESUME_STATE, FINISHED):
            with atomic_output(out_dir / path.name) as temporary:
                os.link(path, temporary)
    save_torch({"settings": run_settings}, partial / FINISHED)
    (partial / RESUME_STATE).unlink(missing_ok=True)


def _finished_earlier(partial: Path, run_settings: dict[str, Any], rank: int) -> bool:
    """Whether `partial` holds the files of a run with these settings that finished; a finished run
    under other settings is discarded with the rest of `partial` (by _resume_state)."""
    record = load_resume_state(partial / FINISHED)
    if record is None:
        return False
    if record["settings"] != run_settings:
        if rank == 0:
            log.warning(f"discarding the finished run in {partial}: {changed_settings(record['settings'], run_settings)} changed")
        return False
    return True


def _earlier_log_rows(path: Path, epochs_done: int) -> list[dict]:
    """The logged steps of the epochs a resumed run keeps."""
    if epochs_done == 0 or not path.is_file():
        return []
    table = pq.read_table(path)
    return table.filter(pc.less_equal(table["epoch"], epochs_done)).to_pylist()


def _distributed_rank() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()
