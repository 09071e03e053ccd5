"""The resume contract: what a restarted run may change, where it continues reading data, and the config history.

A pretraining restart compares its config with the one stored in the newest checkpoint (`check_config`), before
data preparation or any write. Keys in `FREE` (run length, logging, evaluation and export cadence, checkpointing,
mesh and sharding, loader workers) may change: the changes are logged and applied. Any other change (the model,
the objective, the optimizer, the data and its preparation, `max_seq_length`, `batch_size`, `seed`,
`grad_accum_steps`) stops the run with the old and new values, unless `--config.resume.allow_changes` names the
key or its section (comma-separated, e.g. `batch_size,optimizer.learning_rate`). The prepared data must also be
the data the checkpoint read (`check_data`, by the manifest's content) unless `data` is allowed.

The data position (`DataPosition`) is the number of examples of the global order read so far (the loader's
example offset, `convbert.data.loader`), recorded in each checkpoint's meta. A restart reads on from there at
its own batch size, so a changed `batch_size` neither skips nor repeats an example. Checkpoints written before
the position was recorded read one global batch per step from example 0.

Every start appends to the workdir's `config.json` (`record_start`): `{"starts": [{"started", ..., "changes",
"config"}, ...]}`, so the file says which config produced which steps or results; fine-tuning reruns, which keep
finished seeds, append too (`record_finetuning_start`).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from convbert import checkpoint, config_checks, fileio
from convbert.config_file import flatten, to_json

# Keys (or sections) a resumed run may change freely; `model.kernels` and `model.remat` choose how the same model
# is computed (`model.scan_layers` changes the checkpoint's layout and is refused).
FREE = (
    "num_train_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "eval_every_steps",
    "num_eval_steps",
    "export_hf",
    "export_every_steps",
    "profile",
    "checkpoint",
    "distributed",
    "mesh",
    "sharding_rules",
    "data.num_workers",
    "resume",
    "model.kernels",
    "model.remat",
)
# Why another change stops a resumed run, by its first key component.
REASONS = {
    "model": "changes the model",
    "size": "changes the model",
    "electra": "changes the objective",
    "objective": "changes the objective",
    "optimizer": "changes the optimizer",
    "data": "changes the data",
    "max_seq_length": "changes the data",
    "seed": "changes the data order and the random streams",
    "grad_accum_steps": "changes the update (micro-batches per step)",
    "batch_size": "changes what a step reads; if allowed, the data position is converted so that no example is "
    "skipped or repeated",
}
DATA = "data"  # the allow_changes entry that also accepts other prepared data
MISSING = "<absent>"


def _covers(patterns: Sequence[str], key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


@dataclasses.dataclass(frozen=True)
class Change:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"config.{self.key}: {self.old!r} -> {self.new!r}"


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The leaves of two JSON configs that differ (a key absent on one side: `MISSING`)."""
    a, b = flatten(old), flatten(new)
    return [
        Change(k, a.get(k, MISSING), b.get(k, MISSING))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, MISSING) != b.get(k, MISSING)
    ]


@dataclasses.dataclass(frozen=True)
class Resume:
    """The newest checkpoint a restart compared its config with: its step, meta and the accepted changes."""

    step: int
    meta: dict
    changes: tuple[Change, ...]
    allowed: tuple[str, ...]

    def allows(self, key: str) -> bool:
        return _covers(self.allowed, key)


def check_config(config: ml_collections.ConfigDict, workdir: str) -> Resume | None:
    """None for a fresh workdir; else the newest checkpoint's `Resume`, after checking that this config changes
    only what a resume may change (ValueError listing the refused changes and how to proceed)."""
    directory = os.path.join(workdir, "checkpoints")
    found = checkpoint.latest_meta(directory)
    if found is None:
        return None
    step, meta = found
    allowed = config_checks.allowed_changes(config)
    if "config" not in meta:
        logging.warning(
            "checkpoint %s records no config: the resumed run's config cannot be compared with it",
            os.path.join(directory, str(step)),
        )
        return Resume(step, meta, (), allowed)
    changes = diff(meta["config"], to_json(config))
    refused = [
        c for c in changes if not _covers(FREE, c.key) and not _covers(allowed, c.key) and MISSING not in (c.old, c.new)
    ]  # a key of another code version is logged below
    if refused:
        lines = [
            f"  {c}: {REASONS.get(c.key.split('.')[0], 'changes what the checkpoint was trained with')}"
            for c in refused
        ]
        raise ValueError(
            f"{os.path.join(directory, str(step))} was written with another config; resuming with this one would "
            "change:\n" + "\n".join(lines) + "\nNothing was written. To go on: rerun with the checkpoint's values, "
            "start a new --workdir, or accept the changes with --config.resume.allow_changes="
            + ",".join(c.key for c in refused)
        )
    for c in changes:
        logging.info(
            "resuming %s from step %d with %s%s",
            workdir,
            step,
            c,
            " (a key of another code version)" if MISSING in (c.old, c.new) else "",
        )
    return Resume(step, meta, tuple(changes), allowed)


