"""Checkpoints: an Orbax V0 `CheckpointManager` over `Composite(state, data, meta)`.

Layout: `directory/<step>/{state, data, meta}`: `state` is the train-state pytree (`StandardSave`, every process
writes its shards), `data` each process's grain iterator state (`process_<i>-of-<n>.json`), `meta` a JSON dict
(step, config, mesh, process count, and the data position that a resume continues from: `convbert.resume`).
Saves are asynchronous (the call returns once arrays are copied to host memory); the last `max_to_keep` steps
are kept. Restores take an abstract target (`jax.ShapeDtypeStruct`s carrying the *current* shardings), so a
checkpoint written on one mesh loads onto another.

Before a step is restored, its array metadata is compared with the target: a checkpoint of another model (other
names or shapes) is an error that says so, never "unreadable". An unreadable newest checkpoint is skipped with
one warning naming it and why, and the next older one is used; the unreadable step directories are then renamed
`<step>.unreadable-<time>` (kept for inspection, ignored by Orbax). The "Event loop is closed" tracebacks that the
failed read's pending I/O raises afterwards (hundreds, through `sys.unraisablehook`), and asyncio's "Task
exception was never retrieved" records of its other failed reads (when they are garbage-collected late, as on a
loaded machine), are dropped. Preemption:
`reached_preemption(step)` is True once SIGTERM arrived (single process: our handler sets a flag) or, in
multi-process runs, at the step all processes agreed on through JAX's preemption sync service.
"""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from convbert import distributed, fileio


def _all_processes(ok: bool) -> bool:
    """True when `ok` holds on every process."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict | None:
    try:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception:  # noqa: BLE001 - an unreadable meta item is reported by `Checkpointer.restore`
        return None


def latest_meta(directory: str) -> tuple[int, dict] | None:
    """(step, meta) of the newest checkpoint in `directory` whose meta reads, or None; creates nothing."""
    path = epath.Path(fileio.absolute(directory))
    if not path.is_dir():
        return None
    manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            if (meta := _read_meta(manager, step)) is not None:
                return step, meta
        return None
    finally:
        manager.close()


def _reason(error: Exception, limit: int = 300) -> str:
    """The first line of an error, shortened: why a checkpoint could not be read."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _drop_event_loop_noise() -> None:
    """Installs (each unless already there) a `sys.unraisablehook` that drops what the pending reads of a failed
    Orbax restore raise when they complete after its event loop closed (hundreds of tracebacks for one damaged
    checkpoint): RuntimeError('Event loop is closed'), and any exception raised inside asyncio's own code (the closed
    loop's machinery), every other unraisable exception going to the previous hook; and `_UnretrievedReadFilter` on
    the asyncio logger."""
    asyncio_log = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedReadFilter) for f in asyncio_log.filters):
        asyncio_log.addFilter(_UnretrievedReadFilter())
    previous = sys.unraisablehook
    if getattr(previous, "drops_event_loop_noise", False):
        return

    def hook(args):
        closed = isinstance(args.exc_value, RuntimeError) and str(args.exc_value) == "Event loop is closed"
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback is not None else []
        in_asyncio = bool(frames) and f"{os.sep}asyncio{os.sep}" in frames[-1].filename
        if not (closed or in_asyncio):
            previous(args)

    hook.drops_event_loop_noise = True
    sys.unraisablehook = hook


class _UnretrievedReadFilter(std_logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of a failed restore's other reads (the failure
    itself is raised by the restore and reported once): tasks of Orbax's `async_deserialize`, or tasks that failed
    with a TensorStore error (its message carries `tensorstore_spec`; asyncio names such a task by its wrapper,
    `_wrap_awaitable`)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        message = record.getMessage()
        read = "async_deserialize" in message or "tensorstore_spec" in message
        return not (message.startswith("Task exception was never retrieved") and read)


