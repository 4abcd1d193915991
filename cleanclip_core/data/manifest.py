"""The manifest of successfully downloaded samples, and the index of their images in the shards."""

import logging
import tarfile
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

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
    """One row per downloaded sample: key, shard, caption, url, width, height; sorted by key."""
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
        return connection.sql(query, params=[files]).to_arrow_table()


def build_shard_index(shards_dir: Path) -> pa.Table:
    """Where each sample's image lies in its shard: key, shard, byte offset and size in the tar.

    Kept apart from the manifest because member order in a tar depends on download timing, while
    the manifest must be the same bytes for the same samples.
    """
    rows: dict[str, list] = {name: [] for name in SHARD_INDEX_SCHEMA.names}
    for tar_path in sorted(Path(shards_dir).glob("[0-9]*.tar")):
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                key, suffix = _split_member_name(member.name)
                if suffix in IMAGE_SUFFIXES:
                    rows["key"].append(key)
                    rows["shard"].append(tar_path.stem)
                    rows["offset"].append(member.offset_data)
                    rows["size"].append(member.size)
    return pa.table(rows, schema=SHARD_INDEX_SCHEMA).sort_by("key")


def _split_member_name(name: str) -> tuple[str, str]:
    stem, dot, suffix = name.rpartition(".")
    return stem, (dot + suffix).lower()


def write_manifest(
    shards_dir: Path, manifest_path: Path, index_path: Path, config: dict[str, Any]
) -> pa.Table:
    """Build and write the manifest and the shard index of `shards_dir`; return the manifest.

    Both carry the hash of the manifest's content as their inputs' hash: the shard files list
    samples in download order, so their bytes differ between two downloads of the same data.
    """
    manifest = build_manifest(shards_dir)
    samples_sha256 = table_sha256(manifest)
    index = build_shard_index(shards_dir)
    write_table(index, index_path, config=config, inputs_sha256=samples_sha256)
    write_table(manifest, manifest_path, config=config, inputs_sha256=samples_sha256)
    log.info(f"manifest: {manifest.num_rows} samples from {len(shard_parquets(shards_dir))} shards")
    return manifest
