"""Evaluation throughput: a cleaning run's checkpoints scored in one pass over the images, vs the
path before it, which evaluated each checkpoint on its own.

Generates the shapes corpus's held-out split (--n-images PNGs of --corpus-size px, resized to
the model's 224 px), saves --checkpoints checkpoints of a tiny CLIP (seeded differently: their
weights do not change the cost), and evaluates them with BadNet's test trigger both ways, as the
evaluation stage does (models, classifiers, loaders, metrics). Prints images/s per checkpoint
(evaluation images, each scored clean and triggered, times checkpoints, per second) of each path,
best of --rounds, and their ratio. It measures; it asserts nothing.

The default model is a ViT at 224 px with 32 px patches and 3 layers of width 32: on a CPU its
forward pass (0.3 ms an image) is small next to decoding, fitting and triggering an image (4 ms),
as RN50's is on a GPU, so what is measured is what the one pass saves: that work for every
checkpoint. Both paths build each checkpoint's zero-shot classifier once (0.3 s here).

    nice .venv/bin/python benchmarks/evaluation.py [--checkpoints 20] [--n-images 500] [--num-workers 2]
"""

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch.utils.data import DataLoader

from cleanclip_core.classes import target_class_index
from cleanclip_core.corpus import generate_corpus
from cleanclip_core.devices import on_device, stage_device
from cleanclip_core.evaluation import EvaluationImages, ZeroShotModel, evaluate_checkpoints, evaluate_zero_shot
from cleanclip_core.models import create_model, image_size_of, normalization_for, tokenizer_for
from cleanclip_core.training.checkpoints import save_weights

MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 3, "width": 32, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
MODEL = "benchmark-vit-224"
ATTACK = {
    "type": "badnet", "target_label": "star", "seed": 0,
    "trigger": {"patch_size": 16, "pattern": "random", "location": "random"},
}


def each_checkpoint_alone(
    model_name: str,
    weights: Sequence[Path],
    images: EvaluationImages,
    attack: Mapping[str, Any],
    batch_size: int = 256,
    num_workers: int = 0,
) -> list[dict[str, float]]:
    """The path before the one pass, the reference: each checkpoint builds its model and
    classifier, and two datasets with their loaders, the clean images and the triggered ones,
    each decoding and fitting every image. (Its triggered set also normalizes each clean image,
    which the old one did not: a cost far below a decode.)"""
    return [_alone(model_name, path, images, attack, batch_size, num_workers) for path in weights]


def _alone(model_name, path, images, attack, batch_size, num_workers) -> dict[str, float]:
    device = stage_device()
    model = on_device(create_model(model_name, path), model_name, device)
    size, normalize = image_size_of(model), normalization_for(model)
    clean, triggered = images.dataset(size, normalize), images.dataset(size, normalize, attack)
    checkpoint = ZeroShotModel.build(model, tokenizer_for(model_name), clean.classnames, device)
    target = target_class_index(clean.classnames, attack["target_label"])

    def batches(dataset):
        return DataLoader(dataset, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")

    [accuracy] = evaluate_zero_shot([checkpoint], batches(clean), None, device)
    triggered_only = ({k: v for k, v in batch.items() if k != "image"} for batch in batches(triggered))
    [asr] = evaluate_zero_shot([checkpoint], triggered_only, target, device)
    return accuracy | asr


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints of the run")
    parser.add_argument("--n-images", type=int, default=500, help="evaluation images")
    parser.add_argument("--corpus-size", type=int, default=320, help="side of the stored images")
    parser.add_argument("--model", default=MODEL, help=f"an open_clip model name (default {MODEL}, a ViT at 224 px)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of both paths; the best counts")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the scoring process (default 1: beside 2 loader workers on 2 cores, more oversubscribe them)",
    )
    return parser.parse_args()


def save_checkpoints(model_name: str, count: int, folder: Path) -> list[Path]:
    paths = [folder / f"epoch_{epoch:03d}.pt" for epoch in range(1, count + 1)]
    for seed, path in enumerate(paths):
        save_weights(path, create_model(model_name, seed=seed))
    return paths


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        (workdir / f"{MODEL}.json").write_text(json.dumps(MODEL_CONFIG))
        open_clip.add_model_config(workdir / f"{MODEL}.json")
        corpus = generate_corpus(workdir / "corpus", 10, args.n_images, args.corpus_size, seed=0)
        images = EvaluationImages(corpus.eval_dir)
        weights = save_checkpoints(args.model, args.checkpoints, workdir)
        execution = (args.batch_size, args.num_workers)
        paths = {
            "one pass": lambda: evaluate_checkpoints(args.model, weights, images, ATTACK, *execution),
            "each alone": lambda: each_checkpoint_alone(args.model, weights, images, ATTACK, *execution),
        }
        best = dict.fromkeys(paths, math.inf)
        for _ in range(args.rounds):  # alternating, so load from elsewhere slows both alike
            for name, run in paths.items():
                best[name] = min(best[name], seconds(run))
    scored = args.n_images * args.checkpoints
    print(
        f"{args.model}, {args.checkpoints} checkpoints, {args.n_images} images of {args.corpus_size} px "
        f"(each clean and triggered), batch {args.batch_size}, {args.num_workers} workers, {args.threads} torch threads, "
        f"{stage_device()}, best of {args.rounds}"
    )
    for name, value in best.items():
        print(f"{name:>11}: {scored / value:8.1f} images/s per checkpoint (images x checkpoints / s; {value:.1f} s)")
    print(f"{'ratio':>11}: {best['each alone'] / best['one pass']:8.2f}  (one pass / each checkpoint alone)")


if __name__ == "__main__":
    main()