class Checkpointer:
    """Save / restore of (train state, data iterator, meta) with fallback and preemption handling."""

    def __init__(
        self,
        directory: str,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        handle_sigterm: bool = True,
        barrier_timeout_s: float = distributed.DEFAULTS["barrier_timeout_s"],
    ):
        self._barrier_timeout_s = barrier_timeout_s
        self.directory = epath.Path(fileio.absolute(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )
        self._sigterm = threading.Event()
        self._previous_handler = None
        # Multi-process runs leave SIGTERM to JAX's preemption notifier (see `reached_preemption`).
        if handle_sigterm and jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping at the next step boundary")
        self._sigterm.set()

    # ---- queries ----
    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def reached_preemption(self, step: int) -> bool:
        """Call at every step boundary on every process (the multi-process sync point needs each step)."""
        return self._sigterm.is_set() or self._manager.reached_preemption(step)

    # ---- save / restore ----
    def save(
        self, step: int, state: Any, *, data: grain.DatasetIterator | None = None, meta: dict | None = None
    ) -> None:
        """Starts an asynchronous save of `state` (+ iterator position, + JSON `meta`) as `step`."""
        items = dict(state=ocp.args.StandardSave(state))
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data)
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def read_meta(self, step: int) -> dict | None:
        return _read_meta(self._manager, step)

    def restore(self, abstract_state: Any, *, step: int | None = None) -> tuple[int, Any, dict | None] | None:
        """(step, state, meta) of the newest readable checkpoint (or of `step`), or None when there is none.

        `abstract_state`: pytree of `jax.ShapeDtypeStruct` with the target shardings. A checkpoint whose arrays
        do not fit it raises ValueError (nothing renamed). If no checkpoint is readable, the newest one's error is
        raised (nothing renamed).
        """
        failed: list[tuple[int, Exception]] = []
        # Before the first read: a damaged checkpoint's pending reads may hit the closed loop while the restore is
        # still raising.
        _drop_event_loop_noise()
        for candidate in [step] if step is not None else reversed(self.all_steps()):
            self._check_fits(candidate, abstract_state)
            try:
                restored = self._manager.restore(
                    candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                )
                ok = True
            except Exception as e:  # noqa: BLE001 - any failure to read means "try the previous checkpoint"
                failed.append((candidate, e))
                ok = False
            if _all_processes(ok):
                self._quarantine(failed, candidate)
                return candidate, restored.state, self.read_meta(candidate)
        if failed:
            raise failed[0][1]
        return None

    def _check_fits(self, step: int, abstract_state: Any) -> None:
        """ValueError when checkpoint `step`'s arrays (names, shapes) are not those of `abstract_state`; nothing
        when they are, or when its metadata cannot be read (the restore then reports the damage)."""
        try:
            saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state").tree
        except Exception:  # noqa: BLE001 - unreadable metadata: an unreadable checkpoint, handled by `restore`
            return
        saved = {k: tuple(v.shape) for k, v in ocp.tree.to_flat_dict(saved, sep=".").items()}
        target = {
            k: tuple(v.shape)
            for k, v in ocp.tree.to_flat_dict(
                ocp.tree.serialize_tree(abstract_state, keep_empty_nodes=True), sep="."
            ).items()
        }
        missing, extra = sorted(target.keys() - saved.keys()), sorted(saved.keys() - target.keys())
        shapes = sorted(k for k in target.keys() & saved.keys() if target[k] != saved[k])
        if not (missing or extra or shapes):
            return
        parts = [
            f"{len(missing)} arrays of the model are not in it (e.g. {missing[0]})" if missing else "",
            f"{len(extra)} of its arrays are not in the model (e.g. {extra[0]})" if extra else "",
            f"{len(shapes)} have other shapes (e.g. {shapes[0]}: saved {saved[shapes[0]]}, model {target[shapes[0]]})"
            if shapes
            else "",
        ]
        raise ValueError(
            f"checkpoint {self.directory / str(step)} holds another model than this config builds: "
            f"{'; '.join(p for p in parts if p)}. Resume with the config it was written with, or "
            "start a new --workdir"
        )

    def _quarantine(self, failed: list[tuple[int, Exception]], restored_step: int) -> None:
        """One warning per unreadable step directory, which is renamed out of Orbax's view (so its step number
        can be saved again)."""
        if not failed:
            return
        if jax.process_index() == 0:
            for step, error in failed:
                path = self.directory / str(step)
                target = self.directory / f"{step}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
                path.rename(target)
                logging.warning(
                    "checkpoint %s is unreadable (%s); resuming from step %d instead; moved it to %s",
                    path,
                    _reason(error),
                    restored_step,
                    target,
                )
        distributed.barrier("checkpoint_quarantine", self._barrier_timeout_s)
        self._manager.reload()

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and restores the previous SIGTERM handler."""
        self._manager.wait_until_finished()
        self._manager.close()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
