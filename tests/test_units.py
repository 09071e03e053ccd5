"""Units of work (`convbert.data.units`), through `prepare_corpus`: the same bytes for any number of workers, resume
after a kill, corrupt units rebuilt."""

import json
import multiprocessing
import os
import signal

import pytest
from prepare_setup import FAST, PLAYS, play

from convbert.data import units
from convbert.data.prepare import prepare_corpus


def _files(root):
    """{relative path: bytes} of a prepared folder; the manifest without its creation time."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "manifest.json":
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "created"}).encode()
            out[str(path.relative_to(root))] = data
    return out


def test_workers_do_not_change_the_bytes(plays, tmp_path, monkeypatch):
    """1 and 2 workers write identical folders, from files (six units) and from a saved dataset (three)."""
    import datasets

    one = prepare_corpus(str(plays), str(tmp_path / "one"), num_workers=1, **FAST)
    prepare_corpus(str(plays), str(tmp_path / "two"), num_workers=2, **FAST)
    assert one["units"] == 6 and one["splits"]["eval"]["documents"] == 2
    assert _files(tmp_path / "one") == _files(tmp_path / "two")

    monkeypatch.setattr(units, "HF_ROWS_PER_UNIT", 2)
    datasets.Dataset.from_dict({"text": [play(n, 150) for n in PLAYS]}).save_to_disk(str(tmp_path / "saved"))
    for n in (1, 2):
        m = prepare_corpus(None, str(tmp_path / f"hf{n}"), hf_dataset=str(tmp_path / "saved"), num_workers=n, **FAST)
    assert m["units"] == 3 and _files(tmp_path / "hf1") == _files(tmp_path / "hf2")


def _prepare_then_die(num_units, args, kwargs):
    """prepare_corpus(*args, **kwargs), SIGKILLing this process once `num_units` units are committed."""
    build, built = units._build_unit, []

    def build_then_die(ctx, unit):
        built.append(build(ctx, unit))
        if len(built) == num_units:
            os.kill(os.getpid(), signal.SIGKILL)
        return built[-1]

    units._build_unit = build_then_die
    prepare_corpus(*args, **kwargs)


def _killed_after(num_units, *args, **kwargs):
    """Runs `_prepare_then_die` in a fresh process (forkserver: this one may run JAX threads) and waits for it."""
    proc = multiprocessing.get_context("forkserver").Process(target=_prepare_then_die, args=(num_units, args, kwargs))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL


def test_killed_preparation_resumes(plays, tmp_path, monkeypatch):
    """A run killed after 3 of 6 units resumes: it builds only the other 3 and equals an uninterrupted run."""
    prepare_corpus(str(plays), str(tmp_path / "whole"), num_workers=1, **FAST)
    _killed_after(3, str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    partial = tmp_path / ".data.partial"
    assert not (tmp_path / "data").exists() and len(list((partial / "units").glob("unit-*.npz"))) == 3
    with pytest.raises(FileExistsError, match="other options"):
        prepare_corpus(str(plays), str(tmp_path / "data"), **dict(FAST, seed=1))

    built = []
    build = units._build_unit
    monkeypatch.setattr(units, "_build_unit", lambda ctx, unit: built.append(unit.index) or build(ctx, unit))
    prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    assert len(built) == 3 and not partial.exists()
    assert _files(tmp_path / "data") == _files(tmp_path / "whole")


def test_corrupt_or_empty_units_are_rebuilt(plays, tmp_path, monkeypatch):
    """Truncated, empty, bit-flipped and half-written (.tmp) units are detected and rebuilt; an exception after
    units were committed keeps them for the next run."""
    prepare_corpus(str(plays), str(tmp_path / "whole"), num_workers=1, **FAST)
    build = units._build_unit

    def fail_on_unit_4(ctx, unit):
        if unit.index == 4:
            raise RuntimeError("boom")
        return build(ctx, unit)

    monkeypatch.setattr(units, "_build_unit", fail_on_unit_4)
    with pytest.raises(RuntimeError, match="boom"):
        prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    committed = sorted((tmp_path / ".data.partial" / "units").glob("unit-*.npz"))
    assert [u.name for u in committed] == [f"unit-{i:06d}.npz" for i in range(4)]
    committed[0].write_bytes(committed[0].read_bytes()[:-100])  # truncated
    committed[1].write_bytes(b"")  # empty
    data = bytearray(committed[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside an array: its CRC no longer matches
    committed[2].write_bytes(bytes(data))
    (committed[3].parent / "unit-000005.npz.tmp").write_bytes(committed[3].read_bytes())  # half-written, never renamed

    built = []
    monkeypatch.setattr(units, "_build_unit", lambda ctx, unit: built.append(unit.index) or build(ctx, unit))
    prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    assert sorted(built) == [0, 1, 2, 4, 5]
    assert _files(tmp_path / "data") == _files(tmp_path / "whole")


def test_interrupted_preparation_leaves_nothing_behind(plays, tmp_path):
    """A preparation killed after 2 of 6 units, plus the `.data.tmp-*` folder an interrupted run of an earlier
    version left: the next run (as pretraining starts it: overwrite=True) reuses the committed units, removes
    the leftover, and leaves only the prepared folder."""
    _killed_after(2, str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    (tmp_path / ".data.tmp-abc123" / "train").mkdir(parents=True)
    prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, overwrite=True, **FAST)
    assert sorted(os.listdir(tmp_path)) == ["data", "plays"]
