"""The GPU check (`make gpu-check`): our training step, evaluation and DDP on one machine's GPUs,
against open_clip_train's, in one command and a few minutes. Nothing is downloaded: open_clip's
RN50 and ViT-B-32 configs with random weights, random batches held on the GPU.

- Training step, at 224 px in bf16 autocast, at two batch sizes: ours (the loop's
  `training_step` with the MMCL and the MMCL+SSL objectives, set up as the loop sets it up) against
  open_clip_train's `train_one_epoch` with CLIP's loss (benchmarks/train_step.py builds both):
  step time, samples/s and peak memory (torch.cuda.max_memory_allocated, beyond the batches held
  on the GPU). MMCL+SSL encodes every image and caption twice; its ratio is against the same MMCL
  reference.
- Evaluation: the zero-shot evaluation's forward pass (`evaluate_ranks`: image embeddings, logits
  against a 1,000-class classifier, each image's rank) against the loop of open_clip_train's
  `zero_shot.run` (written out here: its accuracy function fails under numpy 2): batch time,
  images/s and peak memory.
- With two GPUs: one step of 2 NCCL DDP processes (synchronized batch norms for RN50) against one
  process on the whole batch (cleanclip_core.training.equivalence): the relative difference of
  the loss and the relative L2 distance of the gradients. bf16 sums in another order should stay
  within 1e-2 and 5e-2 (the bounds of tests/training/test_distributed.py on GPUs); another
  objective gives tens of percent. With one GPU a row says it was skipped; where it fails (NCCL, say), a row gives the
  error and the check exits 1 after printing the table.

Prints one markdown table (progress goes to stderr). Without CUDA it says so in one line and
exits 1; `--device cpu --tiny` runs the same code on the tiny models on the CPU (fp32, 32 px; DDP
over gloo for the ViT, whose batch has no batch norms to synchronize), as the tests do.

    make gpu-check      (or, from the repository root: .venv/bin/python -m benchmarks.gpu_check)
"""

import argparse
import gc
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip_train.precision import get_autocast

from benchmarks.train_step import OBJECTIVES, Pass, make_batches, open_clip_trains, ours, samples_per_second
from cleanclip_core.devices import has_resnet_tower, on_device
from cleanclip_core.evaluation import ZeroShotModel, evaluate_ranks
from cleanclip_core.models import create_model, image_size_of, normalization_for
from cleanclip_core.training.equivalence import differences

GIB = 2**30
WARMUP_BATCHES = 2
CLASSES = 1000
FAILED = "failed"
EQUIVALENCE_METHODS = {"MMCL": "mmcl", "MMCL+SSL": "mmcl_ssl"}
"""The objectives of benchmarks/train_step.py by their names in cleanclip_core.training.equivalence."""


@dataclass(frozen=True)
class Scale:
    models: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    steps: int
    evaluation_batch_size: int
    ddp_batch_size: int
    """The global batch of the DDP check, a multiple of 8 (equivalence's batch)."""


GPU = Scale(("RN50", "ViT-B-32"), (128, 512), steps=20, evaluation_batch_size=256, ddp_batch_size=32)
TINY = Scale(("tiny-rn-w16", "tiny-vit"), (8, 16), steps=2, evaluation_batch_size=16, ddp_batch_size=8)


@dataclass(frozen=True)
class Timing:
    """One path over the timed batches; peak memory None on a CPU."""

    step_seconds: float
    samples_per_second: float
    peak_bytes: int | None


@dataclass(frozen=True)
class Row:
    check: str
    model: str
    batch: str
    measure: str
    ours: str
    reference: str
    ratio: str = ""


def timed(build: Callable[[], Pass], batches: list[dict[str, torch.Tensor]], device: torch.device) -> Timing | None:
    """Build a path, run it on the first batches (warm-up), then time it over all of them; the
    peak memory is what it allocated beyond what was there before it was built (the batches).
    None if it ran out of GPU memory."""
    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    try:
        run = build()
        run(batches[:WARMUP_BATCHES])
        speed = samples_per_second(run, batches, device)
    except torch.OutOfMemoryError:
        return None
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    return Timing(len(batches[0]["image"]) / speed, speed, peak)


