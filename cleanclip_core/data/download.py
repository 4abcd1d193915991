"""Download image-caption pairs with img2dataset into webdataset shards.

The URL list is in CC3M's format: a UTF-8 TSV file with two columns, caption then URL (a
`caption<TAB>url` header line is skipped). Failed or corrupt downloads are counted in each shard's
stats, never fatal, unless no image at all downloads; a download that did not finish every shard
(a full disk) is an error, and the next run resumes it. The shards' listing is written last: later
stages check the shards against it (`shard_listing.py`).
"""

import errno
import json
import logging
import math
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cleanclip_core.data.shard_listing import resume_folder, write_shard_listing
from cleanclip_core.errors import UserError
from cleanclip_core.reporting import changed_settings
from cleanclip_core.tables import files_sha256, write_table

log = logging.getLogger(__name__)

URL_LIST_COLUMNS = ["caption", "url"]
STATS_COLUMNS = ["count", "successes", "failed_to_download", "failed_to_resize"]


# How fast the download runs, not what it stores: kept out of the stats table's provenance.
EXECUTION_SETTINGS = ("threads_per_process", "timeout_s", "retries")


@dataclass(frozen=True)
class DownloadSettings:
    image_size: int
    resize_mode: str
    encode_format: str
    samples_per_shard: int
    threads_per_process: int
    timeout_s: int
    retries: int


def read_url_list(path: Path) -> pa.Table:
    """The (caption, url) rows of a CC3M-format TSV file.

    Blank lines and a `caption<TAB>url` header line are skipped. A line that is not UTF-8, has
    other than 2 fields, an empty caption or a url that is not a URL is a UserError naming its
    line. Repeated URLs are kept, each line a pair of its own (CC3M repeats some), and counted in
    a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"URL list {path} does not exist; set dataset.url_list to a TSV file")
    if path.stat().st_size == 0:
        raise UserError(f"URL list {path} has no rows")
    rows = _parse_url_list(path)
    rows = rows.append_column("line", pa.array(range(1, rows.num_rows + 1), pa.int64()))
    rows = _without_header(rows.filter(pc.invert(_is_blank(rows))))
    if rows.num_rows == 0:
        raise UserError(f"URL list {path} has no rows")
    _refuse_malformed_rows(path, rows)
    _warn_of_repeated_urls(path, rows)
    return rows.select(URL_LIST_COLUMNS)


def _parse_url_list(path: Path) -> pa.Table:
    # Blank lines are kept (as empty rows) so that row i is line i + 1.
    try:
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=URL_LIST_COLUMNS),
            parse_options=pacsv.ParseOptions(
                delimiter="\t", quote_char=False, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in URL_LIST_COLUMNS}
            ),
        )
    except pa.ArrowInvalid as error:
        reason = _first_unparsable_line(path) or str(error).splitlines()[0]
        raise UserError(
            f"URL list {path} is not a 2-column TSV (caption<TAB>url): {reason}"
        ) from None


def _first_unparsable_line(path: Path) -> str | None:
    """Why the first line that is not UTF-8 or has other than 2 fields is so; None if none is."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            line = line.rstrip(b"\r\n")
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"line {number} is not UTF-8 (byte {line[error.start]:#04x} at column "
                    f"{error.start + 1}); convert the file, e.g. iconv -f latin1 -t utf-8"
                )
            fields = line.count(b"\t") + 1
            if line and fields != 2:
                return f"line {number} has {fields} tab-separated fields"
    return None


def _is_blank(rows: pa.Table) -> pa.ChunkedArray:
    return pc.and_(pc.equal(rows["caption"], ""), pc.equal(rows["url"], ""))


def _without_header(rows: pa.Table) -> pa.Table:
    """`rows` without a first row that names the columns (url field "url")."""
    if rows.num_rows and rows["url"][0].as_py().strip().lower() == "url":
        log.info(f"skipping the header line {rows['line'][0]} of the URL list")
        return rows.slice(1)
    return rows


def _refuse_malformed_rows(path: Path, rows: pa.Table) -> None:
    """A UserError naming the first row with an empty caption or a url that is not a URL."""
    caption_length = pc.utf8_length(pc.utf8_trim_whitespace(rows["caption"]))
    checks = {
        "has an empty caption": pc.equal(caption_length, 0),
        "has no URL in its second field": pc.invert(pc.match_substring(rows["url"], "://")),
    }
    for problem, is_malformed in checks.items():
        count = pc.sum(is_malformed).as_py() or 0
        if count:
            row = pc.index(is_malformed, True).as_py()
            line, url = rows["line"][row].as_py(), rows["url"][row].as_py()
            raise UserError(
                f"URL list {path} line {line} {problem} (url field {url[:60]!r}); "
                f"{count} such lines in all; each line is caption<TAB>url"
            )


