"""Fixtures of the data tests."""

import shutil

import pytest


@pytest.fixture
def shards_copy(shapes_shards, tmp_path):
    """A copy of the downloaded shards and their listing, free to damage."""
    shards, listing = tmp_path / "shards", tmp_path / "shard_listing.parquet"
    shutil.copytree(shapes_shards.shards_dir, shards)
    shutil.copy(shapes_shards.shard_listing, listing)
    return shards, listing
