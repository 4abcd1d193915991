"""How much on-the-fly triggers cost the training loader: samples/s without and with triggers.

Generates a corpus, downloads it with img2dataset at the model's resolution, then for every
attack reads the whole training set through a DataLoader with no trigger, and with the attack's
trigger at the given poison rate and at 100% (every image triggered: the evaluation worst case).
The "without" column is one baseline (no trigger reads the same images whatever the attack).
It measures; it asserts nothing.

    .venv/bin/python benchmarks/loader.py [--n-images 1000] [--image-size 224] [--num-workers 2]
"""

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from torch.utils.data import DataLoader

from cleanclip_core.attacks import ATTACKS
from cleanclip_core.attacks.parts import Trigger
from cleanclip_core.corpus import generate_corpus
from cleanclip_core.data.download import DownloadSettings, download_shards
from cleanclip_core.data.loaders import PoisonedTrainingSet
from cleanclip_core.data.manifest import build_manifest, build_shard_index
from cleanclip_core.poison import poison_manifest

TRIGGER_PARAMS = {
    "badnet": {"patch_size": 16, "pattern": "random", "location": "random"},
    "blended": {"alpha": 0.2},
    "wanet": {"k": 4, "s": 0.5},
    "sig": {"amplitude": 60 / 255, "cycles": 6, "mode": "add"},
    "label_consistent": {"patch_size": 16, "pattern": "random", "location": "random"},
}
TARGET_LABEL = "star"  # a corpus class, so label-consistent poisoning has candidate captions
NO_TRIGGER = ("none", 0.0)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1000, help="training images generated")
    parser.add_argument("--corpus-size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--image-size", type=int, default=224, help="download and model side")
    parser.add_argument("--poison-rate", type=float, default=0.05, help="fraction of rows poisoned")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best one counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, help="where the data go (default: a temporary folder)"
    )
    return parser.parse_args()


def download_corpus(workdir: Path, args: argparse.Namespace) -> tuple[pa.Table, pa.Table, Path]:
    """Generate and download the corpus; return its manifest, shard index and shards folder."""
    corpus = generate_corpus(workdir / "corpus", args.n_images, 10, args.corpus_size, args.seed)
    settings = DownloadSettings(
        image_size=args.image_size,
        resize_mode="center_crop",
        encode_format="jpg",
        samples_per_shard=1000,
        threads_per_process=4,
        timeout_s=10,
        retries=0,
    )
    shards_dir = workdir / "shards"
    download_shards(
        corpus.url_list,
        shards_dir,
        workdir / "download_stats.parquet",
        workdir / "shard_listing.parquet",
        settings,
        processes=2,
        img2dataset_log=workdir / "img2dataset.log",
    )
    return build_manifest(shards_dir), build_shard_index(shards_dir), shards_dir


def poison_every_row(poisoned: pa.Table, seed: int) -> pa.Table:
    """The manifest with every row poisoned, each with its own trigger seed."""
    seeds = np.random.default_rng(seed).integers(np.iinfo(np.int64).max, size=poisoned.num_rows)
    every_row = np.ones(poisoned.num_rows, dtype=bool)
    for name, values in (("is_poison", every_row), ("trigger_seed", seeds)):
        column = poisoned.schema.get_field_index(name)
        poisoned = poisoned.set_column(column, name, pa.array(values))
    return poisoned


def _pass_seconds(loader: DataLoader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def samples_per_second(
    datasets: dict[tuple[str, float], PoisonedTrainingSet], args: argparse.Namespace
) -> dict[tuple[str, float], float]:
    """Each set's best of `repeats` passes, after a warm-up pass of each.

    The passes go round robin over the sets, so load from other processes on the machine
    slows all of them alike instead of the ones that happened to run during it.
    """
    loaders = {
        label: DataLoader(
            dataset,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            persistent_workers=args.num_workers > 0,
        )
        for label, dataset in datasets.items()
    }
    for loader in loaders.values():
        _pass_seconds(loader)
    best = dict.fromkeys(loaders, math.inf)
    for _ in range(args.repeats):
        for label, loader in loaders.items():
            best[label] = min(best[label], _pass_seconds(loader))
    return {label: len(datasets[label]) / seconds for label, seconds in best.items()}


def training_sets(
    manifest: pa.Table, shard_index: pa.Table, shards_dir: Path, args: argparse.Namespace
) -> dict[tuple[str, float], PoisonedTrainingSet]:
    """(attack, poison rate) -> its training set; NO_TRIGGER -> the set read without triggers."""

    def training_set(rows: pa.Table, trigger: Trigger | None) -> PoisonedTrainingSet:
        return PoisonedTrainingSet(rows, shard_index, shards_dir, args.image_size, trigger)

    n_poisons = round(args.poison_rate * manifest.num_rows)
    datasets: dict[tuple[str, float], PoisonedTrainingSet] = {}
    for name, attack in ATTACKS.items():
        if attack.preparation is not None:  # its trigger is a file another stage makes
            continue
        poisoned = poison_manifest(
            manifest,
            attack,
            attack_name=name,
            target_label=TARGET_LABEL,
            n_poisons=n_poisons,
            seed=args.seed,
        )
        trigger = attack.build_trigger(TRIGGER_PARAMS[name], args.seed)
        # Without a trigger every attack and rate reads the same images: one baseline serves all.
        datasets.setdefault(NO_TRIGGER, training_set(poisoned, None))
        datasets[name, args.poison_rate] = training_set(poisoned, trigger)
        datasets[name, 1.0] = training_set(poison_every_row(poisoned, args.seed), trigger)
    return datasets


def main() -> None:
    args = parse_arguments()
    with tempfile.TemporaryDirectory(prefix="loader-benchmark-") as temporary:
        workdir = args.workdir or Path(temporary)
        manifest, shard_index, shards_dir = download_corpus(workdir, args)
        rates = samples_per_second(training_sets(manifest, shard_index, shards_dir, args), args)

    print(
        f"{manifest.num_rows} images at {args.image_size} px, {args.num_workers} workers, "
        f"batch {args.batch_size}, best of {args.repeats}"
    )
    print(f"{'attack':<18}{'rate':>7}{'without/s':>11}{'with/s':>9}{'ratio':>7}")
    without = rates.pop(NO_TRIGGER)
    for (name, rate), with_trigger in rates.items():
        ratio = with_trigger / without
        print(f"{name:<18}{rate:>7.0%}{without:>11.0f}{with_trigger:>9.0f}{ratio:>7.2f}")


if __name__ == "__main__":
    main()
