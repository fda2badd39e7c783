"""Real child processes for the fault tests: the command line run in a process that the test
kills with SIGKILL, and code run under a file-size limit.

Children are forked from a multiprocessing *forkserver* that has imported the package, torch and
Lightning once, so each child starts in milliseconds instead of paying the imports again; each
child is still a separate process with its own memory, files and locks.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PRELOAD = ["torch", "lightning.pytorch", "hazematching.api", "hazematching.cli"]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(_PRELOAD)


def _redirect(log: Path) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _die_during_write_of(name: str, nth: int) -> None:
    """SIGKILL this process the `nth` time a finished temporary file is about to be renamed onto
    a file called `name`, after cutting that temporary file to half its size: the state of a
    process killed while it was writing the file."""
    real_replace = os.replace
    seen = 0

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        nonlocal seen
        if Path(dst).name == name:
            seen += 1
            if seen == nth:
                os.truncate(src, os.path.getsize(src) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, **kwargs)

    os.replace = replace


def _run_cli(argv: list[str], log: str, fault: tuple[str, int] | None) -> None:
    import torch

    _redirect(Path(log))
    torch.set_num_threads(1)  # the tensors are tiny; extra threads only contend on a busy CI box
    if fault is not None:
        _die_during_write_of(*fault)
    from hazematching.cli import app

    code = 0
    try:
        app(argv, prog_name="hazematching")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class CliProcess:
    """``hazematching ARGV…`` in a child process; its output goes to `log`.

    Args:
        fault: ``(file name, n)``: the child kills itself (SIGKILL) in the middle of the n-th
            write of that file (see :func:`_die_during_write_of`).
    """

    def __init__(self, argv: list[str], log: Path, fault: tuple[str, int] | None = None):
        self.log = log
        self._proc = _context.Process(target=_run_cli, args=([str(a) for a in argv], str(log),
                                                             fault))
        self._proc.start()

    @property
    def exitcode(self) -> int | None:
        """None while running; negative signal number if killed (−9 for SIGKILL)."""
        return self._proc.exitcode

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for(self, condition: Callable[[], bool], timeout: float = 300.0) -> None:
        """Poll `condition` every few milliseconds until it holds; fail if the child ends or
        `timeout` (a hang guard, far above the expected seconds) passes first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if not self._proc.is_alive():
                raise AssertionError(f"the child ended (exit code {self._proc.exitcode}) before "
                                     f"the awaited state:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"the awaited state did not come within {timeout} s")
            time.sleep(0.005)

    def pause(self) -> None:
        """SIGSTOP the child: it keeps its files and locks but makes no progress, so that what
        the test does meanwhile cannot race with it."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the child (paused or not) and reap it."""
        if self._proc.is_alive():
            os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.join(30)

    def wait(self, timeout: float = 600.0) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            self.kill()
            raise AssertionError(f"the child did not finish within {timeout} s")
        return self._proc.exitcode


def _run_limited(func: Callable[..., dict[str, Any]], limit: int, report: str,
                 args: tuple[Any, ...]) -> None:
    """Run `func(*args)` with RLIMIT_FSIZE = `limit` bytes (a write beyond it fails with EFBIG,
    since Python ignores SIGXFSZ) and store its result as JSON in `report`."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        result = func(*args)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
    Path(report).write_text(json.dumps(result))
    os._exit(0)


def run_with_file_size_limit(func: Callable[..., dict[str, Any]], limit: int, report: Path,
                             *args: Any) -> dict[str, Any]:
    """Run the module-level function `func` in a child process whose files cannot grow beyond
    `limit` bytes (a full disk at the write call) and return what it returned."""
    proc = _context.Process(target=_run_limited, args=(func, limit, str(report), args))
    proc.start()
    proc.join(600)
    if proc.exitcode != 0:
        raise AssertionError(f"the size-limited child failed with exit code {proc.exitcode}")
    return json.loads(report.read_text())
