"""The manifest of successfully downloaded samples, and the index of their images in the shards."""

import logging
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from cleanclip_core.data.shard_listing import verify_shards
from cleanclip_core.errors import UserError
from cleanclip_core.tables import table_sha256, write_table

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

SHARD_INDEX_SCHEMA = pa.schema(
    [("key", pa.string()), ("shard", pa.string()), ("offset", pa.int64()), ("size", pa.int64())]
)


def shard_parquets(shards_dir: Path) -> list[Path]:
    """The per-shard sample tables img2dataset wrote, in shard order."""
    parquets = sorted(Path(shards_dir).glob("[0-9]*.parquet"))
    if not parquets:
        raise UserError(f"no img2dataset shards (NNNNN.parquet) in {shards_dir}")
    return parquets


def build_manifest(shards_dir: Path) -> pa.Table:
    """One row per downloaded sample: key, shard, caption, url, width, height; sorted by key.

    Shards without a single downloaded sample are a UserError: nothing downstream can use them.
    """
    files = [str(path) for path in shard_parquets(shards_dir)]
    query = """
        SELECT key,
               regexp_extract(filename, '([0-9]+)\\.parquet$', 1) AS shard,
               caption, url,
               CAST(width AS INTEGER) AS width,
               CAST(height AS INTEGER) AS height
        FROM read_parquet(?, filename = true, union_by_name = true)
        WHERE status = 'success'
        ORDER BY key
    """
    with duckdb.connect() as connection:
        manifest = connection.sql(query, params=[files]).to_arrow_table()
    if manifest.num_rows == 0:
        raise UserError(
            f"the shards in {shards_dir} hold no downloaded sample: every URL failed "
            f"(img2dataset's stats are in its NNNNN_stats.json files); download again"
        )
    return manifest


def build_shard_index(shards_dir: Path) -> pa.Table:
    """Where each sample's image lies in its shard: key, shard, byte offset and size in the tar.

    Kept apart from the manifest because member order in a tar depends on download timing, while
    the manifest must be the same bytes for the same samples.
    """
    rows: dict[str, list] = {name: [] for name in SHARD_INDEX_SCHEMA.names}
    for tar_path in sorted(Path(shards_dir).glob("[0-9]*.tar")):
        for member in _tar_members(tar_path):
            key, suffix = _split_member_name(member.name)
            if suffix in IMAGE_SUFFIXES:
                rows["key"].append(key)
                rows["shard"].append(tar_path.stem)
                rows["offset"].append(member.offset_data)
                rows["size"].append(member.size)
    return pa.table(rows, schema=SHARD_INDEX_SCHEMA).sort_by("key")


def _tar_members(tar_path: Path) -> list[tarfile.TarInfo]:
    """The members of a shard's tar; a truncated or corrupt tar is a UserError naming it."""
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            return tar.getmembers()
    except tarfile.TarError as error:
        raise UserError(
            f"shard {tar_path} is not a readable tar ({error}): truncated or corrupted since the "
            f"download; download the shards again"
        ) from None


def _split_member_name(name: str) -> tuple[str, str]:
    stem, dot, suffix = name.rpartition(".")
    return stem, (dot + suffix).lower()


def _require_every_image(manifest: pa.Table, index: pa.Table, shards_dir: Path) -> None:
    """A UserError naming the shard whose tar lacks the image of a sample its table lists."""
    missing = manifest.filter(pc.invert(pc.is_in(manifest["key"], value_set=index["key"])))
    if missing.num_rows:
        first = missing.slice(0, 1).to_pylist()[0]
        tar_path = Path(shards_dir) / f"{first['shard']}.tar"
        raise UserError(
            f"shard {tar_path} lacks the image of sample {first['key']} that its .parquet lists "
            f"({missing.num_rows} samples in all): the tar is truncated or not the one the "
            f"download wrote; download the shards again"
        )


def write_manifest(
    shards_dir: Path,
    listing_path: Path,
    manifest_path: Path,
    index_path: Path,
    config: dict[str, Any],
) -> pa.Table:
    """Check the shards against the download's listing (sizes and content), build and write the
    manifest and the shard index of `shards_dir`; return the manifest.

    Both carry the hash of the manifest's content as their inputs' hash: the shard files list
    samples in download order, so their bytes differ between two downloads of the same data.
    """
    verify_shards(shards_dir, listing_path, content=True)
    manifest = build_manifest(shards_dir)
    samples_sha256 = table_sha256(manifest)
    index = build_shard_index(shards_dir)
    _require_every_image(manifest, index, shards_dir)
    write_table(index, index_path, config=config, inputs_sha256=samples_sha256)
    write_table(manifest, manifest_path, config=config, inputs_sha256=samples_sha256)
    log.info(f"manifest: {manifest.num_rows} samples from {len(shard_parquets(shards_dir))} shards")
    return manifest
