"""`convbert.checkpoint.Checkpointer` on small pytrees and a grain iterator (8 simulated CPU devices)."""

import glob
import os
import signal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from convbert import sharding
from convbert.checkpoint import Checkpointer


def iterator():
    return iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())


def state_on(mesh, spec, scale=1.0):
    w = jax.device_put(np.arange(64 * 16, dtype=np.float32).reshape(64, 16) * scale, NamedSharding(mesh, spec))
    return {"w": w, "step": jax.device_put(jnp.int32(3), sharding.replicated(mesh))}


def abstract(mesh, spec):
    return {"w": jax.ShapeDtypeStruct((64, 16), jnp.float32, sharding=NamedSharding(mesh, spec)),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))}


@pytest.fixture
def mesh8():
    return sharding.create_mesh({"data": -1})


def save_steps(directory, mesh, steps, **kwargs):
    ckpt = Checkpointer(directory, handle_sigterm=False, **kwargs)
    for s in steps:
        ckpt.save(s, state_on(mesh, P("data"), scale=s), meta={"step": s, "process_count": 1})
    ckpt.close()


def test_roundtrip_with_data_position_and_meta(tmp_path, mesh8):
    data = iterator()
    for _ in range(3):
        next(data)
    ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
    ckpt.save(7, state_on(mesh8, P("data")), data=data, meta={"step": 7, "note": "x"})
    expected_next = next(data)
    next(data)
    ckpt.wait_until_finished()
    fresh = iterator()
    step, state, meta = ckpt.restore(abstract(mesh8, P("data")), data=fresh)
    ckpt.close()
    assert step == 7 and meta == {"step": 7, "note": "x"} and int(state["step"]) == 3
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(state_on(mesh8, P("data"))["w"]))
    np.testing.assert_array_equal(next(fresh), expected_next)


def test_restore_onto_other_meshes(tmp_path, mesh8):
    save_steps(str(tmp_path), mesh8, [1])
    expected = np.asarray(state_on(mesh8, P("data"))["w"])
    for mesh, spec in ((sharding.create_mesh({"data": 2, "fsdp": 2, "model": 2}), P("fsdp", "model")),
                       (sharding.create_mesh({}, jax.devices()[:1]), P()),
                       (sharding.create_mesh({"model": 4}, jax.devices()[4:]), P(None, "model"))):
        ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
        _, state, _ = ckpt.restore(abstract(mesh, spec))
        ckpt.close()
        assert state["w"].sharding == NamedSharding(mesh, spec)
        np.testing.assert_array_equal(np.asarray(state["w"]), expected)


def test_keeps_the_last_n(tmp_path, mesh8):
    save_steps(str(tmp_path), mesh8, [1, 2, 3, 4], max_to_keep=2)
    assert Checkpointer(str(tmp_path), handle_sigterm=False).all_steps() == [3, 4]


def corrupt(directory, step):
    for f in glob.glob(os.path.join(directory, str(step), "state", "d", "*")):
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
    with pytest.raises(Exception):
        ckpt.restore(abstract(mesh8, P("data")))
    assert ckpt.all_steps() == [5]
    assert Checkpointer(str(tmp_path / "empty"), handle_sigterm=False).restore(abstract(mesh8, P())) is None


def test_position_from_another_process_count(tmp_path, mesh8):
    """A checkpoint of 4 processes (its data files renamed as 4 processes write them) resumes the data position
    on 1 process from process 0's file; a position this iterator cannot take is an error naming the file."""
    data = iterator()
    for _ in range(3):
        next(data)
    ckpt = Checkpointer(str(tmp_path), handle_sigterm=False)
    ckpt.save(1, state_on(mesh8, P("data")), data=data, meta={"process_count": 4})
    ckpt.wait_until_finished()
    data_dir = tmp_path / "1" / "data"
    for i in range(4):
        (data_dir / f"process_{i}-of-4.json").write_text((data_dir / "process_0-of-1.json").read_text())
    (data_dir / "process_0-of-1.json").unlink()
    fresh = iterator()
    assert ckpt.restore(abstract(mesh8, P("data")), data=fresh)[0] == 1
    np.testing.assert_array_equal(next(fresh), next(data))
    (data_dir / "process_0-of-4.json").write_text('{"no_such_field": 1}')
    with pytest.raises(ValueError, match=r"process_0-of-4\.json: the data position .* written by 4 processes"):
        ckpt.restore(abstract(mesh8, P("data")), data=iterator(), step=1)
    ckpt.close()


def test_sigterm_requests_preemption(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(str(tmp_path))
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.reached_preemption(2)
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is previous