def _warn_of_repeated_urls(path: Path, rows: pa.Table) -> None:
    repeats = rows.num_rows - pc.count_distinct(rows["url"]).as_py()
    if repeats:
        log.warning(
            f"URL list {path}: {repeats} lines repeat the URL of an earlier line; "
            f"each is downloaded as a pair of its own"
        )


def download_shards(
    url_list: Path,
    shards_dir: Path,
    stats_path: Path,
    listing_path: Path,
    settings: DownloadSettings,
    processes: int,
    img2dataset_log: Path | None = None,
) -> pa.Table:
    """Download every URL into `shards_dir` (NNNNN.tar, .parquet, _stats.json).

    Writes and returns the per-shard stats table (failures counted, never fatal, unless nothing
    downloads: then a UserError and no shards), then, last, the shards' listing.

    Shards are written in `<shards_dir>.partial` and renamed when every one is complete: an
    interrupted or incomplete download is resumed by the next call with the same URL list and
    shard settings (img2dataset skips finished shards), and `shards_dir` never holds a partial
    download. img2dataset's own progress goes to `img2dataset_log`.
    """
    shards_dir = Path(shards_dir)
    Path(listing_path).unlink(missing_ok=True)  # it vouches for the shards: none while they change
    urls = read_url_list(url_list)
    url_list_sha256 = files_sha256([url_list])
    partial = _resumable_partial_dir(shards_dir, {"url_list_sha256": url_list_sha256} | shard_settings(settings))
    urls_parquet = partial.with_name(shards_dir.name + ".urls.parquet")
    pq.write_table(urls, urls_parquet)
    log.info(f"downloading {urls.num_rows} URLs with img2dataset into {shards_dir}")
    log_start = _file_size(img2dataset_log)
    with _output_redirected(img2dataset_log):
        _run_img2dataset(urls_parquet, partial, settings, processes)
    urls_parquet.unlink()
    logged = _logged_failures(img2dataset_log, log_start)
    _require_complete_shards(partial, urls.num_rows, settings.samples_per_shard, logged)
    stats = download_stats(partial)
    _require_a_download(stats, partial, url_list, logged)
    shutil.rmtree(shards_dir, ignore_errors=True)
    os.replace(partial, shards_dir)
    config = {"url_list": str(url_list)} | shard_settings(settings)
    write_table(stats, stats_path, config=config, inputs_sha256=url_list_sha256)
    log.info(summarize_stats(stats))
    write_shard_listing(
        shards_dir, listing_path, config=config, inputs_sha256=url_list_sha256, threads=processes
    )
    return stats


def shard_settings(settings: DownloadSettings) -> dict[str, Any]:
    """The settings that shape a shard's contents, not how fast it downloads."""
    return {key: value for key, value in asdict(settings).items() if key not in EXECUTION_SETTINGS}


def _require_complete_shards(partial: Path, n_urls: int, samples_per_shard: int, logged: Counter) -> None:
    """A UserError unless every shard of the URL list is complete and their counts add up to it.
    img2dataset counts a sample it could not write (a full disk) as failed and goes on, and leaves
    a shard it could not finish without stats or with a truncated file: such shards are removed,
    so that the next run downloads them again; the complete ones are kept for it."""
    expected = [f"{shard:05d}" for shard in range(math.ceil(n_urls / samples_per_shard))]
    incomplete = [shard for shard in expected if not _is_complete(partial, shard)]
    counted = sum(stats["count"] for shard, stats in _shard_stats(partial).items() if shard not in incomplete)
    if not incomplete and counted == n_urls:
        return
    failure = _most_common_failure(partial, logged)
    for shard in incomplete:
        for path in partial.glob(f"{shard}[._]*"):
            path.unlink()
    listed = ", ".join(incomplete[:5]) + (", ..." if len(incomplete) > 5 else "")
    raise UserError(
        f"the download is incomplete: {len(incomplete)} of {len(expected)} shards missing or unfinished "
        f"({listed}), {counted} of {n_urls} URLs accounted for; {failure}; "
        f"the finished shards are kept in {partial}: free disk space if it is full, then run again"
    )


def _is_complete(partial: Path, shard: str) -> bool:
    """Whether img2dataset finished `shard`: its tar, its readable Parquet table and its stats,
    with no sample lost to the disk."""
    files = [partial / f"{shard}{suffix}" for suffix in (".tar", ".parquet", "_stats.json")]
    if not all(path.is_file() for path in files):
        return False
    try:
        pq.read_metadata(files[1])
        stats = json.loads(files[2].read_text())
    except (pa.ArrowInvalid, OSError, ValueError):
        return False
    return not any(_is_disk_error(reason) for reason in stats.get("status_dict", {}))


def _is_disk_error(reason: str) -> bool:
    return any(f"[Errno {number}]" in reason for number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS))


