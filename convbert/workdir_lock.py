"""One run per output folder: `hold(folder)` refuses a second run (`faults.WorkdirLocked`, naming the folder and
the holder's host, pid and start time) before it writes anything.

Local and mounted folders: the lock file (`folder/.lock`, or `lock_file`) is held with `flock`, which the kernel
releases when the holder dies however it dies (kill -9 included), and which shared file systems (NFSv4, Lustre,
GPFS) release when a lost client's lease ends. The file also records the holder, and the holder renews a heartbeat
in it every `LEASE_S / 4` seconds: a lock whose `flock` is free but whose record names a live holder on another
host with a fresh heartbeat (a file system whose locks are local to each host) is still refused; a record of this
host (its holder is dead: the kernel freed its lock) or with a heartbeat older than `LEASE_S` is stale and taken
over, with a warning naming it.

gs:// folders: the lock object is created with the precondition `if_generation_match=0` (created only if absent);
the holder renews its lease by rewriting it with the precondition of its own generation, and a lease older than
`LEASE_S` (the object's update time, so the hosts' clocks must agree within a few seconds) is taken over with the
precondition of the stale generation: of two runs racing for it, one wins.

Locks are per folder: a parent holding its folder (`ablate.py` its study) may start children that lock their own
subfolders, and one process may hold a folder again (a nested `hold` is a no-op).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
from absl import logging

from convbert import distributed, fileio
from convbert.faults import WorkdirLocked

LOCK_NAME = ".lock"
LEASE_S = 120.0  # a heartbeat older than this is a lost holder's


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: host, pid, start time (UTC, ISO), what they run, the last heartbeat (epoch seconds)."""

    host: str
    pid: int
    started: str
    command: str
    heartbeat: float

    @classmethod
    def me(cls) -> Holder:
        return cls(
            socket.gethostname(),
            os.getpid(),
            datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
            time.time(),
        )

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def __str__(self) -> str:
        return f"{self.command} (host {self.host}, pid {self.pid}, started {self.started})"

    def fresh(self, now: float) -> bool:
        return now - self.heartbeat < LEASE_S

    def text(self, heartbeat: float) -> str:
        return json.dumps(dataclasses.asdict(dataclasses.replace(self, heartbeat=heartbeat)))


def _refused(folder: str, holder: Holder | None) -> WorkdirLocked:
    return WorkdirLocked(
        f"{folder} is in use by {holder or 'another run (its record is unreadable)'}: nothing was written. "
        "Wait for that run to end (or stop it), or use another output folder"
    )


class _FileLock:
    """`flock` on a local or mounted lock file, with the holder record and its heartbeat."""

    def __init__(self, folder: str, path: str, holder: Holder):
        self.folder, self.path, self.holder = folder, path, holder
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise _refused(self.folder, self._read_holder()) from None
            try:  # the file may have been released and removed between open and flock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        previous = Holder.parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        if previous is not None and previous.host != self.holder.host and previous.fresh(time.time()):
            self.fd = None
            os.close(fd)
            raise _refused(self.folder, previous)
        if previous is not None:
            logging.warning("%s: taking over the lock of %s, which no longer holds it", self.folder, previous)
        self.renew()

    def _read_holder(self) -> Holder | None:
        for _ in range(3):  # a record being rewritten reads as invalid JSON for an instant
            with contextlib.suppress(OSError), open(self.path) as f:
                if (holder := Holder.parse(f.read())) is not None:
                    return holder
            time.sleep(0.05)
        return None

    def renew(self) -> None:
        data = self.holder.text(time.time()).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        os.close(self.fd)
        self.fd = None


class GcsStore:
    """The lock object on Cloud Storage (google-cloud-storage): create / read / replace / delete with generation
    preconditions. Methods return the new generation, or None when the precondition failed."""

    def __init__(self, url: str):
        from google.cloud import storage

        bucket, _, name = url.removeprefix("gs://").partition("/")
        self.blob = storage.Client().bucket(bucket).blob(name)

    def _write(self, text: str, generation: int) -> int | None:
        from google.api_core import exceptions

        try:
            self.blob.upload_from_string(text, if_generation_match=generation)
        except exceptions.PreconditionFailed:
            return None
        return self.blob.generation

    def create(self, text: str) -> int | None:
        return self._write(text, 0)

    def replace(self, text: str, generation: int) -> int | None:
        return self._write(text, generation)

    def read(self) -> tuple[str, int, float] | None:
        """(text, generation, update time in epoch seconds), None when absent."""
        from google.api_core import exceptions

        try:
            text = self.blob.download_as_text()
        except exceptions.NotFound:
            return None
        return text, self.blob.generation, self.blob.updated.timestamp()

    def delete(self, generation: int) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
            self.blob.delete(if_generation_match=generation)


