"""Pieces both benchmarks share: the worker protocol (one fresh subprocess per measurement, result on a tagged
stdout line) with the machine load around it, and the common command-line flags (`--peak_gflops` defaults to
`convbert.metric_writer.CPU_PEAK_FLOPS_PER_PROCESS`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

RESULT_TAG = "BENCH_RESULT "
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def emit_result(result: dict) -> None:
    """Worker side: the one line `run_worker` reads back."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(module: str, job: dict, timeout: float, env: dict | None = None) -> dict:
    """Runs `python -m module --worker JOB` from the repo root; returns its result plus the load before/after."""
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), **(env or {})}
    before = loadavg()
    proc = subprocess.run(
        [sys.executable, "-m", module, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG) :]), "load_before": before, "load_after": loadavg()}
    raise RuntimeError(f"worker {job} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def add_common_args(p: argparse.ArgumentParser, *, warmup: int) -> None:
    from convbert.metric_writer import CPU_PEAK_FLOPS_PER_PROCESS  # here: bench_prepare imports this module without jax

    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=15, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps first (the first compiles)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--peak_gflops", type=float, default=CPU_PEAK_FLOPS_PER_PROCESS / 1e9)
    p.add_argument("--timeout", type=float, default=3600.0, help="per worker, seconds")
    p.add_argument("--json_out", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
