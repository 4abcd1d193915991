"""Training throughput: our training step vs open_clip_train's, same model, batch and precision.

Each path trains a freshly initialized copy of the same model on the same pre-made batches held on
the device, so the comparison is of the step itself, not of data loading; ours takes the images
in 8 bits, as our loader gives them, and normalizes them in the step, open_clip_train's takes
them normalized, as its loader gives them:

- ours, MMCL: the MMCL objective (CLIP's loss) through our training step, as the loop runs it:
  fused AdamW and a ResNet image tower in channels-last memory (on CUDA and CPU), warmup-cosine,
  bf16 autocast and TF32 matmuls on CUDA, and torch.compile with --compile;
- ours, MMCL+SSL: the same with the in-modal term, which encodes an augmented view of every image
  and caption too (twice the encoding);
- open_clip_train: its train_one_epoch with CLIP's loss, as its main sets it up (a plain AdamW,
  its cosine_lr, TF32 matmuls).

Prints samples/s of each (best of --rounds, alternating), ours / open_clip_train's for MMCL, and
ours MMCL+SSL / open_clip_train's MMCL (not the same objective: the cost of the in-modal term).

Defaults: on a GPU, RN50 at 224 px in bf16 autocast with batch 256; on a CPU, the embedded
default's tiny-rn in fp32 with batch 128.
"""

import argparse
import logging
import time
from argparse import Namespace
from collections.abc import Callable

import open_clip
import torch
from open_clip_train.data import DataInfo
from open_clip_train.scheduler import cosine_lr
from open_clip_train.train import train_one_epoch

from cleanclip_core.devices import on_device, tf32_matmuls
from cleanclip_core.models import create_model, image_size_of, normalization_for
from cleanclip_core.objectives import ObjectiveNetwork
from cleanclip_core.training.loop import Recipe, training_step
from cleanclip_core.training.optim import adamw, warmup_cosine

LR, WEIGHT_DECAY, WARMUP = 5e-4, 0.1, 10
OBJECTIVES = {
    "MMCL": ({"mmcl": 1.0}, (), ()),
    "MMCL+SSL": ({"mmcl": 1.0, "inmodal": 1.0}, ("augmented_image",), ("augmented_text",)),
}
"""Each objective's weights and extra image and text fields."""
REFERENCE = "open_clip_train, MMCL"
GPU_COMMAND = "nice .venv/bin/python benchmarks/train_step.py   (RN50, 224 px, bf16, batch 256; then again with --compile)"


class Batches(list):
    """Pre-made (images, texts) batches with the attributes open_clip_train's loop reads."""

    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def num_samples(self) -> int:
        return sum(len(images) for images, _ in self)


def make_batches(model_name: str, size: int, steps: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Random batches of 8-bit images and token ids, each with an augmented view of both, and the
    images normalized (`normalized_image`, what open_clip_train's loader gives)."""
    model = create_model(model_name)
    image_size, normalize = image_size_of(model), normalization_for(model)
    context = open_clip.get_tokenizer(model_name).context_length
    generator = torch.Generator().manual_seed(0)

    def images() -> torch.Tensor:
        return torch.randint(0, 256, (size, 3, image_size, image_size), dtype=torch.uint8, generator=generator).to(device)

    def texts() -> torch.Tensor:
        return torch.randint(1, 49407, (size, context), generator=generator).to(device)

    batches = [
        {"image": images(), "text": texts(), "augmented_image": images(), "augmented_text": texts()}
        for _ in range(steps)
    ]
    return [batch | {"normalized_image": normalize(batch["image"])} for batch in batches]


Pass = Callable[[list[dict[str, torch.Tensor]]], None]
"""One pass of a training path over the batches; the model and optimizer live on across passes."""


def ours(model_name: str, objective: tuple, steps: int, device: torch.device, compiled: bool) -> Pass:
    """Our step, set up as the training loop sets it up."""
    model = on_device(create_model(model_name), model_name, device)
    weights, image_fields, text_fields = objective
    recipe = Recipe(weights, normalization_for(model), image_fields, text_fields)
    network = ObjectiveNetwork(model)
    optimizer = adamw(network, LR, WEIGHT_DECAY)
    schedule = warmup_cosine(optimizer, LR, WARMUP, steps_per_epoch=steps, epochs=1)
    stepped = torch.compile(network) if compiled else network

    def run(batches: list[dict[str, torch.Tensor]]) -> None:
        for step, batch in enumerate(batches):
            schedule(step)
            training_step(stepped, model, optimizer, batch, recipe, device)

    return run


def open_clip_trains(model_name: str, steps: int, device: torch.device) -> Pass:
    """open_clip_train's train_one_epoch, set up as its main sets it up."""
    model = create_model(model_name).to(device)
    model.output_dict = True  # as open_clip_train creates its models
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = cosine_lr(optimizer, LR, WARMUP, steps)

    def run(batches: list[dict[str, torch.Tensor]]) -> None:
        args = Namespace(
            device=str(device), precision="amp_bf16" if device.type == "cuda" else "fp32",
            accum_freq=1, distill=False, skip_scheduler=False, grad_clip_norm=None, horovod=False,
            distributed=False, world_size=1, rank=0, batch_size=len(batches[0]["image"]),
            log_every_n_steps=10**9, wandb=False, save_logs=False,
        )
        data = {"train": DataInfo(Batches((batch["normalized_image"], batch["text"]) for batch in batches))}
        with tf32_matmuls(device):  # its main sets TF32 for the whole process
            train_one_epoch(model, data, open_clip.ClipLoss(), 0, optimizer, None, schedule, None, args)

    return run


def samples_per_second(run: Pass, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(batch["image"]) for batch in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile our step (the execution setting torch_compile)")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # open_clip_train logs every epoch's end
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_name = args.model or ("RN50" if device.type == "cuda" else "tiny-rn")
    batch_size = args.batch_size or (256 if device.type == "cuda" else 128)
    batches = make_batches(model_name, batch_size, args.steps, device)
    paths = {f"ours, {name}": ours(model_name, objective, args.steps, device, args.compile) for name, objective in OBJECTIVES.items()}
    paths[REFERENCE] = open_clip_trains(model_name, args.steps, device)
    for run in paths.values():  # warm-up, and compilation with --compile
        run(batches[:2])
    results = {name: [] for name in paths}
    for _ in range(args.rounds):  # alternating, so load from elsewhere slows every path alike
        for name, run in paths.items():
            results[name].append(samples_per_second(run, batches, device))
    best = {name: max(values) for name, values in results.items()}
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    compiled = ", our step compiled" if args.compile else ""
    print(f"{model_name}, batch {batch_size}, {precision}, {device}, {args.steps} steps, best of {args.rounds}{compiled}")
    for name, value in best.items():
        print(f"{name:>22}: {value:8.1f} samples/s   (all: {', '.join(f'{v:.1f}' for v in results[name])})")
    print(f"{'ratio, MMCL':>22}: {best['ours, MMCL'] / best[REFERENCE]:8.3f}  (ours / open_clip_train's)")
    print(f"{'ratio, MMCL+SSL':>22}: {best['ours, MMCL+SSL'] / best[REFERENCE]:8.3f}  (ours with the in-modal term / open_clip_train's MMCL)")
    print(f"on a GPU, from the repository root:  {GPU_COMMAND}")


if __name__ == "__main__":
    main()