class _ObjectLock:
    """The lock as an object created if absent, with a lease renewed by its holder (see the module docstring)."""

    def __init__(self, folder: str, store: Any, holder: Holder):
        self.folder, self.store, self.holder = folder, store, holder
        self.generation: int | None = None

    def acquire(self) -> None:
        text = self.holder.text(time.time())
        self.generation = self.store.create(text)
        if self.generation is not None:
            return
        found = self.store.read()
        if found is None:  # released meanwhile
            return self.acquire()
        previous_text, generation, updated = found
        previous = Holder.parse(previous_text)
        dead_here = previous is not None and previous.host == self.holder.host and not _alive(previous.pid)
        if time.time() - updated < LEASE_S and not dead_here:
            raise _refused(self.folder, previous)
        self.generation = self.store.replace(text, generation)
        if self.generation is None:  # another run took it over first
            raise _refused(self.folder, Holder.parse((self.store.read() or ("",))[0]))
        logging.warning("%s: taking over the lock of %s, whose lease expired", self.folder, previous)

    def renew(self) -> None:
        generation = self.store.replace(self.holder.text(time.time()), self.generation)
        if generation is None:
            logging.error("%s: the lock's lease was lost to another run (this run missed its renewals)", self.folder)
            return
        self.generation = generation

    def release(self) -> None:
        self.store.delete(self.generation)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_held: dict[str, int] = {}  # lock path -> nesting depth in this process


@contextlib.contextmanager
def hold(folder: str, *, lock_file: str | None = None, store: Any = None) -> Iterator[None]:
    """Holds `folder` for this process: `faults.WorkdirLocked` when another live run holds it. `lock_file`: where
    the lock lives (default `folder/.lock`; the folder is created if absent, and removed at the end if it is still
    empty); `store`: the lock object's store for a
    gs:// folder (default `GcsStore`)."""
    remote = fileio.is_remote(folder)
    lock_dir = folder if lock_file is None else os.path.dirname(lock_file)
    created = not remote and not os.path.exists(lock_dir)
    if not remote:
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise NotADirectoryError(f"{folder} is not a directory: give a directory (it is created if absent)")
        os.makedirs(lock_dir, exist_ok=True)
    path = lock_file or (f"{folder.rstrip('/')}/{LOCK_NAME}" if remote else os.path.join(folder, LOCK_NAME))
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    holder = Holder.me()
    lock = _ObjectLock(folder, store or GcsStore(path), holder) if remote else _FileLock(folder, path, holder)
    lock.acquire()
    _held[path] = 1
    stop = threading.Event()
    heartbeat = threading.Thread(target=_beat, args=(lock, stop), name=f"lock {folder}", daemon=True)
    heartbeat.start()
    try:
        yield
    finally:
        stop.set()
        heartbeat.join()
        del _held[path]
        lock.release()
        if created:  # a run that stopped before writing anything leaves no folder
            with contextlib.suppress(OSError):
                os.rmdir(lock_dir)


def _beat(lock: _FileLock | _ObjectLock, stop: threading.Event) -> None:
    while not stop.wait(LEASE_S / 4):
        try:
            lock.renew()
        except Exception as e:  # noqa: BLE001 - a failed renewal is retried at the next beat
            logging.warning("%s: could not renew the lock: %s", lock.folder, e)


@contextlib.contextmanager
def hold_run(workdir: str, timeout_s: float = distributed.DEFAULTS["barrier_timeout_s"]) -> Iterator[None]:
    """`hold(workdir)` on process 0 of a multi-process run, the others told whether it succeeded within
    `timeout_s` (every process raises `WorkdirLocked` when it did not)."""
    if jax.process_count() == 1:
        with hold(workdir):
            yield
        return
    with contextlib.ExitStack() as stack:
        failure = None
        if jax.process_index() == 0:
            try:
                stack.enter_context(hold(workdir))
            except WorkdirLocked as e:
                failure = e
        if not distributed.agree("workdir_lock", failure is None, timeout_s):
            raise failure or WorkdirLocked(f"{workdir} is in use by another run (see the log of process 0)")
        yield
