"""The manifest stage on shards that cannot be trusted: truncated tars, tars that lack images their
tables list, and shards without a single downloaded sample are one error naming the shard."""

import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleanclip_core.data.manifest import build_manifest, build_shard_index, write_manifest
from cleanclip_core.data.shard_listing import write_shard_listing
from cleanclip_core.errors import UserError


def manifest_outputs(tmp_path):
    return tmp_path / "manifest.parquet", tmp_path / "shard_index.parquet"


def cut(path, size):
    with open(path, "r+b") as file:
        file.truncate(size)


def test_the_manifest_stage_refuses_a_shard_truncated_after_the_download(shards_copy, tmp_path):
    shards, listing = shards_copy
    cut(shards / "00001.tar", 5000)
    with pytest.raises(UserError, match=rf"shard file {shards / '00001.tar'} has 5000 bytes"):
        write_manifest(shards, listing, *manifest_outputs(tmp_path), config={})
    assert not any(path.exists() for path in manifest_outputs(tmp_path))
    assert not listing.exists()


def test_a_tar_cut_inside_an_image_is_named_by_the_shard_index(shards_copy):
    shards, _ = shards_copy
    with tarfile.open(shards / "00001.tar") as tar:
        last_image = [member for member in tar if member.name.endswith(".jpg")][-1]
    cut(shards / "00001.tar", last_image.offset_data + last_image.size // 2)
    with pytest.raises(UserError, match=rf"shard {shards / '00001.tar'} is not a readable tar"):
        build_shard_index(shards)


def test_a_tar_cut_between_members_is_named_by_the_manifest_stage(shards_copy, tmp_path):
    """A cut at a member boundary leaves a valid, shorter tar: its table then lists images it
    lacks. (Here the listing is made after the cut, as when a broken copy was downloaded.)"""
    shards, listing = shards_copy
    with tarfile.open(shards / "00002.tar") as tar:
        last_image = [member for member in tar if member.name.endswith(".jpg")][-1]
    cut(shards / "00002.tar", last_image.offset)
    write_shard_listing(shards, listing, config={}, inputs_sha256="")
    with pytest.raises(UserError, match=(
        rf"shard {shards / '00002.tar'} lacks the image of sample {last_image.name[:-4]} that its "
        r".parquet lists \(1 samples in all\)"
    )):
        write_manifest(shards, listing, *manifest_outputs(tmp_path), config={})
    assert not any(path.exists() for path in manifest_outputs(tmp_path))


def test_shards_without_a_downloaded_sample_give_no_manifest(shards_copy):
    shards, _ = shards_copy
    for path in shards.glob("*.parquet"):
        table = pq.read_table(path)
        failed = pa.array(["failed_to_download"] * table.num_rows)
        status = table.schema.get_field_index("status")
        pq.write_table(table.set_column(status, "status", failed), path)
    with pytest.raises(UserError, match=rf"the shards in {shards} hold no downloaded sample"):
        build_manifest(shards)
