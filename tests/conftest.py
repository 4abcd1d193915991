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
