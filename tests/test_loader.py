"""Grain loader over prepared shards: determinism, per-process sharding, resumable position, global arrays."""

from collections import Counter

import grain
import numpy as np
import pytest

from convbert.data.loader import PretrainingData, make_iterator
from convbert.data.prepare import prepare_corpus


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "data"
    prepare_corpus(None, str(out), max_documents=3, num_shards=3, eval_fraction=0.5, max_seq_length=32)
    return str(out)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _rows(batches):
    """Multiset of examples ([3, T] rows) in batches."""
    return Counter(row.tobytes() for b in batches for row in np.stack([b[k] for k in sorted(b)], 1))


def _examples(src, indices):
    return _rows({k: v[None] for k, v in src[j].items()} for j in indices)


def test_source_matches_shards(data_dir):
    src = PretrainingData(data_dir)
    train = src.manifest["splits"]["train"]
    assert len(src) == train["examples"] and src.max_seq_length == 32
    last = train["shards"][-1]
    ex = src[len(src) - 1]
    np.testing.assert_array_equal(ex["input_ids"], np.load(f"{data_dir}/{last['file']}")[-1, 0])
    assert all(v.dtype == np.int32 and v.shape == (32,) for v in ex.values())
    with pytest.raises(IndexError):
        src[len(src)]


def test_deterministic_batches(data_dir):
    make = lambda seed: make_iterator(data_dir, global_batch_size=8, seed=seed, process_index=0, process_count=1)
    a, b, c = _take(make(0), 3), _take(make(0), 3), _take(make(1), 3)
    assert a[0]["input_ids"].shape == (8, 32) and a[0]["segment_ids"].dtype == np.int32
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_split_each_global_batch(data_dir, process_count):
    """Process p reads rows [p b, (p + 1) b) of every global batch of the one-process stream: disjoint shares, all
    examples once per epoch, and the same global batches whatever the process count."""
    src = PretrainingData(data_dir)
    one = list(make_iterator(data_dir, global_batch_size=4, seed=5, process_index=0, process_count=1, num_epochs=1))
    shares = [
        list(
            make_iterator(
                data_dir, global_batch_size=4, seed=5, process_index=i, process_count=process_count, num_epochs=1
            )
        )
        for i in range(process_count)
    ]
    assert len(one) == len(src) // 4 and all(len(s) == len(one) for s in shares)
    for step, batch in enumerate(one):
        for k in batch:
            np.testing.assert_array_equal(np.concatenate([s[step][k] for s in shares]), batch[k])
    rows, every_row = _rows(one), _examples(src, range(len(src)))
    assert sum(rows.values()) == len(one) * 4 and all(n <= every_row[r] for r, n in rows.items())  # no repeats


def test_get_state_set_state_resumes(data_dir):
    it = make_iterator(data_dir, global_batch_size=4, seed=2, process_index=1, process_count=2)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 2)
    resumed = make_iterator(data_dir, global_batch_size=4, seed=2, process_index=1, process_count=2)
    resumed.set_state(state)
    for x, y in zip(expected, _take(resumed, 2), strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_position_is_the_global_step(data_dir):
    """A position saved by process 1 of 2 resumes one process at the same global batch."""
    it = make_iterator(data_dir, global_batch_size=4, seed=2, process_index=1, process_count=2)
    _take(it, 3)
    alone = make_iterator(data_dir, global_batch_size=4, seed=2, process_index=0, process_count=1)
    alone.set_state(it.get_state())
    np.testing.assert_array_equal(next(alone)["input_ids"][2:], next(it)["input_ids"])


def test_orbax_checkpoint_roundtrip(data_dir, tmp_path):
    import orbax.checkpoint as ocp

    make = lambda: make_iterator(data_dir, global_batch_size=4, seed=3, process_index=0, process_count=1)
    it = make()
    _take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = next(it)
    restored = make()
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    np.testing.assert_array_equal(next(restored)["input_ids"], expected["input_ids"])


def test_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        make_iterator(data_dir, global_batch_size=5, seed=0, process_index=0, process_count=2)
    with pytest.raises(FileNotFoundError, match="/no/such/data"):
        PretrainingData("/no/such/data")
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        PretrainingData(str(tmp_path))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_iterator(data_dir, "eval", global_batch_size=4096, seed=0, process_index=0, process_count=1)


def test_batches_become_global_arrays(data_dir):
    """The loader's per-process batch, placed by `sharding.shard_batch` as the trainer does."""
    import jax

    from convbert import sharding

    mesh = sharding.create_mesh({"data": len(jax.devices()), "fsdp": 1, "model": 1})
    batch = next(make_iterator(data_dir, global_batch_size=8, seed=0))
    arrays = sharding.shard_batch(batch, mesh)
    assert arrays["input_ids"].sharding == sharding.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(arrays["input_mask"]), batch["input_mask"])


