"""img2dataset downloads from a real HTTP server on loopback (failures counted, fatal only when
nothing downloads), and the URL list's malformed lines."""

import dataclasses
import functools
import json
import logging
import re
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from cleanclip_core.data import download
from cleanclip_core.data.download import DownloadSettings, download_shards, read_url_list
from cleanclip_core.data.manifest import write_manifest
from cleanclip_core.errors import UserError
from conftest import resize_disk

SETTINGS = DownloadSettings(
    image_size=16, resize_mode="center_crop", encode_format="jpg", samples_per_shard=4,
    threads_per_process=4, timeout_s=5, retries=0,
)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (base URL, served folder)."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    thread.join()


# Colour modes a CC3M copy holds, each with the RGB it must come out as (alpha over white).
IMAGE_MODES = {
    "gray.png": (Image.new("L", (24, 20), 128), (128, 128, 128)),
    "gray.jpg": (Image.new("L", (24, 20), 128), (128, 128, 128)),
    "gray_alpha.png": (Image.new("LA", (24, 20), (100, 128)), (177, 177, 177)),
    "rgba.png": (Image.new("RGBA", (24, 20), (200, 30, 30, 255)), (200, 30, 30)),
    "palette.png": (
        Image.new("RGB", (24, 20), (30, 200, 30)).convert("P", palette=Image.ADAPTIVE),
        (30, 200, 30),
    ),
    "cmyk.jpg": (Image.new("RGB", (24, 20), (30, 30, 200)).convert("CMYK"), (30, 30, 200)),
    "huge.jpg": (Image.new("RGB", (4000, 3000), (200, 120, 30)), (200, 120, 30)),
}


def test_broken_and_corrupt_urls_are_counted_and_left_out_of_the_manifest(http_server, tmp_path):
    base, root = http_server
    rows = []
    for index in range(6):
        Image.new("RGB", (24, 20), (40 * index, 90, 200)).save(root / f"{index}.png")
        rows.append((f"shape number {index}", f"{base}/{index}.png"))
    for name, (image, _) in IMAGE_MODES.items():
        image.save(root / name)
        rows.append((f"mode {name}", f"{base}/{name}"))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    rows += [("a corrupt image", f"{base}/corrupt.jpg"), ("a broken link", f"{base}/missing.png")]
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("".join(f"{caption}\t{url}\n" for caption, url in rows))

    shards, listing = tmp_path / "shards", tmp_path / "listing.parquet"
    stats = download_shards(
        url_list, shards, tmp_path / "stats.parquet", listing, SETTINGS, processes=1
    )

    totals = {column: sum(stats[column].to_pylist()) for column in stats.column_names[1:]}
    assert totals == {"count": 15, "successes": 13, "failed_to_download": 1, "failed_to_resize": 1}
    assert pq.read_table(tmp_path / "stats.parquet").equals(stats)
    assert not (tmp_path / "shards.partial").exists()
    assert pq.read_table(listing)["file"].to_pylist() == sorted(
        path.name for path in shards.iterdir()
    )

    manifest = write_manifest(
        shards, listing, tmp_path / "m.parquet", tmp_path / "i.parquet", config={}
    )
    captions = [f"shape number {i}" for i in range(6)] + [f"mode {name}" for name in IMAGE_MODES]
    assert sorted(manifest["caption"].to_pylist()) == sorted(captions)
    assert set(manifest["width"].to_pylist()) == {16}
    index = pq.read_table(tmp_path / "i.parquet")
    assert index["key"].to_pylist() == manifest["key"].to_pylist()
    for name, (_, rgb) in IMAGE_MODES.items():
        assert center_pixel(shards, manifest, index, f"mode {name}") == pytest.approx(rgb, abs=6)


def center_pixel(shards, manifest, index, caption) -> tuple[int, ...]:
    """The center pixel of a sample's stored image, decoded to RGB as the training loader does."""
    row = manifest["caption"].to_pylist().index(caption)
    shard, offset, size = (index[column][row].as_py() for column in ("shard", "offset", "size"))
    with open(shards / f"{shard}.tar", "rb") as tar:
        tar.seek(offset)
        data = torch.frombuffer(bytearray(tar.read(size)), dtype=torch.uint8)
    image = decode_image(data, mode=ImageReadMode.RGB)
    return tuple(image[:, 8, 8].tolist())