def manifest_id(manifest: Mapping[str, Any]) -> str:
    """A digest of a prepared data folder's manifest without its creation time: equal for the same data."""
    content = json.dumps({k: v for k, v in manifest.items() if k != "created"}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def check_data(resume: Resume | None, manifest: Mapping[str, Any], data_dir: str) -> None:
    """ValueError when the checkpoint recorded other prepared data than `data_dir` holds (unless 'data' is in
    config.resume.allow_changes)."""
    saved = ((resume.meta.get("data") or {}).get("manifest")) if resume else None
    if saved is None or saved == manifest_id(manifest) or resume.allows(DATA):
        return
    raise ValueError(
        f"{data_dir} holds other prepared data than checkpoint step {resume.step} was trained on "
        f"(manifest {manifest_id(manifest)}, the checkpoint's {saved}): point config.data.data_dir at "
        "the data it was trained on, start a new --workdir, or accept it with "
        f"--config.resume.allow_changes={DATA}"
    )


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Training reads the global example order from example `offset` at step `start_step`, `batch_size`
    examples a step (`loader.make_iterator(example_offset=offset)`)."""

    offset: int
    start_step: int
    batch_size: int

    @classmethod
    def restored(cls, step: int, meta: Mapping[str, Any] | None, batch_size: int) -> DataPosition:
        """Where a run restored at `step` reads on, at its `batch_size`."""
        meta = meta or {}
        if "data" in meta and meta["data"] is None:  # a TF1 conversion (convbert.tf1): this code read no data yet
            read, saved_batch = 0, batch_size
        elif "data" in meta:
            read, saved_batch = meta["data"]["examples_read"], meta["data"]["batch_size"]
        else:  # written before the position was recorded: one global batch per step from example 0
            saved_batch = meta.get("config", {}).get("batch_size", batch_size)
            read = step * saved_batch
        if saved_batch != batch_size:
            logging.warning(
                "config.batch_size %d -> %d: %d examples were read in %d steps; reading on from example %d, %d a step",
                saved_batch,
                batch_size,
                read,
                step,
                read,
                batch_size,
            )
        return cls(read, step, batch_size)

    def meta(self, step: int, manifest: Mapping[str, Any]) -> dict:
        """The checkpoint meta of `step`: examples read, batch size, and which data (`manifest_id`)."""
        return {
            "examples_read": self.offset + (step - self.start_step) * self.batch_size,
            "batch_size": self.batch_size,
            "manifest": manifest_id(manifest),
        }


# ------------------------------------------------------------------------------------------------
# config.json: the history of starts


def record_start(path: str, config: Mapping[str, Any], **info: Any) -> list[Change]:
    """Appends a start ({"started": UTC time, **info, "changes", "config"}) to the history in `path` (a flat
    config.json of older versions becomes its first start); returns the changes from the previous start."""
    file = epath.Path(path)
    starts = []
    if file.exists():
        try:
            previous = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): move it away to start a new history") from None
        starts = previous.get("starts", [{"started": None, "changes": {}, "config": previous}])
    changes = diff(starts[-1]["config"], config) if starts else []
    starts.append(
        {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **info,
            "changes": {c.key: [c.old, c.new] for c in changes},
            "config": config,
        }
    )
    text = json.dumps({"starts": starts}, indent=2) + "\n"
    if fileio.is_remote(path):
        file.write_text(text)
    else:
        fileio.write_atomic(path, text)
    return changes


def latest_config(path: str) -> dict | None:
    """The config of the newest start in a workdir's config.json (either form), None when there is none."""
    file = epath.Path(path)
    if not file.exists():
        return None
    recorded = json.loads(file.read_text())
    return recorded["starts"][-1]["config"] if "starts" in recorded else recorded


def record_finetuning_start(workdir: str, config: ml_collections.ConfigDict) -> None:
    """`record_start` for a fine-tuning workdir, with a warning when the config changed since the last start:
    the finished seeds and tasks it skips came from the earlier config."""
    changes = record_start(os.path.join(workdir, "config.json"), to_json(config))
    if changes:
        logging.warning(
            "%s: the config changed since the last start (%s); finished seeds and tasks are kept, and "
            "their results come from the earlier config (every start is in config.json)",
            workdir,
            "; ".join(map(str, changes)),
        )


def clear_interrupted_logs(logdir: str) -> None:
    """Removes the metrics.jsonl and TensorBoard events an interrupted attempt left in `logdir`, so a seed that
    starts over logs only its own steps."""
    if jax.process_index() != 0:
        return
    stale = [
        p
        for p in (os.path.join(logdir, "metrics.jsonl"), *glob.glob(os.path.join(logdir, "events.out.*")))
        if os.path.isfile(p)
    ]
    for path in stale:
        os.remove(path)
    if stale:
        logging.info(
            "%s: removed the logs of an interrupted attempt (%s)", logdir, ", ".join(os.path.basename(p) for p in stale)
        )
