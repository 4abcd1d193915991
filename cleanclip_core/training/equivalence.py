"""Whether several processes compute one process's training step, on this machine's devices.

One step of every objective's terms on a batch of B pairs in one process, against the same step
with the batch split over W processes (B/W each, torch.distributed): the loss terms (global means)
and the gradients, which must agree up to the order of floating-point sums. The batch carries
what every term reads (augmented views, sub-captions, labels, unlearning flags), with flagged
rows spread unevenly over the processes, so that a term computed on each process's rows alone
would show.
"""

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cleanclip_core.defenses import get_defense, training_options
from cleanclip_core.devices import on_device
from cleanclip_core.models import create_model, image_size_for, normalization_for, tokenizer_for
from cleanclip_core.objectives import ObjectiveNetwork, needs_labels, needs_reference
from cleanclip_core.training.loop import Recipe, distributed_network, global_values, method_state, training_step
from cleanclip_core.training.optim import adamw

OBJECTIVES = {
    "mmcl": {"mmcl": 1.0},
    "mmcl_ssl": {"mmcl": 1.0, "inmodal": 1.0},
    "supervised": {"supervised": 1.0},
    "ta_cleaner": {"mmcl": 1.0, "inmodal": 1.0, "subcaption": 1.0},
    "par": {"mmcl": 1.0, "repulsion": 0.5},
    "ubt": {"unlearn": 1.0, "retain": 1.0},
    "roclip": {"roclip": 1.0},
    "safeclip": {"safeclip": 1.0},
}
"""Every registered term of the built-in methods, in the objectives that use them."""
OPTIONS = {"form": "batch", "tau": 10.0, "pool_size": 6, "break_epoch": 1, "inmodal_epochs": 0, "clip_epochs": 0}
"""TA-Cleaner's batch form (its rows compare across the batch); PAR's threshold above any
distance of normalized embeddings (4), so that its term is never switched off; RoCLIP matching
(into a pool smaller than the batch) and SafeCLIP splitting on the first epoch."""
IMAGE_FIELDS = ("augmented_image",)
TEXT_FIELDS = ("augmented_text", "positive_text", "negative_text")
FLAGGED = [True, True, True, False, False, True, False, False]
"""Rows flagged for a sub-caption and for unlearning: three in the first half, one in the second."""
N_CLASSES = 3
LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Difference:
    """How far W processes' step is from one process's: the largest relative difference of a loss
    term, and the relative L2 distance of all gradients."""

    loss: float
    gradients: float


def equivalence_batch(size: int = len(FLAGGED), image_size: int = 32, context_length: int = 16) -> dict[str, torch.Tensor]:
    """A random batch as the loader gives it (8-bit images, tokens) with every term's fields."""
    generator = torch.Generator().manual_seed(0)
    flags = torch.tensor(FLAGGED * (size // len(FLAGGED)))
    images = {
        name: torch.randint(0, 256, (size, 3, image_size, image_size), dtype=torch.uint8, generator=generator)
        for name in ("image", *IMAGE_FIELDS)
    }
    texts = {name: torch.randint(1, 49407, (size, context_length), generator=generator) for name in ("text", *TEXT_FIELDS)}
    labels = torch.randint(0, N_CLASSES, (size,), generator=generator)
    return images | texts | {"label": labels, "subcaption": flags, "unlearn": flags, "safe": flags}


def one_step(
    model_name: str, method: str, batch: dict[str, torch.Tensor], device: torch.device, world_size: int = 1
) -> tuple[dict[str, float], torch.Tensor]:
    """The loss terms (means over the processes) and the flattened gradients of one training step
    of a fresh model on this process's `batch`, with the objective of OBJECTIVES[method] (and the
    method's state, if it keeps one)."""
    objective = OBJECTIVES[method]
    model = on_device(create_model(model_name, seed=0), model_name, device)
    reference = create_model(model_name, seed=1).to(device).eval().requires_grad_(False) if needs_reference(objective) else None
    torch.manual_seed(0)  # the supervised head
    defense = get_defense(method)
    options = training_options(defense, OPTIONS)
    state = method_state(defense, options, model, seed=0)
    trained = ObjectiveNetwork(model, N_CLASSES if needs_labels(objective) else None, state).to(device)
    network = distributed_network(trained, model_name, objective, world_size, device)
    recipe = Recipe(objective, normalization_for(model), IMAGE_FIELDS, TEXT_FIELDS, options, reference)
    optimizer = adamw(trained, LEARNING_RATE, weight_decay=0.1)
    terms = training_step(network, model, optimizer, batch, recipe, device)
    gradients = [p.grad.flatten() for p in trained.parameters() if p.grad is not None]
    return global_values([terms])[0], torch.cat(gradients).cpu()


def _rank_steps(
    rank: int, world_size: int, model_name: str, batch: dict, device_type: str, folder: str, methods: Sequence[str]
) -> None:
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device(device_type)
    if device_type == "cuda":
        torch.cuda.set_device(device)
    part = {name: tensor.chunk(world_size)[rank] for name, tensor in batch.items()}
    steps = {name: one_step(model_name, name, part, device, world_size) for name in methods}
    if rank == 0:
        torch.save(steps, f"{folder}/steps.pt")
    dist.destroy_process_group()


def _relative(value: torch.Tensor | float, expected: torch.Tensor | float) -> float:
    value, expected = torch.as_tensor(value, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    return float((value - expected).norm() / expected.norm().clamp(min=1e-12))


def differences(
    model_name: str,
    device_type: str = "cpu",
    world_size: int = 2,
    batch_size: int = 8,
    methods: Sequence[str] = tuple(OBJECTIVES),
) -> dict[str, Difference]:
    """Per objective of OBJECTIVES named in `methods`, how far `world_size` processes' step is
    from one process's, on a batch of the model's image size and context length."""
    batch = equivalence_batch(batch_size, image_size_for(model_name), tokenizer_for(model_name).context_length)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_rank_steps, args=(world_size, model_name, batch, device_type, folder, methods), nprocs=world_size)
        distributed = torch.load(Path(folder) / "steps.pt", weights_only=True)
    device = torch.device(device_type)
    result = {}
    for name in methods:
        (terms, gradients), (expected_terms, expected_gradients) = distributed[name], one_step(model_name, name, batch, device)
        loss = max(_relative(terms[term], expected_terms[term]) for term in expected_terms if term.startswith("loss"))
        result[name] = Difference(loss, _relative(gradients, expected_gradients))
    return result