def test_a_download_where_no_url_works_fails_and_a_rerun_downloads_again(tmp_path):
    images = tmp_path / "www"
    images.mkdir()
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("".join(f"shape {i}\tfile://{images}/{i}.png\n" for i in range(3)))
    outputs = {name: tmp_path / name for name in ("shards", "stats.parquet", "listing.parquet")}

    def download():
        return download_shards(
            url_list, outputs["shards"], outputs["stats.parquet"], outputs["listing.parquet"],
            SETTINGS, processes=1,
        )

    with pytest.raises(UserError, match=(
        rf"no image downloaded from {url_list}: 3 URLs: 0 downloaded, 3 failed to download.*"
        r"most common failure \([0-9] URLs\): <urlopen error \[Errno 2\] No such file"
    )):
        download()
    assert not any(path.exists() for path in outputs.values())

    for i in range(3):  # the outage ends
        Image.new("RGB", (24, 20), (90, 90, 200)).save(images / f"{i}.png")
    assert sum(download()["successes"].to_pylist()) == 3


def test_missing_url_list_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_url_list(tmp_path / "nope.tsv")


def write_url_list(tmp_path, data: bytes):
    path = tmp_path / "urls.tsv"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data, message",
    [
        (b"a\thttp://x/1.jpg\n\nb\tfile:///x.png\textra\n", "line 3 has 3 tab-separated fields"),
        (b"a\thttp://x/1.jpg\nno tab here\n", "line 2 has 1 tab-separated fields"),
        ("caf\u00e9\thttp://x/1.jpg\n".encode() + b"caf\xe9\thttp://x/2.jpg\n", "line 2 is not UTF-8"),
        (b"a\thttp://x/1.jpg\n\t http://x/2.jpg\n", "line 2 has an empty caption"),
        (b"a\thttp://x/1.jpg\nb\t\n", "line 2 has no URL in its second field"),
        (b"http://x/1.jpg\ta caption\n", "line 1 has no URL in its second field .*'a caption'"),
        (b"url\tcaption\nhttp://x/1.jpg\ta caption\n", "line 1 has no URL .*'caption'"),
    ],
    ids=["3 fields", "1 field", "latin-1", "empty caption", "empty url", "swapped", "swapped header"],
)
def test_a_malformed_url_list_line_is_a_user_error_naming_it(tmp_path, data, message):
    with pytest.raises(UserError, match=message):
        read_url_list(write_url_list(tmp_path, data))


def test_url_list_skips_a_header_line_a_byte_order_mark_and_blank_lines(tmp_path):
    data = "\ufeffcaption\turl\r\na\thttp://x/1.jpg\r\n\r\nb\thttp://x/2.jpg\r\n\r\n".encode()
    rows = read_url_list(write_url_list(tmp_path, data))
    assert rows.to_pylist() == [
        {"caption": "a", "url": "http://x/1.jpg"}, {"caption": "b", "url": "http://x/2.jpg"}
    ]


def test_url_list_keeps_repeated_urls_and_warns_of_them(tmp_path, caplog):
    data = b"a\thttp://x/1.jpg\nb\thttp://x/1.jpg\nc\thttp://x/2.jpg\nd\thttp://x/1.jpg\n"
    with caplog.at_level("WARNING"):
        rows = read_url_list(write_url_list(tmp_path, data))
    assert rows.num_rows == 4
    assert "2 lines repeat the URL of an earlier line" in caplog.text


