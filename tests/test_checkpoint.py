"""`convbert.checkpoint.Checkpointer` on small pytrees and a grain iterator (8 simulated CPU devices)."""

import glob
import json
import logging
import os
import re
import signal
import subprocess
import sys
import types

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import background
import pretraining_setup as setup
from convbert import checkpoint, sharding
from convbert.checkpoint import Checkpointer


def iterator():
    return iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())


def state_on(mesh, spec, scale=1.0):
    w = jax.device_put(np.arange(64 * 16, dtype=np.float32).reshape(64, 16) * scale, NamedSharding(mesh, spec))
    return {"w": w, "step": jax.device_put(jnp.int32(3), sharding.replicated(mesh))}


def abstract(mesh, spec):
    return {
        "w": jax.ShapeDtypeStruct((64, 16), jnp.float32, sharding=NamedSharding(mesh, spec)),
        "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh)),
    }


@pytest.fixture
def mesh8():
    return sharding.create_mesh({"data": -1})


def save_steps(directory, mesh, steps, **kwargs):
    ckpt = Checkpointer(directory, handle_sigterm=False, **kwargs)
    for s in steps:
        ckpt.save(s, state_on(mesh, P("data"), scale=s), meta={"step": s, "process_count": 1})
    ckpt.close()


def test_roundtrip_with_meta_and_iterator_state(tmp_path, mesh8):
    data = iterator()
    for _ in range(3):
        next(data)
    ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
    ckpt.save(7, state_on(mesh8, P("data")), data=data, meta={"step": 7, "note": "x"})
    ckpt.wait_until_finished()
    step, state, meta = ckpt.restore(abstract(mesh8, P("data")))
    ckpt.close()
    assert step == 7 and meta == {"step": 7, "note": "x"} and int(state["step"]) == 3
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(state_on(mesh8, P("data"))["w"]))
    assert json.loads((tmp_path / "7" / "data" / "process_0-of-1.json").read_text()) == {"next_index": 3}


def test_restore_onto_other_meshes(tmp_path, mesh8):
    save_steps(str(tmp_path), mesh8, [1])
    expected = np.asarray(state_on(mesh8, P("data"))["w"])
    for mesh, spec in (
        (sharding.create_mesh({"data": 2, "fsdp": 2, "model": 2}), P("fsdp", "model")),
        (sharding.create_mesh({}, jax.devices()[:1]), P()),
        (sharding.create_mesh({"model": 4}, jax.devices()[4:]), P(None, "model")),
    ):
        ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
        _, state, _ = ckpt.restore(abstract(mesh, spec))
        ckpt.close()
        assert state["w"].sharding == NamedSharding(mesh, spec)
        np.testing.assert_array_equal(np.asarray(state["w"]), expected)


def test_keeps_the_last_n(tmp_path, mesh8):
    save_steps(str(tmp_path), mesh8, [1, 2, 3, 4], max_to_keep=2)
    assert Checkpointer(str(tmp_path), handle_sigterm=False).all_steps() == [3, 4]


def corrupt(directory, step):
    """Garbage in every array data file of a step (the OCDBT files of the state and of each process)."""
    for f in glob.glob(os.path.join(directory, str(step), "state", "**", "d", "*"), recursive=True):
        with open(f, "wb") as fh:
            fh.write(b"garbage")


def test_unreadable_latest_falls_back_and_is_moved_aside(tmp_path, mesh8):
    save_steps(str(tmp_path), mesh8, [1, 2, 3])
    corrupt(str(tmp_path), 3)
    ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
    step, state, _ = ckpt.restore(abstract(mesh8, P("data")))
    assert step == 2 and float(state["w"][0, 1]) == 2.0
    assert ckpt.all_steps() == [1, 2] and len(glob.glob(str(tmp_path / "3.unreadable-*"))) == 1
    ckpt.save(3, state_on(mesh8, P("data")))  # the step number is free again
    ckpt.close()
    assert Checkpointer(str(tmp_path), handle_sigterm=False).all_steps() == [1, 2, 3]


def test_nothing_readable_raises_and_renames_nothing(tmp_path, mesh8):
    save_steps(str(tmp_path), mesh8, [5])
    corrupt(str(tmp_path), 5)
    ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
    with pytest.raises(ValueError):  # the read error of the newest checkpoint (tensorstore's)
        ckpt.restore(abstract(mesh8, P("data")))
    assert ckpt.all_steps() == [5]
    assert Checkpointer(str(tmp_path / "empty"), handle_sigterm=False).restore(abstract(mesh8, P())) is None


