"""Metric writing (console, `metrics.jsonl`, TensorBoard) and throughput / MFU bookkeeping.

`MetricWriter` has the `clu.metric_writers` method names (`write_scalars`, `write_hparams`, `flush`, `close`)
without clu's TensorFlow dependency; only process 0 writes. `Throughput` turns step counts
and wall time into tokens/s (total and per device), model FLOP/s per device, MFU and ETA.
"""

from __future__ import annotations

import datetime
import json
import logging as pylogging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath

from convbert import fileio

# Dense bf16 peak FLOP/s per device, matched as a substring of the lower-cased `device_kind` (first match wins).
PEAK_FLOPS_PER_DEVICE: tuple[tuple[str, float], ...] = (
    ("tpu v6", 918e12),
    ("tpu v5p", 459e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
    ("tpu v2", 45e12),
    ("b200", 2250e12),
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("v100", 125e12),
)
# CPU: the fp32 matmul throughput of one process on the 2-core development machine (large fp32 matmuls in torch,
# jax and numpy), shared by all simulated devices of the process; a reference for MFU on CPU, not a peak.
CPU_PEAK_FLOPS_PER_PROCESS = 185e9


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
    """Peak FLOP/s of one device of this kind, or None when the kind is not in the table."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    if device.platform == "cpu":
        return CPU_PEAK_FLOPS_PER_PROCESS / jax.local_device_count()
    return next((peak for key, peak in PEAK_FLOPS_PER_DEVICE if key in kind), None)


def _not_orbax_info(record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def quiet_orbax_logs() -> None:
    """Drops Orbax's INFO lines (several per save) from the absl log handler; warnings and errors stay."""
    handler = logging.get_absl_handler()
    if _not_orbax_info not in handler.filters:
        handler.addFilter(_not_orbax_info)


class Throughput:
    """Training rates over the interval since the previous call or `restart` (which sets the baseline: call it
    after step 1 to exclude compilation, and after evaluations). `flops_per_step`: model FLOPs of one global
    step (forward + backward)."""

    def __init__(self, *, tokens_per_step: int, flops_per_step: float | None, num_train_steps: int):
        self.tokens_per_step = tokens_per_step
        self.flops_per_step = flops_per_step
        self.num_train_steps = num_train_steps
        self.num_devices = jax.device_count()
        self.peak = peak_flops_per_device()
        if self.peak is None:
            logging.warning("no peak FLOP/s known for %r: MFU is not reported", jax.devices()[0].device_kind)
        self._last: tuple[int, float] | None = None

    def restart(self, step: int) -> None:
        self._last = (step, time.perf_counter())

    def __call__(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        last, self._last = self._last, (step, now)
        if last is None or step <= last[0]:
            return {}
        steps_per_s = (step - last[0]) / (now - last[1])
        tokens_per_s = steps_per_s * self.tokens_per_step
        out = {
            "perf/steps_per_sec": steps_per_s,
            "perf/tokens_per_sec": tokens_per_s,
            "perf/tokens_per_sec_per_device": tokens_per_s / self.num_devices,
            "perf/eta_seconds": (self.num_train_steps - step) / steps_per_s,
        }
        if self.flops_per_step:
            flops_per_device = steps_per_s * self.flops_per_step / self.num_devices
            out["perf/tflops_per_sec_per_device"] = flops_per_device / 1e12
            if self.peak:
                out["perf/mfu"] = flops_per_device / self.peak
        return out


def _console(key: str, value: float) -> str:
    if key.endswith("eta_seconds"):
        return f"eta={datetime.timedelta(seconds=round(value))}"
    name = key.split("/")[-1]
    if key.endswith("mfu"):
        return f"{name}={100 * value:.2f}%"
    return f"{name}={value:,.0f}" if abs(value) >= 1e4 else f"{name}={value:.4g}"


def _torn(text: str) -> tuple[str, str]:
    """(the complete records of a JSON-lines text, its torn last line: '' when it ends with a newline)."""
    cut = text.rfind("\n") + 1
    return text[:cut], text[cut:]


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines file; a record cut short (a write that failed, e.g. on a full disk) is skipped
    with a warning naming the file and line."""
    records = []
    for number, line in enumerate(epath.Path(path).read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logging.warning(
                "%s line %d: skipped a torn record (%d characters, cut short by a failed write)",
                path,
                number,
                len(line),
            )
    return records


class MetricWriter:
    """Console (absl logging), `logdir/metrics.jsonl` and TensorBoard events (tensorboardX) on process 0.

    A remote `logdir` (gs://...) gets metrics.jsonl rewritten on each `flush` (object stores cannot append). A torn
    last record (a write that failed: a full disk, a killed process) is dropped, with a warning, before appending."""

    def __init__(self, logdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.logdir = logdir
        if not self.enabled:
            return
        import tensorboardX

        path = epath.Path(logdir)
        path.mkdir(parents=True, exist_ok=True)
        self._jsonl_path = path / "metrics.jsonl"
        self._remote = fileio.is_remote(logdir)
        text = self._jsonl_path.read_text() if self._jsonl_path.exists() else ""
        complete, torn = _torn(text)
        if torn:
            logging.warning(
                "%s: dropped a torn last record (%d characters) before appending", self._jsonl_path, len(torn)
            )
        if self._remote:
            self._lines = [complete] if complete else []
        else:
            if torn:
                os.truncate(self._jsonl_path, len(complete.encode()))
            self._jsonl = open(self._jsonl_path, "a")  # noqa: SIM115 (open for the writer's life; `close` closes it)
        self._tb = tensorboardX.SummaryWriter(logdir, flush_secs=30)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One console line, one JSON line `{"step", "time", **scalars}` and one TensorBoard point per scalar."""
        if not self.enabled or not scalars:
            return
        scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
        logging.info("step %d: %s", step, "  ".join(_console(k, v) for k, v in scalars.items()))
        line = json.dumps({"step": step, "time": time.time(), **scalars}) + "\n"
        if self._remote:
            self._lines.append(line)
        else:
            self._jsonl.write(line)
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if self.enabled:
            self._tb.add_text("hparams", "```\n" + json.dumps(hparams, indent=2, default=str) + "\n```", 0)

    def flush(self) -> None:
        if self.enabled:
            if self._remote:
                self._jsonl_path.write_text("".join(self._lines))
            else:
                self._jsonl.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.flush()
            if not self._remote:
                self._jsonl.close()
            self._tb.close()
