"""Can one loader process feed a GPU? Samples/s through the full training views at 224 px.

Generates the shapes corpus drawn over noise (so the images have a photograph's entropy, not
flat colours), downloads it with img2dataset as JPEG (quality 95) into webdataset shards,
poisons it (BadNet, 5%), and reads every sample through `TrainingViews` over a
`PoisonedTrainingSet`, as the training loop does for RN50: decode, fit, trigger, tokenize,
batched and collated (8-bit images: the step normalizes them on the GPU), in one process with one
thread as a DataLoader worker has. It
reads the set with the pair's views only (MMCL) and with the in-modal views too (AutoAugment and
EDA, MMCL+SSL), round robin, best of --repeats; the pair views are the reference, measured in
the same run. It prints the ratio, and how many loader processes an RN50 step at --step-rate
samples/s needs for each, from the samples per CPU second (what a process with a core of its
own delivers; samples per wall second are lower on a loaded machine). It measures; it asserts
nothing. --profile prints cProfile's top functions of one pass with the in-modal views.

    .venv/bin/python benchmarks/views.py [--n-images 1000] [--synonyms wordnet] [--profile]
"""

import argparse
import cProfile
import math
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from torch.utils.data import DataLoader

from cleanclip_core.attacks import ATTACKS
from cleanclip_core.corpus import generate_corpus
from cleanclip_core.data.download import DownloadSettings, download_shards
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.data.manifest import build_manifest, build_shard_index
from cleanclip_core.models import image_size_for, tokenizer_for
from cleanclip_core.poison import poison_manifest
from cleanclip_core.training.views import TrainingViews, ViewContext, build_views, collate_views

MODEL = "RN50"
IN_MODAL = ("augmented",)
TRIGGER = {"patch_size": 16, "pattern": "random", "location": "random"}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1000, help="training images generated")
    parser.add_argument("--synonyms", default="wordnet", choices=["wordnet", "corpus"], help="EDA's synonyms")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best one counts")
    parser.add_argument("--step-rate", type=float, default=2000, help="samples/s of an RN50 MMCL step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    return parser.parse_args()


def draw_over_noise(image_dir: Path, seed: int) -> None:
    """Blend every corpus image with smooth and fine noise, in place: a photograph's entropy."""
    rng = np.random.default_rng(seed)
    for path in sorted(image_dir.glob("*.png")):
        shape = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        side = shape.shape[0]
        coarse = Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
        grain = rng.normal(0, 12, shape.shape)
        noisy = 0.6 * shape + 0.4 * smooth + grain
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)


def noisy_shards(workdir: Path, args: argparse.Namespace, image_size: int) -> tuple[pa.Table, pa.Table, Path]:
    """The corpus over noise, as JPEG shards at the model's size: manifest, shard index, folder."""
    corpus = generate_corpus(workdir / "corpus", args.n_images, 10, image_size, args.seed)
    draw_over_noise(workdir / "corpus" / "images", args.seed)
    settings = DownloadSettings(
        image_size=image_size, resize_mode="center_crop", encode_format="jpg", samples_per_shard=1000,
        threads_per_process=4, timeout_s=10, retries=0,
    )
    shards_dir = workdir / "shards"
    download_shards(corpus.url_list, shards_dir, workdir / "download_stats.parquet", workdir / "shard_listing.parquet",
                    settings, processes=2, img2dataset_log=workdir / "img2dataset.log")
    return build_manifest(shards_dir), build_shard_index(shards_dir), shards_dir


def unique_captions(manifest: pa.Table) -> pa.Table:
    """Each caption with its row's key appended: a web corpus's captions do not recur, so no
    tokenization is saved by remembering a recurring one (training.views.CaptionTokens)."""
    captions = pc.binary_join_element_wise(manifest["caption"], manifest["key"], " ")
    return manifest.set_column(manifest.column_names.index("caption"), "caption", captions)


def poisoned_pairs(
    manifest: pa.Table, shard_index: pa.Table, shards_dir: Path, image_size: int, seed: int
) -> PoisonedTrainingSet:
    """The training pairs, BadNet-poisoned at 5%, with captions that do not recur."""
    poisoned = poison_manifest(unique_captions(manifest), ATTACKS["badnet"], attack_name="badnet", target_label="star",
                               n_poisons=manifest.num_rows // 20, seed=seed)
    trigger = ATTACKS["badnet"].build_trigger(TRIGGER, seed)
    return PoisonedTrainingSet(poisoned, shard_index, shards_dir, image_size, trigger)


def training_views(pairs: PoisonedTrainingSet, names: tuple[str, ...], args: argparse.Namespace) -> TrainingViews:
    """The views the training loop builds for RN50 with the view sources `names`."""
    sources = build_views(names, ViewContext(pairs.captions, args.seed, args.synonyms))
    return TrainingViews(pairs, tokenizer_for(MODEL), sources, args.seed)


def pass_seconds(loader: DataLoader) -> np.ndarray:
    """Wall and CPU seconds of one pass over `loader`."""
    start = np.array([time.perf_counter(), time.process_time()])
    for _ in loader:
        pass
    return np.array([time.perf_counter(), time.process_time()]) - start


def samples_per_second(views: dict[str, TrainingViews], args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Each set's samples per wall and per CPU second, best of `repeats` in-process passes after a
    warm-up pass, round robin (so load from other work on the machine slows all sets alike)."""
    loaders = {name: DataLoader(dataset, args.batch_size, collate_fn=collate_views) for name, dataset in views.items()}
    for loader in loaders.values():
        pass_seconds(loader)
    best = {name: np.full(2, math.inf) for name in loaders}
    for _ in range(args.repeats):
        for name, loader in loaders.items():
            best[name] = np.minimum(best[name], pass_seconds(loader))
    return {name: len(views[name]) / seconds for name, seconds in best.items()}


def print_profile(views: TrainingViews, batch_size: int) -> None:
    profile = cProfile.Profile()
    profile.runcall(pass_seconds, DataLoader(views, batch_size, collate_fn=collate_views))
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def main() -> None:
    args = parse_arguments()
    torch.set_num_threads(1)  # as in a DataLoader worker process
    image_size = image_size_for(MODEL)
    with tempfile.TemporaryDirectory(prefix="views-benchmark-") as workdir:
        manifest, shard_index, shards_dir = noisy_shards(Path(workdir), args, image_size)
        pairs = poisoned_pairs(manifest, shard_index, shards_dir, image_size, args.seed)
        jpeg_kb = pc.mean(shard_index["size"]).as_py() / 1024
        views = {name: training_views(pairs, sources, args) for name, sources in
                 (("pair views (MMCL)", ()), ("+ in-modal (MMCL+SSL)", IN_MODAL))}
        rates = samples_per_second(views, args)
        if args.profile:
            print_profile(views["+ in-modal (MMCL+SSL)"], args.batch_size)

    print(f"{len(pairs)} JPEG images at {pairs.image_size} px ({jpeg_kb:.1f} KB mean), {MODEL}'s views, "
          f"{args.synonyms} synonyms, batch {args.batch_size}, one process, best of {args.repeats}")
    print(f"{'views':<24}{'samples/s':>10}{'per CPU s':>10}{'ratio':>7}{f'processes at {args.step_rate:.0f}/s':>22}")
    reference = rates["pair views (MMCL)"][1]
    for name, (wall, cpu) in rates.items():
        print(f"{name:<24}{wall:>10.0f}{cpu:>10.0f}{cpu / reference:>7.2f}{math.ceil(args.step_rate / cpu):>22}")

if __name__ == "__main__":
    main()
