"""Two pretrain.py processes (2 CPU devices each) joined by `jax.distributed` on 127.0.0.1 train like one
process on one device, and both write their parts of the checkpoints."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

import background
import pretraining_setup as setup
from convbert import sharding
from convbert.data import loader
from convbert.pretraining import Pretrainer

SPECIAL = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def one_process_losses(config):
    """Losses of one process on one device, reading the data alone (the global batches do not depend on the
    process count)."""
    it = loader.make_iterator(
        setup.demo_data_dir(),
        "train",
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=0,
        process_count=1,
    )
    mesh = sharding.create_mesh({}, jax.devices()[:1])
    trainer = Pretrainer(config, mesh, SPECIAL)
    state = trainer.init(jax.random.PRNGKey(config.seed))
    losses = {}
    for step in range(1, config.num_train_steps + 1):
        state, metrics = trainer.train_step(state, sharding.shard_batch(next(it), mesh))
        losses[step] = float(metrics["loss"].mean())
    return losses, jax.device_get(state.params)


def launch_two(tmp_path: Path, workdir: str, flags: list[str]) -> list[subprocess.Popen]:
    """Two pretrain.py processes with 2 CPU devices each, joined on a free local port; logs in tmp_path."""
    port = portpicker.pick_unused_port()
    procs = []
    for i in range(2):
        cmd = [
            sys.executable,
            "pretrain.py",
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            *flags,
        ]
        with open(tmp_path / f"process_{i}.log", "w") as log:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=setup.REPO, env=setup.subprocess_env(num_devices=2), stdout=log, stderr=subprocess.STDOUT
                )
            )
    return procs


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            proc.kill()


@background.fixture
def two_processes():
    """(workdir, exit codes, logs) of two processes pretraining the shrunk tiny config on a (2, 2) data/fsdp mesh."""
    root = Path(background.directory("two_processes"))
    workdir = str(root / "run")
    procs = launch_two(root, workdir, setup.cli_flags(mesh__data=2, mesh__fsdp=2))
    wait_all(procs, timeout=420)
    return workdir, [p.returncode for p in procs], [(root / f"process_{i}.log").read_text() for i in range(2)]


@pytest.mark.slow
def test_two_processes_match_one(two_processes):
    workdir, returncodes, logs = two_processes
    assert returncodes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "process 1/2, 2 local of 4 devices" in logs[1]

    step_dir = os.path.join(workdir, "checkpoints", "8")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(os.path.join(step_dir, "data")))
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(os.path.join(step_dir, "state")))

    config = setup.tiny_config()
    expected, params = one_process_losses(config)
    got = setup.losses(workdir)
    np.testing.assert_allclose([got[s] for s in sorted(expected)], [expected[s] for s in sorted(expected)], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-6),
        setup.load_state(workdir, 8, config).params,
        params,
    )


def logged_steps(workdir: str) -> dict[int, float]:
    try:
        return setup.losses(workdir)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line half written
        return {}


@background.fixture
def preempted_processes():
    """SIGTERM to process 1 only (a preempted host) of two pretraining processes once they log steps: (workdir,
    exit codes, logs)."""
    root = Path(background.directory("preempted_processes"))
    workdir = str(root / "run")
    procs = launch_two(
        root,
        workdir,
        setup.cli_flags(mesh__data=2, mesh__fsdp=2, num_train_steps=100_000, checkpoint_every_steps=100_000),
    )
    try:
        deadline = time.time() + 400
        while not logged_steps(workdir) and time.time() < deadline and procs[0].poll() is None:
            time.sleep(1)
        assert logged_steps(workdir), (root / "process_0.log").read_text()[-3000:]
        procs[1].send_signal(signal.SIGTERM)
    finally:
        wait_all(procs, timeout=300)
    return workdir, [p.returncode for p in procs], [(root / f"process_{i}.log").read_text() for i in range(2)]


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_at_one_step(preempted_processes):
    """SIGTERM to process 1 only (`preempted_processes`): through JAX's preemption sync both processes save the
    same step, say so, and exit with `faults.Preempted`'s code 75 (before issue 23: 0, as if finished)."""
    workdir, returncodes, logs = preempted_processes
    assert returncodes == [75, 75], "\n\n".join(log[-3000:] for log in logs)
    steps = [int(re.search(r"stopped for preemption at step (\d+)", log).group(1)) for log in logs]
    assert steps[0] == steps[1] < 100_000, steps
    step_dir = os.path.join(workdir, "checkpoints", str(steps[0]))
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(os.path.join(step_dir, "data")))