def _require_a_download(stats: pa.Table, partial: Path, url_list: Path, logged: Counter) -> None:
    """A UserError when no image downloaded (an outage, a list of dead links), after removing the
    partial download: a resume would take its shards for finished and never try them again."""
    if sum(stats["successes"].to_pylist()):
        return
    failure = _most_common_failure(partial, logged)
    shutil.rmtree(partial)
    raise UserError(
        f"no image downloaded from {url_list}: {summarize_stats(stats)}; {failure}; "
        f"nothing was kept, run again once the URLs can be reached"
    )


def _most_common_failure(partial: Path, logged: Counter) -> str:
    """The most common failure and its count: of img2dataset's own error lines (a sample or a
    shard it could not write, e.g. on a full disk, whose shard may never write its stats), else
    of the URLs its shards' stats count as failed."""
    for reasons, unit in ((logged, "lines of img2dataset's log"), (_failure_reasons(partial), "URLs")):
        if reasons:
            reason, count = reasons.most_common(1)[0]
            return f"most common failure ({count} {unit}): {reason}"
    return "most common failure: none recorded"


def _failure_reasons(shards_dir: Path) -> Counter:
    """How many URLs failed with each error message, over every shard's img2dataset stats."""
    reasons: Counter = Counter()
    for stats in _shard_stats(shards_dir).values():
        reasons.update(stats.get("status_dict", {}))
    reasons.pop("success", None)
    return reasons


# The error lines img2dataset prints for a sample or a shard that failed unexpectedly.
IMG2DATASET_FAILURE = re.compile(r"^(?:Sample \S+ failed to download|shard \S+ failed with error):? (.+)$")


def _file_size(path: Path | None) -> int:
    return Path(path).stat().st_size if path is not None and Path(path).is_file() else 0


def _logged_failures(img2dataset_log: Path | None, start: int) -> Counter:
    """How many times img2dataset's output (in `img2dataset_log` from byte `start` on: this run's)
    gives each error of a failed sample or shard."""
    reasons: Counter = Counter()
    if img2dataset_log is None:
        return reasons
    with open(img2dataset_log, "rb") as output:
        output.seek(start)
        for line in output:
            failure = IMG2DATASET_FAILURE.match(line.decode("utf-8", "replace").strip())
            if failure:
                reasons[failure.group(1)] += 1
    return reasons


@contextmanager
def _output_redirected(path: Path | None) -> Iterator[None]:
    """Send this process's and its children's stdout and stderr to `path` (if given)."""
    if path is None:
        yield
        return
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as target:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.dup2(target.fileno(), 1)
        os.dup2(target.fileno(), 2)
        try:
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _run_img2dataset(
    urls_parquet: Path, output_dir: Path, settings: DownloadSettings, processes: int
) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no update check over the network
    from img2dataset import download  # slow import, only where it is used

    download(
        url_list=str(urls_parquet),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_format="webdataset",
        output_folder=str(output_dir),
        processes_count=processes,
        thread_count=settings.threads_per_process,
        image_size=settings.image_size,
        resize_mode=settings.resize_mode,
        encode_format=settings.encode_format,
        number_sample_per_shard=settings.samples_per_shard,
        timeout=settings.timeout_s,
        retries=settings.retries,
        enable_wandb=False,
        incremental_mode="incremental",
    )


def _resumable_partial_dir(shards_dir: Path, key: dict[str, Any]) -> Path:
    """The folder an earlier download of the same URL list with the same shard settings (`key`)
    left, or a fresh one: shards of other settings would be mixed with this run's."""
    partial = resume_folder(shards_dir)
    marker = partial / "_download.key"  # not *.json: img2dataset reads those as its shards' stats
    earlier = json.loads(marker.read_text()) if marker.is_file() else None
    if earlier != key:
        if earlier is not None:
            log.warning(f"discarding the partial download in {partial}: {changed_settings(earlier, key)} changed")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        marker.write_text(json.dumps(key))
    return partial


def download_stats(shards_dir: Path) -> pa.Table:
    """One row per shard: samples tried, successes, failed downloads, failed decodes/resizes."""
    rows = [
        {"shard": shard} | {column: int(stats[column]) for column in STATS_COLUMNS}
        for shard, stats in _shard_stats(shards_dir).items()
    ]
    schema = pa.schema([("shard", pa.string())] + [(c, pa.int64()) for c in STATS_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


def _shard_stats(shards_dir: Path) -> dict[str, dict]:
    """img2dataset's stats of each shard (its _stats.json), by shard name, in shard order."""
    return {
        path.name.removesuffix("_stats.json"): json.loads(path.read_text())
        for path in sorted(Path(shards_dir).glob("*_stats.json"))
    }


def summarize_stats(stats: pa.Table) -> str:
    """One line: how many URLs were tried, downloaded, failed to download, failed to decode."""
    totals = {column: sum(stats[column].to_pylist()) for column in STATS_COLUMNS}
    return (
        f"{totals['count']} URLs: {totals['successes']} downloaded, "
        f"{totals['failed_to_download']} failed to download, "
        f"{totals['failed_to_resize']} failed to decode or resize"
    )
