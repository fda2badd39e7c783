"""Checksummed, resumable downloads into a local cache.

A file is streamed into ``<dest>.part``, verified against its SHA-256 and only then renamed to
``<dest>``: a file under its final name is therefore always complete and verified, and a file
that is already there (and still verifies) is never downloaded again. An interrupted transfer is
resumed with an HTTP ``Range`` request where the server supports it; otherwise, or when the kept
partial file turns out not to belong to the remote file, the download restarts from zero.

The cache folder is ``~/.cache/hazematching`` unless the ``HAZEMATCHING_CACHE`` environment
variable or an explicit argument says otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from hazematching import __version__

CACHE_ENV = "HAZEMATCHING_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/hazematching")
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
# Server answers that may succeed when asked again; any other HTTP error is final.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message names the URL and what to do."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the published SHA-256 (the file has been deleted)."""


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: `cache_dir` if given, else ``$HAZEMATCHING_CACHE``, else
    ``~/.cache/hazematching``."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 digest of a file, read in chunks (memory stays flat for large files)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def disk_full_message(folder: Path, needed: int | None) -> str:
    """An actionable message for a full disk: free space, bytes still needed, how to move on."""
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    need = f", about {_human(needed)} more needed" if needed else ""
    return (f"no space left on the device holding {folder} ({_human(free)} free{need}): free "
            f"some space, or choose a folder on another disk (the cache folder is set with "
            f"--cache-dir or the {CACHE_ENV} environment variable)")


def fetch(url: str, dest: str | Path, sha256: str, *, progress: bool = True,
          timeout: float = 30.0, retries: int = 3) -> Path:
    """Download `url` to `dest` unless a verified copy is already there.

    Args:
        url: http(s) address of the file.
        dest: final path of the file (usually inside :func:`resolve_cache_dir`).
        sha256: expected hex SHA-256 of the file.
        progress: show a rich progress bar on stderr.
        timeout: seconds a connection attempt or a single read may stall before it fails.
        retries: further attempts after a failure that made no progress (dropped connection,
            timeout, server-side error); an attempt that received bytes resets the count.

    Returns:
        `dest`, complete and verified.

    Raises:
        ChecksumError: the download finished but its SHA-256 differs (nothing is left behind).
        DownloadError: the server could not be reached or refused the file, or the disk is full
            (the partial file is kept for resuming).
        ValueError: `sha256` is not a 64-digit hex string, or `url` is not http(s).
    """
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http(s) address")
    expected = sha256.strip().lower()
    if not _SHA256.match(expected):
        raise ValueError(f"{sha256!r} is not a SHA-256 hex digest (64 hex digits)")
    dest = Path(dest).expanduser()
    if dest.is_file():
        if sha256_file(dest) == expected:
            return dest
        # A file under the final name that no longer verifies is stale (a changed release or a
        # damaged copy): replace it rather than trust it.
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures, restarted = 0, False
    while True:
        before = _size(part)
        try:
            actual, resumed = _transfer(url, part, timeout, progress)
        except _Fatal as err:
            raise DownloadError(_network_message(url, dest, expected, err.reason)) from None
        except _Retryable as err:
            failures = 0 if _size(part) > before else failures + 1
            if failures > retries:
                raise DownloadError(_network_message(url, dest, expected, err.reason)) from None
            if failures:  # back off from a struggling server
                time.sleep(min(0.25 * 2 ** (failures - 1), 4.0))
            continue
        if actual == expected:
            break
        part.unlink(missing_ok=True)
        if resumed and not restarted:
            # The kept partial file may have been a prefix of an older version of the remote
            # file; only a clean download from byte zero can tell a corrupt source apart.
            restarted = True
            continue
        raise ChecksumError(
            f"{url}: SHA-256 mismatch: expected {expected}, got {actual}; the download was "
            f"deleted. The server may hold a different version of the file, or a proxy altered "
            f"it: try again later, or download it manually and check its SHA-256")
    os.replace(part, dest)
    return dest


class _Failure(Exception):
    """A failed transfer; `reason` goes into the final error message."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Retryable(_Failure):
    """A failure worth another attempt (dropped connection, timeout, overloaded server)."""


class _Fatal(_Failure):
    """A failure that another attempt would repeat (e.g. HTTP 404)."""


def _network_message(url: str, dest: Path, expected: str, reason: str) -> str:
    return (f"could not download {url}: {reason}. Check the network connection (or proxy "
            f"settings) and run the command again: the partial download is resumed. Or download "
            f"the file manually (e.g. with a browser) and save it as {dest}; it is used as soon "
            f"as its SHA-256 is {expected}")


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> tuple[str, bool]:
    """One request: append to `part` (resuming) or rewrite it; (hex digest, was it resumed)."""
    offset = _size(part)
    headers = {"User-Agent": f"hazematching/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - checked
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The partial file is at least as long as the remote one, so it is no prefix of it.
            part.unlink()
            return _transfer(url, part, timeout, progress)
        if err.code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {err.code} {err.reason}") from None
        raise _Fatal(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _Retryable(str(err.reason)) from None
    except (OSError, http.client.HTTPException) as err:
        raise _Retryable(f"{type(err).__name__}: {err}") from None
    with response:
        total = _content_length(response)
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                return _transfer(url, part, timeout, progress)
        else:
            offset = 0  # a whole-file answer: no range was asked for, or the server ignored it
        digest = hashlib.sha256()
        if offset:
            with part.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
        try:
            with part.open("ab" if offset else "wb") as out, \
                    _progress_bar(progress, part.name[:-len(".part")], total, offset) as advance:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    advance(len(chunk))
        except OSError as err:
            if err.errno == errno.ENOSPC:
                done = _size(part)
                raise DownloadError(f"cannot save {url} to {part}: " + disk_full_message(
                    part.parent, total - done if total else None)
                    + "; the partial download is kept and resumed next time") from None
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        except http.client.HTTPException as err:
            raise _Retryable(f"the connection broke ({type(err).__name__})") from None
    received = part.stat().st_size
    if total is not None and received < total:
        # http.client ends a body cut short by the server silently, without an error.
        raise _Retryable(f"the server closed the connection after {received} of {total} bytes")
    return digest.hexdigest(), offset > 0


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size or None) of a ``Content-Range: bytes a-b/total`` header."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match:
        return -1, None  # unparseable: treated as a range that does not start where asked
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str, total: int | None, done: int
                  ) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n_bytes)`` driving a rich download bar on stderr, or a no-op."""
    if not enabled:
        yield lambda _n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _human(n: int | None) -> str:
    size = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
