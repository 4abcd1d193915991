"""The download's listing of its shards, and shards that changed after it: truncated, altered,
missing or added files are named, and the listing is removed so that a rerun downloads again."""

import shutil

import pyarrow.parquet as pq
import pytest

from cleanclip_core.data.shard_listing import resume_folder, verify_shards
from cleanclip_core.errors import UserError
from cleanclip_core.tables import file_sha256


def test_the_download_lists_every_shard_file_with_its_size_and_sha256(shapes_shards):
    listing = pq.read_table(shapes_shards.shard_listing).to_pylist()
    files = sorted(path for path in shapes_shards.shards_dir.iterdir())
    assert [row["file"] for row in listing] == [path.name for path in files]
    assert {"00000.tar", "00000.parquet", "00000_stats.json"} <= {row["file"] for row in listing}
    for row, path in zip(listing, files):
        assert (row["size"], row["sha256"]) == (path.stat().st_size, file_sha256(path))


def test_shards_as_the_download_wrote_them_pass(shards_copy):
    shards, listing = shards_copy
    verify_shards(shards, listing, content=True)
    assert listing.exists()


def test_a_truncated_shard_is_named_its_listing_removed_and_the_other_shards_kept_for_the_resume(shards_copy):
    shards, listing = shards_copy
    files = sorted(path.name for path in shards.iterdir())
    tar = shards / "00001.tar"
    size = tar.stat().st_size
    with open(tar, "r+b") as file:
        file.truncate(size // 2)
    kept = resume_folder(shards)
    with pytest.raises(UserError, match=(
        rf"shard file {tar} has {size // 2} bytes, the download wrote {size}: .*"
        rf"removed {listing}: the next run downloads shard 00001 again, the others are kept in {kept}$"
    )):
        verify_shards(shards, listing)
    assert not listing.exists() and not shards.exists()
    assert sorted(path.name for path in kept.iterdir()) == [name for name in files if not name.startswith("00001")]


def test_a_shard_altered_in_place_is_caught_by_its_content_only(shards_copy):
    shards, listing = shards_copy
    tar = shards / "00000.tar"
    with open(tar, "r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    verify_shards(shards, listing)  # sizes only, as training checks
    with pytest.raises(UserError, match=rf"shard file {tar} has other content than the download"):
        verify_shards(shards, listing, content=True)
    assert not listing.exists()


def test_a_missing_or_an_added_shard_file_is_named(shapes_shards, shards_copy):
    shards, listing = shards_copy
    kept = listing.with_name("kept.parquet")
    shutil.copy(listing, kept)
    (shards / "00002.parquet").unlink()
    with pytest.raises(UserError, match=rf"shard file {shards / '00002.parquet'} is missing"):
        verify_shards(shards, listing)

    shutil.rmtree(resume_folder(shards))
    shutil.copytree(shapes_shards.shards_dir, shards)
    shutil.copy(kept, listing)
    shutil.copy(shards / "00001.tar", shards / "00002.parquet")
    shutil.copy(shards / "00001.tar", shards / "00009.tar")
    added = shards / "00009.tar"
    with pytest.raises(UserError, match=rf"shard file {added} is not one the download wrote"):
        verify_shards(shards, listing)


def test_shards_without_a_listing_are_refused(shards_copy):
    shards, listing = shards_copy
    listing.unlink()
    with pytest.raises(UserError, match=f"no shard listing {listing}"):
        verify_shards(shards, listing)