def test_url_list_keeps_quotes_in_captions(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text('a "quoted" caption\thttp://x/1.jpg\n')
    assert read_url_list(path)["caption"].to_pylist() == ['a "quoted" caption']


def shapes_url_list(tmp_path, n: int):
    """A URL list of `n` local images (file:// URLs: no server)."""
    images = tmp_path / "www"
    images.mkdir(exist_ok=True)
    for index in range(n):
        Image.new("RGB", (24, 20), (20 * index, 90, 200)).save(images / f"{index}.png")
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("".join(f"shape {index}\tfile://{images}/{index}.png\n" for index in range(n)))
    return url_list


def download_into(tmp_path, url_list, settings=SETTINGS):
    return download_shards(
        url_list, tmp_path / "shards", tmp_path / "stats.parquet", tmp_path / "listing.parquet", settings, processes=1
    )


def test_a_download_that_the_disk_cut_short_is_refused_then_resumed(tmp_path, monkeypatch):
    url_list = shapes_url_list(tmp_path, 10)  # shards 00000-00002 of 4, 4 and 2 images
    real_run = download._run_img2dataset

    def on_a_full_disk(urls, output_dir, settings, processes):
        # As img2dataset leaves a disk that filled up: one shard's table cut to 0 bytes, one
        # shard whose images could not be written (counted as failures), one never finished.
        real_run(urls, output_dir, settings, processes)
        (output_dir / "00000.parquet").write_bytes(b"")
        stats = json.loads((output_dir / "00001_stats.json").read_text())
        stats["status_dict"] = {"success": 1, "[Errno 28] No space left on device": 3}
        (output_dir / "00001_stats.json").write_text(json.dumps(stats))
        (output_dir / "00002_stats.json").unlink()

    monkeypatch.setattr(download, "_run_img2dataset", on_a_full_disk)
    with pytest.raises(UserError, match=re.escape(
        "the download is incomplete: 3 of 3 shards missing or unfinished (00000, 00001, 00002), 0 of 10 URLs "
        "accounted for; most common failure (3 URLs): [Errno 28] No space left on device; the finished shards are kept"
    )):
        download_into(tmp_path, url_list)
    assert not any((tmp_path / name).exists() for name in ("shards", "stats.parquet", "listing.parquet"))
    assert (tmp_path / "shards.partial").is_dir()

    monkeypatch.setattr(download, "_run_img2dataset", real_run)  # space freed
    stats = download_into(tmp_path, url_list)
    assert sum(stats["successes"].to_pylist()) == sum(stats["count"].to_pylist()) == 10


def test_a_download_on_a_full_disk_names_img2datasets_own_error_and_resumes_once_space_is_freed(small_disk, tmp_path):
    # On a disk that fills up img2dataset may finish no shard, so its stats count no failure: its
    # own error lines in its log (the stage's log) give the cause.
    url_list = shapes_url_list(tmp_path, 10)
    log = tmp_path / "download.log"
    log.write_text("Sample 1 failed to download: an earlier run's error\n" * 100)  # not this run's

    def download():
        return download_shards(
            url_list, small_disk / "shards", small_disk / "stats.parquet", small_disk / "listing.parquet",
            SETTINGS, processes=1, img2dataset_log=log,
        )

    with pytest.raises(UserError, match=(
        r"the download is incomplete: .*; most common failure \(\d+ lines of img2dataset's log\): "
        r"\[Errno 28\] No space left on device; the finished shards are kept"
    )):
        download()
    resize_disk(small_disk, "4m")  # space freed
    stats = download()
    assert sum(stats["successes"].to_pylist()) == 10


def test_a_download_resumed_with_other_shard_settings_starts_again(tmp_path, monkeypatch, caplog):
    url_list = shapes_url_list(tmp_path, 6)
    real_run = download._run_img2dataset

    def interrupted(urls, output_dir, settings, processes):
        real_run(urls, output_dir, settings, processes)
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_run_img2dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_into(tmp_path, url_list)
    monkeypatch.setattr(download, "_run_img2dataset", real_run)
    with caplog.at_level(logging.WARNING):
        download_into(tmp_path, url_list, dataclasses.replace(SETTINGS, image_size=8, threads_per_process=2))
    assert "image_size 16→8 changed" in caplog.text and "threads_per_process" not in caplog.text
    manifest = write_manifest(tmp_path / "shards", tmp_path / "listing.parquet", tmp_path / "m.parquet", tmp_path / "i.parquet", config={})
    assert set(manifest["width"].to_pylist()) == {8}