def comparison_rows(
    check: str, model_name: str, batch_size: int, step: str, unit: str, ours: Timing | None, reference: Timing | None
) -> list[Row]:
    """Time per `step`, `unit`s per second and peak memory of ours and the reference, and ours / the reference."""
    measures = {
        f"{step} time (ms)": (lambda timing: timing.step_seconds * 1e3, "{:.1f}"),
        f"{unit}/s": (lambda timing: timing.samples_per_second, "{:,.0f}"),
        "peak memory (GiB)": (lambda timing: None if timing.peak_bytes is None else timing.peak_bytes / GIB, "{:.2f}"),
    }
    rows = []
    for measure, (value_of, form) in measures.items():
        values = [None if timing is None else value_of(timing) for timing in (ours, reference)]
        cells = [
            "out of memory" if timing is None else "–" if value is None else form.format(value)
            for timing, value in zip((ours, reference), values)
        ]
        ratio = f"{values[0] / values[1]:.2f}" if None not in values and values[1] else ""
        rows.append(Row(check, model_name, str(batch_size), measure, *cells, ratio))
    return rows


def training_rows(model_name: str, batch_size: int, steps: int, device: torch.device) -> list[Row]:
    """Our step with each objective against open_clip_train's MMCL step, on the same batches."""
    batches = make_batches(model_name, batch_size, steps, device)
    reference = timed(lambda: open_clip_trains(model_name, steps, device), batches, device)
    rows = []
    for name, objective in OBJECTIVES.items():
        timing = timed(lambda: ours(model_name, objective, steps, device, compiled=False), batches, device)
        check = "training, MMCL" if name == "MMCL" else f"training, {name} vs MMCL"
        rows += comparison_rows(check, model_name, batch_size, "step", "samples", timing, reference)
    return rows


