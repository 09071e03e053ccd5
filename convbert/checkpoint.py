"""Checkpoints: an Orbax V0 `CheckpointManager` over `Composite(state, data, meta)` (jax-patterns 2.4).

Layout: `directory/<step>/{state, data, meta}`: `state` is the train-state pytree (`StandardSave`, every process
writes its shards), `data` the grain iterator position (`process_<i>-of-<n>.json`), `meta` a JSON dict (step,
config, mesh, process count). Saves are asynchronous (the call returns once arrays are copied to host memory);
the last `max_to_keep` steps are kept. Restores take an abstract target (`jax.ShapeDtypeStruct`s carrying the
*current* shardings), so a checkpoint written on one mesh loads onto another.

An unreadable newest checkpoint is skipped with a warning and the next older one is used; the unreadable step
directories are then renamed `<step>.unreadable-<time>` (kept for inspection, ignored by Orbax). Preemption:
`reached_preemption(step)` is True once SIGTERM arrived (single process: our handler sets a flag) or, in
multi-process runs, at the step all processes agreed on through JAX's preemption sync service.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils


def _all_processes(ok: bool) -> bool:
    """True when `ok` holds on every process."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


class Checkpointer:
    """Save / restore of (train state, data iterator, meta) with fallback and preemption handling."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
                 handle_sigterm: bool = True):
        self.directory = epath.Path(directory if "://" in directory else os.path.abspath(directory))
        self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=async_save, create=True))
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
    def save(self, step: int, state: Any, *, data: grain.DatasetIterator | None = None,
             meta: dict | None = None) -> None:
        """Starts an asynchronous save of `state` (+ iterator position, + JSON `meta`) as `step`."""
        items = dict(state=ocp.args.StandardSave(state))
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data)
        if meta is not None:
            items["meta"] = ocp.args.JsonSave(meta)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def read_meta(self, step: int) -> dict | None:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception:  # noqa: BLE001 - an unreadable meta item is reported by `restore`
            return None

    def restore(self, abstract_state: Any, *, data: grain.DatasetIterator | None = None, step: int | None = None
                ) -> tuple[int, Any, dict | None] | None:
        """(step, state, meta) of the newest readable checkpoint (or of `step`), or None when there is none.

        `abstract_state`: pytree of `jax.ShapeDtypeStruct` with the target shardings. `data` is set in place
        to the saved position, also when the checkpoint was written by another number of processes.
        If no checkpoint is readable, the newest one's error is raised (nothing renamed).
        """
        failed: list[tuple[int, Exception]] = []
        for step in [step] if step is not None else reversed(self.all_steps()):
            meta = self.read_meta(step)
            saved_count = (meta or {}).get("process_count", jax.process_count())
            items = dict(state=ocp.args.StandardRestore(abstract_state))
            if data is not None and saved_count == jax.process_count():
                items["data"] = grain.checkpoint.CheckpointRestore(data)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
                ok = True
            except Exception as e:  # noqa: BLE001 - any failure to read means "try the previous checkpoint"
                logging.warning("checkpoint step %d in %s is unreadable (%s: %s); trying the previous one",
                                step, self.directory, type(e).__name__, str(e)[:500])
                failed.append((step, e))
                ok = False
            if _all_processes(ok):
                self._quarantine([s for s, _ in failed])
                if data is not None and saved_count != jax.process_count():
                    self._restore_position_from(step, saved_count, data)
                return step, restored.state, meta
        if failed:
            raise failed[0][1]
        return None

    def _restore_position_from(self, step: int, saved_count: int, data: grain.DatasetIterator) -> None:
        """The data position of a checkpoint written by another number of processes: every process saved the
        same position (the number of global batches read, `convbert.data.loader`), so process 0's file serves."""
        path = self.directory / str(step) / "data" / f"process_0-of-{saved_count}.json"
        state = json.loads(path.read_text())
        try:
            data.set_state(state)
        except Exception as e:  # noqa: BLE001 - e.g. a position saved with grain worker processes
            raise ValueError(f"{path}: the data position {state} written by {saved_count} processes cannot be "
                             f"resumed by {jax.process_count()} ({type(e).__name__}: {e})") from e
        logging.info("resuming the data position of %s (written by %d processes) on %d processes",
                     path, saved_count, jax.process_count())

    def _quarantine(self, steps: list[int]) -> None:
        """Renames unreadable step directories out of Orbax's view, so their step numbers can be saved again."""
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                path = self.directory / str(step)
                target = self.directory / f"{step}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
                logging.warning("moving unreadable checkpoint %s to %s", path, target)
                path.rename(target)
        multihost_utils.sync_global_devices("convbert_checkpoint_quarantine")
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
