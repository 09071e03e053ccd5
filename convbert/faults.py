"""Faults a run stops on, and the exit codes it stops with (docs/faults.md).

Every entry point runs its `main` through `exits_on_fault`: a `Fault` (or an out-of-space `OSError` anywhere in an
exception's chain) becomes one line on stderr and the fault's exit code, and SIGTERM outside a pretraining loop
(which saves a checkpoint first, `convbert.checkpoint`) becomes `Preempted`. The codes follow sysexits.h where one
fits, so a scheduler can tell them apart from a crash (1) and from a signal (128 + n):

  65  SeedsDiverged   fine-tuning seeds stopped at a non-finite loss (the finished ones were kept)
  69  BarrierTimeout  a process did not reach a barrier of the run within its timeout (a stalled or lost host)
  73  WorkdirLocked   another live run holds the output folder; nothing was written
  74  OutOfSpace      a write failed for lack of space; the line names the path and the free space
  75  Preempted       SIGTERM (preemption) stopped the run before its last step; rerun the same command to resume
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from convbert import fileio


class Fault(Exception):
    """An expected fault of the run's environment, reported as one line and `exit_code`."""

    exit_code = 1


class SeedsDiverged(Fault):
    """Fine-tuning seeds stopped at a non-finite loss."""

    exit_code = 65


class BarrierTimeout(Fault):
    """A barrier of the run timed out."""

    exit_code = 69


class WorkdirLocked(Fault):
    """The output folder is held by another live run."""

    exit_code = 73


class OutOfSpace(Fault):
    """A write failed for lack of space."""

    exit_code = 74


class Preempted(Fault):
    """The run stopped on SIGTERM before its last step (its state saved where the driver can)."""

    exit_code = 75


FAULTS = (SeedsDiverged, BarrierTimeout, WorkdirLocked, OutOfSpace, Preempted)  # the documented exit codes


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system of `path` (or of its nearest existing parent); None for remote paths."""
    if fileio.is_remote(path):
        return None
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def out_of_space(path: str, what: str = "writing") -> OutOfSpace:
    """The `OutOfSpace` fault for a failed write to `path`, naming the free space there."""
    free = free_bytes(path)
    space = "" if free is None else f" ({free / 2**20:,.1f} MiB free there)"
    return OutOfSpace(
        f"no space left on the device {what} {path}{space}: free some space (or point the run at a larger disk) "
        "and run the same command again to resume"
    )


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, its causes and contexts, and the members of exception groups among them."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]


def as_fault(error: BaseException) -> Fault | None:
    """The `Fault` behind `error`: itself, one in its chain, or `OutOfSpace` for an ENOSPC `OSError` in its chain."""
    for e in _chain(error):
        if isinstance(e, Fault):
            return e
    for e in _chain(error):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return out_of_space(e.filename or os.getcwd())
    return None


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In a child process (Linux): `signum` when its parent ends, however it ends (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signum)


def _preempted(signum, frame) -> None:
    del signum, frame
    raise Preempted("SIGTERM: stopped before finishing; run the same command again to resume")


def exits_on_fault(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """`main` for `absl.app.run`: SIGTERM raises `Preempted`; a fault exits with one line and its code."""

    @functools.wraps(main)
    def run(argv: list[str]) -> Any:
        signal.signal(signal.SIGTERM, _preempted)
        try:
            return main(argv)
        except Exception as e:
            fault = as_fault(e)
            if fault is None:
                raise
            sys.stderr.flush()
            print(f"{os.path.basename(sys.argv[0])}: {type(fault).__name__}: {fault}", file=sys.stderr, flush=True)
            if isinstance(fault, BarrierTimeout):  # skip the runtime's shutdown barrier: it would abort (SIGABRT)
                sys.stdout.flush()
                os._exit(fault.exit_code)
            sys.exit(fault.exit_code)

    return run