def evaluation_batches(model_name: str, batch_size: int, steps: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Random normalized images on the device with labels on the CPU, as the evaluation loader gives them."""
    model = create_model(model_name)
    size, normalize = image_size_of(model), normalization_for(model)
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": normalize(
                torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=generator)
            ).to(device),
            "label": torch.randint(0, CLASSES, (batch_size,), generator=generator),
        }
        for _ in range(steps)
    ]


def our_evaluation(model_name: str, classifier: torch.Tensor, device: torch.device) -> Pass:
    checkpoint = ZeroShotModel(on_device(create_model(model_name), model_name, device), classifier.to(device))
    return lambda batches: evaluate_ranks([checkpoint], batches, None, device)


def open_clip_trains_evaluation(model_name: str, classifier: torch.Tensor, device: torch.device) -> Pass:
    """open_clip_train's zero-shot pass (zero_shot.run) written out, its model as its main creates
    it: its own accuracy() fails under numpy 2 (float() of a one-element array), so its top-1 and
    top-5 counts are taken here with .item(), one transfer each per batch, as it takes them."""
    model = create_model(model_name).to(device).eval()
    model.output_dict = True
    classifier = classifier.to(device)
    autocast = get_autocast("amp_bf16" if device.type == "cuda" else "fp32", device_type=device.type)

    def run(batches: list[dict[str, torch.Tensor]]) -> None:
        with torch.inference_mode():
            for batch in batches:
                images, target = batch["image"].to(device), batch["label"].to(device)
                with autocast():
                    logits = 100.0 * model(image=images)["image_features"] @ classifier
                correct = logits.topk(5, 1).indices.t().eq(target.view(1, -1))
                _top1, _top5 = (correct[:k].sum().item() for k in (1, 5))

    return run


def evaluation_rows(model_name: str, batch_size: int, steps: int, device: torch.device) -> list[Row]:
    batches = evaluation_batches(model_name, batch_size, steps, device)
    embed_dim = open_clip.get_model_config(model_name)["embed_dim"]
    classifier = F.normalize(torch.randn(embed_dim, CLASSES, generator=torch.Generator().manual_seed(0)), dim=0)
    timings = [
        timed(lambda: build(model_name, classifier, device), batches, device)
        for build in (our_evaluation, open_clip_trains_evaluation)
    ]
    return comparison_rows("zero-shot evaluation", model_name, batch_size, "batch", "images", *timings)


def ddp_rows(models: tuple[str, ...], batch_size: int, device: torch.device) -> list[Row]:
    """One step of 2 processes against one, per model and objective."""
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return [Row("DDP, 2 processes vs 1", "–", "–", "–", "skipped: one GPU, the check needs two", "")]
    backend = "NCCL" if device.type == "cuda" else "gloo"
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # this process's first GPU is one of the two
    check, rows = f"DDP {backend}, 2 processes vs 1", []
    for model_name in models:
        if device.type == "cpu" and has_resnet_tower(model_name):
            rows.append(Row(check, model_name, "–", "–", "skipped: gloo cannot synchronize batch norms", ""))
            continue
        print(f"DDP {model_name}", file=sys.stderr, flush=True)
        try:
            found = differences(model_name, device.type, 2, batch_size, tuple(EQUIVALENCE_METHODS.values()))
        except Exception as error:  # a process's error (NCCL's, say) comes as its traceback's text
            reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            rows.append(Row(check, model_name, str(batch_size), "–", f"{FAILED}: {reason}", ""))
            continue
        batch = f"{batch_size} (2 x {batch_size // 2})"
        for name, method in EQUIVALENCE_METHODS.items():
            measures = {"loss, relative difference": found[method].loss, "gradients, relative L2 distance": found[method].gradients}
            rows += [Row(f"{check}, {name}", model_name, batch, measure, f"{value:.1e}", "1 process") for measure, value in measures.items()]
    return rows


def markdown(rows: list[Row]) -> str:
    header = ("check", "model", "batch", "measure", "ours", "reference", "ours / reference")
    lines = [header, ("---",) * len(header)] + [tuple(vars(row).values()) for row in rows]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)} x {torch.cuda.device_count()}, CUDA {torch.version.cuda}, "
                f"bf16 autocast and TF32")
    return "CPU, fp32"


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny models at 32 px, small batches, 2 steps (for a CPU)")
    parser.add_argument("--batch-sizes", type=positive, nargs="+", help="training batch sizes (default: 128 512; tiny: 8 16)")
    parser.add_argument("--steps", type=positive, help="timed steps, after 2 warm-up steps (default: 20; tiny: 2)")
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu check: no CUDA GPU is visible to torch here; on a CPU, `--device cpu --tiny` runs its code on tiny models",
              file=sys.stderr)
        return 1
    scale = TINY if args.tiny else GPU
    batch_sizes, steps = tuple(args.batch_sizes or scale.batch_sizes), args.steps or scale.steps
    device = torch.device(args.device)
    started = time.perf_counter()
    rows = []
    for model_name in scale.models:
        for batch_size in batch_sizes:
            print(f"training {model_name}, batch {batch_size}", file=sys.stderr, flush=True)
            rows += training_rows(model_name, batch_size, steps, device)
        print(f"evaluation {model_name}", file=sys.stderr, flush=True)
        rows += evaluation_rows(model_name, scale.evaluation_batch_size, steps, device)
    rows += ddp_rows(scale.models, scale.ddp_batch_size, device)
    print(f"GPU check on {device_description(device)}; torch {torch.__version__}, open_clip {open_clip.__version__}; "
          f"random weights and batches; {steps} timed steps after {WARMUP_BATCHES} warm-up steps; "
          f"reference: open_clip_train's train_one_epoch (CLIP's loss) and zero_shot.run's loop\n")
    print(markdown(rows))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 1 if any(row.ours.startswith(FAILED) for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
