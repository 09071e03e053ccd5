"""benchmarks/gpu.sh in its CPU smoke mode (GPU_SMOKE=1): the commands the GPU run makes (bench_pretrain with
one kernel choice beside torch.compile'd PyTorch in bfloat16), on the tiny model with 4 x 32 tokens."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import background
from pretraining_setup import REPO


@background.fixture
def gpu_script_run():
    """(output folder, process) of `bash benchmarks/gpu.sh OUT` with GPU_SMOKE=1."""
    out = background.directory("gpu_script")
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", out],
        # the script's `python` is this interpreter (its jax and torch), also where pytest runs without an active venv
        env={**os.environ, "GPU_SMOKE": "1", "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return Path(out), proc


@pytest.mark.slow
def test_gpu_script_smoke(gpu_script_run):
    tmp_path, proc = gpu_script_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "pretrain_tiny.json") as f:
        results = json.load(f)["results"]
    assert [r["run"] for r in results] == ["torch", "kernels=reference"]
    for r in results:
        assert r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["peak_rss_mb"] > 0
        assert r["peak_device_mb"] is None  # CPU: no device memory figure
    table = (tmp_path / "pretrain_tiny.md").read_text()
    assert "device cpu, dtype bfloat16, batch 4 x 32" in table and table.count("| tiny |") == 2
    assert "jax " in (tmp_path / "device.txt").read_text()
