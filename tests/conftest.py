import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

from cleanclip_core.corpus import CorpusFiles, generate_corpus
from cleanclip_core.data.download import DownloadSettings, download_shards
from cleanclip_core.data.manifest import build_manifest, build_shard_index


@dataclass(frozen=True)
class ShapesShards:
    corpus: CorpusFiles
    shards_dir: Path
    shard_listing: Path
    manifest: pa.Table
    shard_index: pa.Table
    image_size: int  # side of the stored images


@pytest.fixture(scope="session")
def shapes_shards(tmp_path_factory: pytest.TempPathFactory) -> ShapesShards:
    """A tiny generated corpus (60 train at 64 px, 20 eval) downloaded by img2dataset at 32 px."""
    root = tmp_path_factory.mktemp("shapes")
    corpus = generate_corpus(root / "corpus", n_train=60, n_eval=20, image_size=64, seed=3)
    settings = DownloadSettings(
        image_size=32,
        resize_mode="center_crop",
        encode_format="jpg",
        samples_per_shard=25,
        threads_per_process=4,
        timeout_s=10,
        retries=0,
    )
    shards_dir, shard_listing = root / "shards", root / "shard_listing.parquet"
    download_shards(
        corpus.url_list,
        shards_dir,
        root / "download_stats.parquet",
        shard_listing,
        settings,
        processes=1,
        img2dataset_log=root / "img2dataset.log",
    )
    manifest, shard_index = build_manifest(shards_dir), build_shard_index(shards_dir)
    return ShapesShards(corpus, shards_dir, shard_listing, manifest, shard_index, settings.image_size)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 32 KiB filesystem of its own (a tmpfs), to fill up for real; grow it with
    `resize_disk`. Skipped where mounting is not permitted (not root)."""
    disk = tmp_path / "small_disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def resize_disk(disk: Path, size: str) -> None:
    """Give the `small_disk` filesystem another size, e.g. "4m" (space freed)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)
