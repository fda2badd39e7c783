"""Tests for hazematching.data.download against a real HTTP server on 127.0.0.1.

The server serves in-memory files, honours ``Range`` requests (or ignores them on demand), can
cut the connection after N bytes on the first request for a file, and records every request.
"""

from __future__ import annotations

import errno
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hazematching.data import download
from hazematching.data.download import (
    ChecksumError,
    DownloadError,
    fetch,
    resolve_cache_dir,
    sha256_file,
)

pytestmark = pytest.mark.timeout(60)


class LoopbackServer(ThreadingHTTPServer):
    """State of the test server: files by URL path, one-shot cuts, range support, request log."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.ranges = True
        self.requests: list[dict[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server
        path = self.path.split("?")[0]
        srv.requests.append({"path": path, "range": self.headers.get("Range")})
        data = srv.files.get(path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and srv.ranges:
            start = int(match.group(1))
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
        cut = srv.cut_after.pop(path, None)
        self.wfile.write(body if cut is None else body[:cut])
        # HTTP/1.0: the connection closes when the handler returns, cutting a shortened body.

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A :class:`LoopbackServer` running in a thread, stopped and joined afterwards."""
    srv = LoopbackServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


PAYLOAD = bytes(range(256)) * 40  # 10 KiB with varied bytes, so offsets matter
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def served(server: LoopbackServer) -> str:
    server.files["/files/blob.bin"] = PAYLOAD
    return server.url + "/files/blob.bin"


def test_download_verifies_and_leaves_only_the_final_file(server: LoopbackServer, served: str,
                                                          tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "blob.bin"
    assert fetch(served, dest, DIGEST, progress=True) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]
    assert len(server.requests) == 1 and server.requests[0]["range"] is None


def test_cache_hit_makes_no_request(server: LoopbackServer, served: str, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    fetch(served, dest, DIGEST, progress=False)
    fetch(served, dest, DIGEST.upper(), progress=False)
    assert len(server.requests) == 1


def test_stale_file_under_final_name_is_replaced(server: LoopbackServer, served: str,
                                                 tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.write_bytes(b"an older release")
    fetch(served, dest, DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_deletes_everything_and_names_both_digests(
        server: LoopbackServer, served: str, tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        fetch(served, dest, wrong, progress=False)
    message = str(info.value)
    assert served in message and wrong in message and DIGEST in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(server: LoopbackServer, served: str,
                                                 tmp_path: Path) -> None:
    server.cut_after["/files/blob.bin"] = 3000
    dest = tmp_path / "blob.bin"
    fetch(served, dest, DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [None, "bytes=3000-"]
    assert not dest.with_name("blob.bin.part").exists()


def test_interrupted_download_restarts_when_ranges_are_ignored(
        server: LoopbackServer, served: str, tmp_path: Path) -> None:
    server.ranges = False
    server.cut_after["/files/blob.bin"] = 3000
    dest = tmp_path / "blob.bin"
    fetch(served, dest, DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD  # a naive append would have duplicated 3000 bytes
    assert [r["range"] for r in server.requests] == [None, "bytes=3000-"]


def test_partial_file_of_another_version_restarts_cleanly(server: LoopbackServer, served: str,
                                                          tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"x" * 500)
    fetch(served, dest, DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == ["bytes=500-", None]


def test_partial_file_longer_than_remote_restarts_cleanly(server: LoopbackServer, served: str,
                                                          tmp_path: Path) -> None:
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))
    fetch(served, dest, DIGEST, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["range"] for r in server.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_missing_file_fails_at_once_naming_url_and_manual_path(server: LoopbackServer,
                                                               tmp_path: Path) -> None:
    url = server.url + "/files/absent.bin"
    dest = tmp_path / "absent.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, DIGEST, progress=False)
    assert url in str(info.value) and str(dest) in str(info.value) and "404" in str(info.value)
    assert len(server.requests) == 1


def test_unreachable_server_names_url_and_manual_path(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/blob.bin"
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as info:
        fetch(url, dest, DIGEST, progress=False, timeout=2, retries=1)
    message = str(info.value)
    assert url in message and str(dest) in message and "manually" in message


def test_full_disk_gives_actionable_error(server: LoopbackServer, served: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = Path.open

    class FullDisk:
        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def write(self, _data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(self: Path, mode: str = "r", *args: object, **kwargs: object):
        if self.name.endswith(".part") and mode in ("wb", "ab"):
            return FullDisk()
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", fake_open)
    with pytest.raises(DownloadError, match="no space left") as info:
        fetch(served, tmp_path / "blob.bin", DIGEST, progress=False)
    assert "HAZEMATCHING_CACHE" in str(info.value)
    assert not (tmp_path / "blob.bin").exists()


def test_rejects_malformed_checksum_and_other_schemes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        fetch("http://127.0.0.1:9/x", tmp_path / "x", "abc", progress=False)
    with pytest.raises(ValueError, match="not an http"):
        fetch(f"file://{tmp_path}/x", tmp_path / "y", DIGEST, progress=False)


def test_cache_dir_argument_beats_environment(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(download.CACHE_ENV, raising=False)
    assert resolve_cache_dir() == Path("~/.cache/hazematching").expanduser()
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(PAYLOAD)
    assert sha256_file(tmp_path / "f") == DIGEST