def test_merged_parts_resume(tmp_path):
    """A data set merged from two parts loads as one; the iterator position restores on it."""
    from convbert.data.prepare import merge_parts

    kwargs = dict(max_seq_length=32, eval_fraction=0.5, num_shards=2, unit_mb=0.05, num_workers=1)
    for part in (0, 1):
        prepare_corpus(None, str(tmp_path / "data"), part=part, num_parts=2, **kwargs)
    merge_parts(str(tmp_path / "data"))
    src = PretrainingData(str(tmp_path / "data"))
    train = src.manifest["splits"]["train"]
    parts = [s["file"].split("/")[0] for s in train["shards"]]
    assert len(src) == train["examples"] and parts == ["part-00000-of-00002"] * 2 + ["part-00001-of-00002"] * 2
    make = lambda: make_iterator(str(tmp_path / "data"), global_batch_size=4, seed=0, process_index=0, process_count=1)
    it = make()
    _take(it, 2)
    state, expected = it.get_state(), next(it)
    resumed = make()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["input_ids"], expected["input_ids"])


def _concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if batches else {}


def test_example_offset_continues_the_same_batches(data_dir):
    """An iterator started at example offset s G reads exactly the batches s, s + 1, ... of one started at 0 (how
    a run resumes its data position)."""
    make = lambda offset: make_iterator(
        data_dir, global_batch_size=4, seed=2, process_index=0, process_count=1, example_offset=offset
    )
    whole = _take(make(0), 6)
    for x, y in zip(whole[3:], _take(make(3 * 4), 3), strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    with pytest.raises(ValueError, match="example_offset -1"):
        make(-1)


@pytest.mark.parametrize("process_count", [1, 2])
def test_batch_size_change_reads_every_example_exactly_once(data_dir, process_count):
    """Three batches of 4, then (example offset 12, as `convbert.resume.DataPosition` converts it) batches of 6
    to the end of the epoch, on `process_count` processes: the rows read are the epoch's global order, in order,
    each once, up to a last partial batch of 6."""
    order = _concat(
        list(make_iterator(data_dir, global_batch_size=1, seed=4, process_index=0, process_count=1, num_epochs=1))
    )
    n = len(order["input_ids"])
    before = _take(
        make_iterator(data_dir, global_batch_size=4, seed=4, process_index=0, process_count=1, num_epochs=1), 3
    )
    shares = [
        list(
            make_iterator(
                data_dir,
                global_batch_size=6,
                seed=4,
                process_index=p,
                process_count=process_count,
                num_epochs=1,
                example_offset=12,
            )
        )
        for p in range(process_count)
    ]
    after = [_concat([share[step] for share in shares]) for step in range(len(shares[0]))]
    read = _concat(before + after)
    assert len(after) == (n - 12) // 6 and n - len(read["input_ids"]) < 6
    for k in read:
        np.testing.assert_array_equal(read[k], order[k][: len(read[k])])
