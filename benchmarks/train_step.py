"""Training throughput: our training step vs open_clip_train's, same model, batch and precision.

Both train a freshly initialized copy of the same model with the MMCL objective (CLIP's loss),
AdamW and the warmup-cosine schedule, on the same pre-made batches held on the device, so the
comparison is of the step itself, not of data loading. Prints samples/s of each (best of
--rounds, alternating) and their ratio (ours / open_clip_train's).

Defaults: on a GPU, RN50 at 224 px in bf16 autocast with batch 256; on a CPU, the embedded
default's tiny-rn in fp32 with batch 128.
"""

import argparse
import logging
import time
from argparse import Namespace

import open_clip
import torch
from open_clip_train.data import DataInfo
from open_clip_train.train import train_one_epoch

from cleanclip_core.models import create_model, image_size_of
from cleanclip_core.objectives import ObjectiveNetwork
from cleanclip_core.training.loop import Recipe, training_step
from cleanclip_core.training.optim import adamw, warmup_cosine

LR, WEIGHT_DECAY, WARMUP = 5e-4, 0.1, 10


class Batches(list):
    """Pre-made (images, texts) batches with the attributes open_clip_train's loop reads."""

    @property
    def num_batches(self) -> int:
        return len(self)

    @property
    def num_samples(self) -> int:
        return sum(len(images) for images, _ in self)


def make_batches(model_name: str, size: int, steps: int, device: torch.device) -> Batches:
    image_size = image_size_of(create_model(model_name))
    context = open_clip.get_tokenizer(model_name).context_length
    generator = torch.Generator().manual_seed(0)
    return Batches(
        (torch.randn(size, 3, image_size, image_size, generator=generator).to(device),
         torch.randint(1, 49407, (size, context), generator=generator).to(device))
        for _ in range(steps)
    )


def ours(model_name: str, batches: Batches, device: torch.device) -> float:
    model = create_model(model_name).to(device)
    network = ObjectiveNetwork(model)
    optimizer = adamw(network, LR, WEIGHT_DECAY)
    schedule = warmup_cosine(optimizer, LR, WARMUP, len(batches))

    def run() -> None:
        for step, (images, texts) in enumerate(batches):
            schedule(step)
            batch = {"image": images, "text": texts}
            training_step(network, model, optimizer, batch, Recipe({"mmcl": 1.0}), device)

    return timed(run, batches, device)


def open_clip_trains(model_name: str, batches: Batches, device: torch.device) -> float:
    model = create_model(model_name).to(device)
    model.output_dict = True  # as open_clip_train creates its models
    optimizer = adamw(model, LR, WEIGHT_DECAY)
    schedule = warmup_cosine(optimizer, LR, WARMUP, len(batches))
    args = Namespace(
        device=str(device), precision="amp_bf16" if device.type == "cuda" else "fp32",
        accum_freq=1, distill=False, skip_scheduler=False, grad_clip_norm=None, horovod=False,
        distributed=False, world_size=1, rank=0, batch_size=len(batches[0][0]),
        log_every_n_steps=10**9, wandb=False, save_logs=False,
    )
    loss = open_clip.ClipLoss()
    data = {"train": DataInfo(batches)}
    return timed(lambda: train_one_epoch(model, data, loss, 0, optimizer, None, schedule, None, args), batches, device)


def timed(run, batches: Batches, device: torch.device) -> float:
    """Samples per second of one pass of `run` over the batches."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches.num_samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # open_clip_train logs every epoch's end
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model_name = args.model or ("RN50" if device.type == "cuda" else "tiny-rn")
    batch_size = args.batch_size or (256 if device.type == "cuda" else 128)
    batches = make_batches(model_name, batch_size, args.steps, device)
    warm_up = Batches(batches[:2])
    ours(model_name, warm_up, device), open_clip_trains(model_name, warm_up, device)
    results = {"ours": [], "open_clip_train": []}
    for _ in range(args.rounds):
        results["ours"].append(ours(model_name, batches, device))
        results["open_clip_train"].append(open_clip_trains(model_name, batches, device))
    best = {name: max(values) for name, values in results.items()}
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"{model_name}, batch {batch_size}, {precision}, {device}, {args.steps} steps, best of {args.rounds}")
    for name, value in best.items():
        print(f"{name:>16}: {value:8.1f} samples/s   (all: {', '.join(f'{v:.1f}' for v in results[name])})")
    print(f"{'ratio':>16}: {best['ours'] / best['open_clip_train']:8.3f}  (ours / open_clip_train)")


if __name__ == "__main__":
    main()