def test_another_model_is_named_not_unreadable(tmp_path, mesh8):
    """A checkpoint of other arrays than the target (a changed model) is a ValueError saying so, before any read;
    nothing is renamed."""
    save_steps(str(tmp_path), mesh8, [1, 2])
    ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
    target = abstract(mesh8, P("data"))
    for other, says in (
        (
            {**target, "w": jax.ShapeDtypeStruct((64, 8), jnp.float32, sharding=target["w"].sharding)},
            r"1 have other shapes \(e\.g\. w: saved \(64, 16\), model \(64, 8\)\)",
        ),
        ({**target, "extra": target["step"]}, r"1 arrays of the model are not in it \(e\.g\. extra\)"),
    ):
        with pytest.raises(ValueError, match=rf"checkpoint {tmp_path}/2 holds another model .*{says}"):
            ckpt.restore(other)
    ckpt.close()
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_event_loop_noise_is_dropped_other_unraisables_are_not(monkeypatch):
    """The hook a failed restore installs drops the "Event loop is closed" RuntimeErrors of Orbax's pending reads
    (hundreds of tracebacks for one damaged train state) and passes every other unraisable exception on."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint._drop_event_loop_noise()
    installed = sys.unraisablehook
    checkpoint._drop_event_loop_noise()  # once
    assert installed is not seen.append and sys.unraisablehook is installed

    def unraisable(error):
        return types.SimpleNamespace(
            exc_type=type(error), exc_value=error, exc_traceback=None, err_msg=None, object=None
        )

    noise, other = unraisable(RuntimeError("Event loop is closed")), unraisable(RuntimeError("something else"))
    same_text = unraisable(ValueError("Event loop is closed"))
    for args in (noise, other, noise, same_text):
        sys.unraisablehook(args)
    assert seen == [other, same_text]


def test_unretrieved_read_failures_are_dropped_from_the_asyncio_log(monkeypatch, caplog):
    """asyncio's "Task exception was never retrieved" records of Orbax's pending reads (a loaded machine collects
    them after the restore failed) are dropped; the same record of any other task, and other records, are not."""
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    checkpoint._drop_event_loop_noise()
    checkpoint._drop_event_loop_noise()  # once
    assert len(logging.getLogger("asyncio").filters) == 1
    read = "Task exception was never retrieved\nfuture: <Task finished name='Task-7' coro=<async_deserialize() done>"
    wrapped = (
        "Task exception was never retrieved\nfuture: <Task finished name='Task-203' coro=<_wrap_awaitable() done>"
        " exception=ValueError('OUT_OF_RANGE: Error opening \"zarr\" driver [tensorstore_spec=\\'{}\\']')>"
    )
    other = "Task exception was never retrieved\nfuture: <Task finished name='Task-8' coro=<fetch() done>"
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for message in (read, wrapped, other, "Executing <Task ...> took 0.2 seconds"):
            logging.getLogger("asyncio").error(message)
    assert [r.getMessage() for r in caplog.records] == [other, "Executing <Task ...> took 0.2 seconds"]


@background.fixture
def fallback_run():
    """(workdir, stderr lines of the second run) of pretrain.py run for 4 steps, its checkpoint 4 damaged, then
    run again."""
    workdir = os.path.join(background.directory("checkpoint_fallback"), "run")
    command = [sys.executable, "pretrain.py", f"--workdir={workdir}", *setup.cli_flags(num_train_steps=4)]

    def run():
        done = subprocess.run(
            command,
            cwd=setup.REPO,
            env=setup.subprocess_env(num_devices=1),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr.splitlines()

    run()
    corrupt(os.path.join(workdir, "checkpoints"), 4)
    return workdir, run()


@pytest.mark.slow
def test_fallback_is_one_warning_in_the_run_log(fallback_run):
    """pretrain.py restarted on a workdir whose newest checkpoint is damaged (`fallback_run`): its log holds one
    warning, naming the checkpoint and why, and no traceback (before: about 1,100 lines for this tiny run, hundreds
    of "Event loop is closed" tracebacks around the warning; issue 14 counted 20,071 lines for the tiny config)."""
    workdir, log = fallback_run
    warnings = [line for line in log if line.startswith("W")]
    assert len(warnings) == 1 and re.search(
        rf"checkpoint {workdir}/checkpoints/4 is unreadable \(ValueError: .+\); resuming from step 2 instead; "
        rf"moved it to {workdir}/checkpoints/4\.unreadable-\d+-\d+$",
        warnings[0],
    ), warnings
    first = next((i for i, line in enumerate(log) if "Traceback" in line or "Event loop is closed" in line), None)
    assert first is None, "\n".join(log[max(first - 5, 0) : first + 40])
    assert len(log) < 30, log


def test_sigterm_requests_preemption(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(str(tmp_path))
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.reached_preemption(2)
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is previous
