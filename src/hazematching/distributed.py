"""Work spread over the processes of one run (several GPUs or nodes), started as training is.

:func:`start` builds a Lightning Fabric for the given devices, nodes, strategy and accelerator
and launches it. On one machine its launcher runs the current command once more per extra
device; under ``torchrun`` or SLURM's ``srun``, which start every process themselves, it
recognises their environment and joins them (and checks that devices × nodes matches what they
started). This process then gets its :class:`Ranks`: its rank, the device it owns and the few
collective steps a run needs. Whatever the ranks must agree on (which files remain to do,
whether the output folder could be locked) is decided on rank 0 and broadcast, so the ranks
never diverge; with one process every step is a plain call, so a single process runs the same
code.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from hazematching.io import folder_lock, held_by_run

T = TypeVar("T")


class RankFailedError(RuntimeError):
    """Another process of this distributed run stopped on an error; the message quotes it."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a run of `world_size` processes.

    Attributes:
        rank: global rank, 0 … world_size − 1; rank 0 takes the decisions and the lock.
        world_size: number of processes in the run.
        device: the device this process owns ('cpu', 'cuda:1', …); None when the run was not
            started by :func:`start` with devices (the caller's own device choice applies).
    """

    rank: int = 0
    world_size: int = 1
    device: str | None = None

    def owns(self, index: int) -> bool:
        """Whether item `index` of a list that every rank holds alike is this rank's: items
        are dealt round robin, so ranks get equal shares to within one."""
        return index % self.world_size == self.rank

    def from_rank_zero(self, fn: Callable[[], T]) -> T:
        """Call `fn` on rank 0 only; return its result on every rank, or raise its exception on
        every rank (an exception that cannot be pickled arrives as a RuntimeError quoting it)."""
        if self.world_size == 1:
            return fn()
        box: list[object] = [None]
        failure: Exception | None = None
        if self.rank == 0:
            try:
                box[0] = (fn(), None)
            except Exception as err:  # noqa: BLE001 - every rank must learn of any failure
                failure = err
                box[0] = (None, _portable(err))
        torch.distributed.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        value, error = box[0]  # type: ignore[misc]
        if error is not None:
            raise error
        return value

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj` (picklable), indexed by rank, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[T] = [None] * self.world_size  # type: ignore[list-item]
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank has arrived here."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def raise_if_any_failed(self, error: Exception | None) -> None:
        """A step every rank took together ends alike on every rank: each raises its own
        `error`, or :class:`RankFailedError` quoting the others' when only they failed."""
        reports = self.gather(None if error is None else describe(error))
        if error is not None:
            raise error
        failed = [f"rank {r} of {self.world_size} failed: {why}"
                  for r, why in enumerate(reports) if why]
        if failed:
            raise RankFailedError("; ".join(failed))

    @contextlib.contextmanager
    def folder_lock(self, folder: str | Path, purpose: str) -> Iterator[None]:
        """:func:`~hazematching.io.folder_lock` for the whole run: rank 0 takes the lock (its
        failure, e.g. another run holding the folder, is raised on every rank), the other ranks
        work under it (:func:`~hazematching.io.held_by_run`), and rank 0 releases it only once
        every rank has left the block normally. An exception leaving the block skips that wait:
        catch errors inside it (the ranks' work) and report them after it."""
        with contextlib.ExitStack() as stack:
            self.from_rank_zero(lambda: stack.enter_context(folder_lock(folder, purpose)))
            if self.rank != 0:
                stack.enter_context(held_by_run(folder))
            yield
            self.barrier()


def _portable(err: Exception) -> Exception:
    """`err` if it survives pickling (to be sent to the other ranks), else a RuntimeError."""
    try:
        return pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any pickling failure has the same remedy
        return RuntimeError(describe(err))


def describe(err: BaseException) -> str:
    """One line for an error: its notes (e.g. ``while processing a.tif``), type and message."""
    notes = "; ".join(getattr(err, "__notes__", []))
    return f"{notes + ': ' if notes else ''}{type(err).__name__}: {err}"


def this_process() -> Ranks:
    """This process's rank and world size in the distributed run it belongs to (device None);
    ``Ranks()`` when it belongs to none."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def start(devices: int | str | list[int] | None = None, *, num_nodes: int = 1,
          strategy: str = "auto", accelerator: str = "auto") -> Ranks:
    """Start (or join) the processes of a run on Lightning Fabric; return this one's ranks.

    Args:
        devices: devices per node as Lightning takes them (2, 'auto', [0, 2]), one process
            each; None: this process alone, on the device its caller chooses (then `num_nodes`,
            `strategy` and `accelerator` must keep their defaults).
        num_nodes: machines taking part (each runs the same command, e.g. through srun).
        strategy: 'auto' or a DDP strategy that re-runs the command per process ('ddp');
            spawning strategies ('ddp_spawn', 'ddp_notebook') are refused.
        accelerator: 'auto', 'cpu', 'gpu', … (CPU processes talk over gloo, GPUs over NCCL).

    Raises:
        ValueError: settings Lightning refuses (a GPU on a machine without one, devices × nodes
            unlike what torchrun or srun started), a spawning strategy, distribution options
            without `devices`, or a process that a launcher started as one of several
            (``WORLD_SIZE`` > 1) called without `devices`, which would do every rank's work.
    """
    if devices is None:
        if (num_nodes, strategy, accelerator) != (1, "auto", "auto"):
            raise ValueError(f"num_nodes={num_nodes}, strategy={strategy!r} and "
                             f"accelerator={accelerator!r} spread the work over processes: "
                             f"give devices too (CLI: --devices N, the processes per machine)")
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1:
            raise ValueError(f"this process is one of {world} that a launcher started "
                             f"(WORLD_SIZE={world}), but devices is not given, so each would "
                             f"do all the work: pass devices and num_nodes as the launcher "
                             f"started them (CLI: --devices N --num-nodes M)")
        return Ranks()
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    settings = (f"accelerator={accelerator!r}, devices={devices!r}, num_nodes={num_nodes}, "
                f"strategy={strategy!r}")
    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                        strategy=strategy)
        fabric.launch()
    except TypeError as err:  # Fabric's answer to a strategy that spawns a function
        raise ValueError(f"distributed settings ({settings}): {err}; prediction re-runs the "
                         f"command once per process: use strategy 'ddp'") from None
    except (MisconfigurationException, ValueError, RuntimeError) as err:
        raise ValueError(f"distributed settings ({settings}): {err}") from None
    if torch.distributed.is_initialized():
        atexit.unregister(_destroy_process_group)  # one registration however often it starts
        atexit.register(_destroy_process_group)
    return Ranks(fabric.global_rank, fabric.world_size, str(fabric.device))


def _destroy_process_group() -> None:
    """Tear the process group down while the interpreter is still whole. Left to interpreter
    finalisation, gloo's worker threads can still hold work items whose tensors need the GIL,
    and the process aborts (SIGABRT, "terminate called without an active exception") after
    its work is done: seen intermittently with torch 2.14 when a rank had failed (see
    pytorch/pytorch#179291)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
