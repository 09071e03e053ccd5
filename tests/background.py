"""Fixtures built in the background: test work that is mostly waiting for driver subprocesses (pretraining, an
ablation study, a SQuAD run end to end) starts in worker threads right after collection when a selected test
needs it, and the tests that need it run last (tests/conftest.py), so its minutes overlap the rest of the suite.

    @background.fixture
    def finished_study():  # no arguments; returns what the tests check
        ...

defines a session fixture `finished_study` whose value is the function's result (its exception, if it raised).
A job runs beside the tests of the main thread, so it leaves the process as it found it: absolute paths and
`cwd=` for its subprocesses (tests may `chdir`), its files under `directory(name)`, no monkeypatching.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest

# Jobs run at once: each is mostly one subprocess compiling on one core, beside the main thread's tests.
LANES = 2
# The jobs' threads, and so the subprocesses they start, run at this niceness (Linux: per thread, inherited by
# children): they take the cores the main thread's tests leave idle rather than slowing those tests down.
NICENESS = 10
SHARED_DIR = "CONVBERT_TEST_SHARED_DIR"  # one folder per pytest run (tests/conftest.py)

JOBS: dict[str, Callable[[], Any]] = {}  # in the order their modules define them
_futures: dict[str, concurrent.futures.Future] = {}
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()


def fixture(fn: Callable[[], Any]):
    """Registers `fn` as a background job and returns the session fixture of the same name that waits for it."""
    JOBS[fn.__name__] = fn

    @pytest.fixture(scope="session", name=fn.__name__)
    def wait():
        return result(fn.__name__)

    wait.__doc__ = fn.__doc__
    return wait


def start(names: Iterable[str]) -> None:
    """Starts the named jobs (those not started yet), `LANES` at a time, in the order given."""
    global _pool
    with _lock:
        _pool = _pool or concurrent.futures.ThreadPoolExecutor(
            LANES, thread_name_prefix="background", initializer=_lower_priority
        )
        for name in names:
            if name not in _futures:
                _futures[name] = _pool.submit(JOBS[name])


def _lower_priority() -> None:
    if sys.platform == "linux":  # elsewhere the niceness is the process's, not the thread's
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)


def result(name: str) -> Any:
    """The job's result: awaited when it was started, else run now."""
    start([name])
    return _futures[name].result()


def stop() -> None:
    """Drops the jobs not started yet (a run stopped early); a running one finishes its subprocesses."""
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)


def directory(name: str) -> str:
    """A new folder for the job `name` in this pytest run's shared folder (removed at the end of the run)."""
    path = os.path.join(os.environ[SHARED_DIR], name)
    os.makedirs(path)
    return path
