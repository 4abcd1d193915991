"""img2dataset downloads from a real HTTP server on loopback, failures counted, never fatal."""

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
from PIL import Image

from cleanclip_core.data.download import DownloadSettings, download_shards, read_url_list
from cleanclip_core.data.manifest import write_manifest
from cleanclip_core.errors import UserError

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


def test_broken_and_corrupt_urls_are_counted_and_left_out_of_the_manifest(http_server, tmp_path):
    base, root = http_server
    rows = []
    for index in range(6):
        Image.new("RGB", (24, 20), (40 * index, 90, 200)).save(root / f"{index}.png")
        rows.append((f"shape number {index}", f"{base}/{index}.png"))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    rows += [("a corrupt image", f"{base}/corrupt.jpg"), ("a broken link", f"{base}/missing.png")]
    url_list = tmp_path / "urls.tsv"
    url_list.write_text("".join(f"{caption}\t{url}\n" for caption, url in rows))

    shards = tmp_path / "shards"
    stats = download_shards(url_list, shards, tmp_path / "stats.parquet", SETTINGS, processes=1)

    totals = {column: sum(stats[column].to_pylist()) for column in stats.column_names[1:]}
    assert totals == {"count": 8, "successes": 6, "failed_to_download": 1, "failed_to_resize": 1}
    assert pq.read_table(tmp_path / "stats.parquet").equals(stats)
    assert not (tmp_path / "shards.partial").exists()

    manifest = write_manifest(shards, tmp_path / "m.parquet", tmp_path / "i.parquet", config={})
    assert sorted(manifest["caption"].to_pylist()) == [f"shape number {i}" for i in range(6)]
    assert set(manifest["width"].to_pylist()) == {16}
    index = pq.read_table(tmp_path / "i.parquet")
    assert index["key"].to_pylist() == manifest["key"].to_pylist()


def test_missing_url_list_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_url_list(tmp_path / "nope.tsv")


def test_url_list_with_the_wrong_number_of_columns_is_a_user_error(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text("a caption\tfile:///x.png\textra\n")
    with pytest.raises(UserError, match="not a 2-column TSV"):
        read_url_list(path)


def test_url_list_keeps_quotes_in_captions(tmp_path):
    path = tmp_path / "urls.tsv"
    path.write_text('a "quoted" caption\thttp://x/1.jpg\n')
    assert read_url_list(path)["caption"].to_pylist() == ['a "quoted" caption']
