"""The listing of a download's shards (every file, its size and SHA-256), and the check against it.

Snakemake cannot see inside a directory() output, so the download writes this listing last, as an
output of its own, and every later stage that reads the shards takes the listing as input and
checks the shards against it first. A shard truncated or changed since the download is then one
error naming the file, never a traceback or a manifest that disagrees with the tars. The check
removes the listing, so that the next run downloads the damaged shard again rather than trusting
it; so does a loader that finds an image it cannot decode (`distrust_shards`: the listing lies
beside the shards folder, as `shard_listing.parquet`). The other shards are set aside as the
download's resumable part (`resume_folder`), so the next download fetches that shard alone: at
CC3M's scale a full download takes hours, and URLs that died since would change the data.
"""

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cleanclip_core.errors import UserError
from cleanclip_core.tables import file_sha256, write_table

LISTING_NAME = "shard_listing.parquet"  # beside the shards folder


def resume_folder(shards_dir: Path) -> Path:
    """Where a download keeps its finished shards until all are: the next download resumes it."""
    return Path(shards_dir).with_name(Path(shards_dir).name + ".partial")
LISTING_SCHEMA = pa.schema([("file", pa.string()), ("size", pa.int64()), ("sha256", pa.string())])


def shard_files(shards_dir: Path) -> dict[str, Path]:
    """Every file in `shards_dir` by its path relative to it; hidden files (.nfs*, ...) left out."""
    shards_dir = Path(shards_dir)
    files = (path for path in shards_dir.rglob("*") if path.is_file())
    return {
        path.relative_to(shards_dir).as_posix(): path
        for path in sorted(files)
        if not path.name.startswith(".")
    }


def _sha256s(paths: list[Path], threads: int) -> list[str]:
    # hashlib releases the GIL on large buffers: threads hash files in parallel.
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        return list(pool.map(file_sha256, paths))


def list_shards(shards_dir: Path, threads: int = 1) -> pa.Table:
    """One row per file of `shards_dir`: its relative path, size in bytes and SHA-256."""
    files = shard_files(shards_dir)
    paths = list(files.values())
    return pa.table(
        {
            "file": list(files),
            "size": [path.stat().st_size for path in paths],
            "sha256": _sha256s(paths, threads),
        },
        schema=LISTING_SCHEMA,
    )


def write_shard_listing(
    shards_dir: Path,
    listing_path: Path,
    *,
    config: Mapping[str, Any],
    inputs_sha256: str,
    threads: int = 1,
) -> pa.Table:
    """Write the listing of `shards_dir` to `listing_path` (atomically, with provenance)."""
    listing = list_shards(shards_dir, threads)
    write_table(listing, listing_path, config=config, inputs_sha256=inputs_sha256)
    return listing


def verify_shards(
    shards_dir: Path, listing_path: Path, *, content: bool = False, threads: int = 1
) -> None:
    """Check that `shards_dir` holds exactly the listed files at their listed sizes and, with
    `content`, their listed SHA-256 (a full read: the manifest stage does it, training only sizes).

    A difference is a UserError naming the first file that differs; the listing is removed first,
    so that the next run downloads the shards again.
    """
    listing_path = Path(listing_path)
    if not listing_path.is_file():
        raise UserError(
            f"no shard listing {listing_path} for {shards_dir}: download the shards again "
            f"(the download writes the listing last, so a missing one means it did not finish)"
        )
    difference = _first_difference(Path(shards_dir), pq.read_table(listing_path), content, threads)
    if difference:
        problem, file = difference
        raise _distrusted(shards_dir, listing_path, f"{problem}: the shards changed after the download (a full disk, a killed copy?)", file)


def distrust_shards(shards_dir: Path, problem: str, file: Path) -> UserError:
    """The error for `file`, a shard of `shards_dir` found damaged while it is read (`problem`
    names it), after removing the listing beside the folder: the next run downloads it again."""
    return _distrusted(Path(shards_dir), Path(shards_dir).with_name(LISTING_NAME), problem, Path(file))


def _distrusted(shards_dir: Path, listing_path: Path, problem: str, file: Path) -> UserError:
    if not Path(listing_path).is_file():  # a data-loader worker of another process was first
        return UserError(f"{problem}; download the shards again")
    shard = _shard_of(file)
    kept = _set_aside_all_but(Path(shards_dir), shard)
    Path(listing_path).unlink(missing_ok=True)
    if kept is None:
        return UserError(f"{problem}; removed {listing_path}, so the next run downloads the shards again")
    return UserError(f"{problem}; removed {listing_path}: the next run downloads shard {shard} again, the others are kept in {kept}")


def _shard_of(file: Path) -> str:
    """The shard a file of the download belongs to: 00012 of 00012.tar, .parquet, _stats.json."""
    return Path(file).name.split(".")[0].split("_")[0]


def _set_aside_all_but(shards_dir: Path, shard: str) -> Path | None:
    """Move `shards_dir` to its resume folder without `shard`'s files, or None where there is no
    folder to move (another process was first) or a resume folder already (never mixed)."""
    kept = resume_folder(shards_dir)
    if not shard or not shards_dir.is_dir() or kept.exists():
        return None
    for path in shards_dir.glob(f"{shard}[._]*"):
        path.unlink()
    shards_dir.rename(kept)
    return kept


def _first_difference(
    shards_dir: Path, listing: pa.Table, content: bool, threads: int
) -> tuple[str, Path] | None:
    """How the first file of `shards_dir` that differs from `listing` differs, and the file; None
    if none does."""
    listed = {row["file"]: row for row in listing.to_pylist()}
    present = shard_files(shards_dir)
    for name in sorted(listed.keys() - present.keys()):
        return f"shard file {shards_dir / name} is missing", shards_dir / name
    for name in sorted(present.keys() - listed.keys()):
        return f"shard file {present[name]} is not one the download wrote", present[name]
    for name, row in listed.items():
        size = present[name].stat().st_size
        if size != row["size"]:
            return f"shard file {present[name]} has {size} bytes, the download wrote {row['size']}", present[name]
    if content:
        names = list(listed)
        for name, sha256 in zip(names, _sha256s([present[name] for name in names], threads)):
            if sha256 != listed[name]["sha256"]:
                return (
                    f"shard file {present[name]} has other content than the download wrote "
                    f"(sha256 {sha256[:12]}..., listed {listed[name]['sha256'][:12]}...)"
                ), present[name]
    return None
