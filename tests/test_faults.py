"""Faults of shared clusters (issue 23, docs/faults.md): one run per output folder (`convbert.workdir_lock`),
preemption that exits with its own code (`convbert.faults`), preparation workers that end with their parent."""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
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
from convbert import distributed, faults, hf_io, pretraining, workdir_lock
from convbert.ablation.results import read_metrics
from convbert.data import loader
from convbert.data.prepare import prepare_corpus
from convbert.glue import data as glue_data
from convbert.metric_writer import MetricWriter
from convbert.tokenization import train_sentencepiece

HOLD = (
    "import sys, time\n"
    "from convbert import workdir_lock\n"
    "lock = workdir_lock.hold(sys.argv[1], lock_file=(sys.argv[2:] or [None])[0])\n"
    "lock.__enter__()\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


def holder(folder, lock_file=None) -> subprocess.Popen:
    """A process holding `folder` (until killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), *([str(lock_file)] if lock_file else [])],
        cwd=setup.REPO,
        env=setup.subprocess_env(1),
        stdout=subprocess.PIPE,
    )
    assert proc.stdout.readline() == b"held\n"
    return proc


def test_a_live_holder_refuses_a_second_run_and_a_killed_one_does_not(tmp_path, caplog):
    """Two runs on one workdir: the second is refused, naming the folder, host and pid of the first; after kill -9
    of the first (its lock file left behind), a restart takes the lock over with a warning."""
    proc = holder(tmp_path)
    try:
        with pytest.raises(faults.WorkdirLocked) as refused, workdir_lock.hold(str(tmp_path)):
            pass
        assert f"{tmp_path} is in use by -c (host {socket.gethostname()}, pid {proc.pid}, started " in str(
            refused.value
        )
        assert refused.value.exit_code == 73
    finally:
        proc.kill()
        proc.wait()
    assert os.path.isfile(tmp_path / workdir_lock.LOCK_NAME)  # left by the killed holder
    with caplog.at_level("WARNING"), workdir_lock.hold(str(tmp_path)):
        record = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
    assert f"pid {proc.pid}" in caplog.text and "no longer holds it" in caplog.text
    assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_a_parent_holding_its_folder_starts_children_on_subfolders(tmp_path):
    with workdir_lock.hold(str(tmp_path)), workdir_lock.hold(str(tmp_path)):  # nested in one process: allowed
        proc = holder(tmp_path / "variant" / "pretrain")  # a child locks its own subfolder
        proc.kill()
        proc.wait()


def test_another_hosts_lock_is_refused_while_its_heartbeat_is_fresh(tmp_path, monkeypatch):
    """A lock file written on another host (whose flock this host may not see): refused while its heartbeat is
    younger than the lease, taken over after."""
    record = dict(host="other-host", pid=1, started="2026-01-01T00:00:00+00:00", command="pretrain.py")
    lock = tmp_path / workdir_lock.LOCK_NAME
    lock.write_text(json.dumps(dict(record, heartbeat=time.time())))
    with (
        pytest.raises(faults.WorkdirLocked, match=r"pretrain\.py \(host other-host, pid 1,"),
        workdir_lock.hold(str(tmp_path)),
    ):
        pass
    lock.write_text(json.dumps(dict(record, heartbeat=time.time() - workdir_lock.LEASE_S - 1)))
    with workdir_lock.hold(str(tmp_path)):
        assert json.loads(lock.read_text())["host"] == socket.gethostname()


def test_the_heartbeat_is_renewed(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock, "LEASE_S", 0.2)
    with workdir_lock.hold(str(tmp_path)):
        first = json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads((tmp_path / workdir_lock.LOCK_NAME).read_text())["heartbeat"] > first


class FakeStore:
    """An object store with Cloud Storage's generation preconditions (the PyPI emulator gcp-storage-emulator
    ignores `ifGenerationMatch`, so `GcsStore`'s protocol is tested on this)."""

    def __init__(self):
        self.object, self.generation, self.updated = None, 0, 0.0

    def _put(self, text):
        self.object, self.generation, self.updated = text, self.generation + 1, time.time()
        return self.generation

    def create(self, text):  # if_generation_match=0: only if absent
        return self._put(text) if self.object is None else None

    def replace(self, text, generation):
        return self._put(text) if self.object is not None and generation == self.generation else None

    def read(self):
        return None if self.object is None else (self.object, self.generation, self.updated)

    def delete(self, generation):
        if generation == self.generation:
            self.object = None


def test_object_store_lock_creates_if_absent_and_takes_over_an_expired_lease(monkeypatch):
    store = FakeStore()
    with workdir_lock.hold("gs://bucket/run", store=store):
        assert json.loads(store.object)["pid"] == os.getpid()
        # a second run (another process on another host) is refused while the lease is fresh
        monkeypatch.setattr(socket, "gethostname", lambda: "other-host")
        monkeypatch.setattr(workdir_lock, "_held", {})
        with (
            pytest.raises(faults.WorkdirLocked, match=r"gs://bucket/run/ is in use by"),
            workdir_lock.hold("gs://bucket/run/", store=store),
        ):
            pass
        monkeypatch.undo()
    assert store.object is None  # released

    store.create(json.dumps(dict(host="lost", pid=1, started="", command="pretrain.py", heartbeat=0.0)))
    store.updated -= workdir_lock.LEASE_S + 1  # a lost host's lease ran out
    stale = store.generation
    with workdir_lock.hold("gs://bucket/run", store=store):
        assert json.loads(store.object)["host"] == socket.gethostname()
        assert store.replace("a racing run", stale) is None  # the other racer's takeover fails


def test_a_regular_file_as_workdir_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file is not a directory"), workdir_lock.hold(str(tmp_path / "file")):
        pass


def test_a_second_preparation_is_refused_before_it_writes(tmp_path):
    """Two `python -m convbert.data.prepare` on one output folder: the second stops before writing anything."""
    proc = holder(tmp_path / "data", tmp_path / ".data.lock")
    try:
        with pytest.raises(faults.WorkdirLocked, match=f"{tmp_path / 'data'} is in use by"):
            prepare_corpus(None, str(tmp_path / "data"))
    finally:
        proc.kill()
        proc.wait()
    assert sorted(os.listdir(tmp_path)) == [".data.lock"]


def wait_for_steps(workdir: str, proc: subprocess.Popen, log) -> None:
    deadline = time.time() + 400
    while not os.path.isfile(os.path.join(workdir, "metrics.jsonl")) or not setup.losses(workdir):
        assert proc.poll() is None and time.time() < deadline, Path(log).read_text()[-3000:]
        time.sleep(0.5)


@background.fixture
def two_pretrainings():
    """A pretrain.py on a workdir, a second pretrain.py started on it once the first logs its steps, then SIGTERM
    to the first: {'workdir', 'first': (pid, exit code, log), 'second': the second's process, 'starts': the number
    of starts config.json records after the second}."""
    root = background.directory("two_pretrainings")
    workdir, log = os.path.join(root, "run"), os.path.join(root, "first.log")
    command = [sys.executable, "pretrain.py", f"--workdir={workdir}"]
    flags = setup.cli_flags(num_train_steps=100_000, checkpoint_every_steps=100_000)
    with open(log, "w") as out:
        first = subprocess.Popen(
            command + flags, cwd=setup.REPO, env=setup.subprocess_env(1), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_steps(workdir, first, log)
        second = subprocess.run(
            command + setup.cli_flags(seed=1),
            cwd=setup.REPO,
            env=setup.subprocess_env(1),
            capture_output=True,
            text=True,
            timeout=300,
        )
        starts = len(json.loads(Path(workdir, "config.json").read_text())["starts"])
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=300)
    finally:
        first.kill()
    return {
        "workdir": workdir,
        "first": (first.pid, first.returncode, Path(log).read_text()),
        "second": second,
        "starts": starts,
    }


@pytest.mark.slow
def test_a_second_pretraining_is_refused_and_sigterm_exits_75(two_pretrainings):
    """Two pretrain.py on one workdir (issue 23 case 1, `two_pretrainings`): the second exits 73 naming the first,
    having written nothing. SIGTERM (case 2) stops the first with a checkpoint and exit code 75, not 0."""
    workdir, second = two_pretrainings["workdir"], two_pretrainings["second"]
    pid, returncode, text = two_pretrainings["first"]
    assert second.returncode == 73, second.stderr[-3000:]
    assert second.stderr.splitlines()[-1].startswith(
        f"pretrain.py: WorkdirLocked: {workdir} is in use by pretrain.py (host {socket.gethostname()}, "
        f"pid {pid}, started "
    )
    assert two_pretrainings["starts"] == 1
    assert returncode == faults.Preempted.exit_code == 75, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith("pretrain.py: Preempted: stopped for preemption at step "), last
    assert f"after saving checkpoint {workdir}/checkpoints/" in last


# ---- a full disk (case 4) ----------------------------------------------------------------------------------------


class FullDisk:
    """A file that takes half of the next write, then fails with ENOSPC (a disk that filled up mid-record)."""

    def __init__(self, file):
        self.file = file

    def write(self, text):
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, "No space left on device", self.file.name)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_full_disk_is_one_line_and_tears_no_record_for_good(tmp_path, caplog, capsys):
    path = str(tmp_path / "metrics.jsonl")
    writer = MetricWriter(str(tmp_path), enabled=True)
    writer.write_scalars(1, {"train/loss": 1.0})
    writer.flush()
    writer._jsonl = FullDisk(writer._jsonl)

    def main(argv):
        try:
            writer.write_scalars(2, {"train/loss": 2.0})
        finally:
            writer._jsonl.file.close()
            writer.close()  # raises again ("I/O operation on closed file"): the ENOSPC is in its context

    with pytest.raises(SystemExit) as stopped:
        faults.exits_on_fault(main)([])
    assert stopped.value.code == faults.OutOfSpace.exit_code == 74
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and f"OutOfSpace: no space left on the device writing {path} (" in line
    assert re.search(r"\([\d,.]+ MiB free there\)", line)
    assert Path(path).read_text().split("\n")[1].startswith('{"step": 2, "time": ')  # torn mid-record

    assert read_metrics(path) == {1: {"step": 1, "time": pytest.approx(time.time(), abs=60), "train/loss": 1.0}}
    assert "metrics.jsonl line 2: skipped a torn record" in caplog.text
    resumed = MetricWriter(str(tmp_path), enabled=True)  # the restart drops the torn line before appending
    resumed.write_scalars(2, {"train/loss": 2.5})
    resumed.close()
    assert "dropped a torn last record" in caplog.text
    assert [r["train/loss"] for r in read_metrics(path).values()] == [1.0, 2.5]


def test_sentencepiece_training_on_a_full_disk_names_the_space(tmp_path, monkeypatch):
    import sentencepiece as spm

    def full(**kwargs):
        raise RuntimeError("INTERNAL: src/trainer_interface.cc(783) [ok]")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 30, 1 << 30, 4096))
    (tmp_path / "text.txt").write_text("some text\n")
    with pytest.raises(faults.OutOfSpace, match=rf"training SentencePiece into {tmp_path}/sp\.model \(0\.0 MiB free"):
        train_sentencepiece([str(tmp_path / "text.txt")], str(tmp_path / "sp"))


# ---- errors that name the file (case 5) --------------------------------------------------------------------------


@pytest.fixture
def data_copy(tmp_path):
    shutil.copytree(setup.demo_data_dir(), tmp_path / "data")
    return tmp_path / "data"


def test_a_corrupted_shard_is_named_not_taken_for_divergence(data_copy, caplog):
    """A shard overwritten with out-of-range token ids: its checksum names it on the first read (before: a
    non-finite loss and advice to lower the learning rate); a manifest without checksums (older versions) loads
    with a note, and the range check names the shard and row."""
    manifest = json.loads((data_copy / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    assert len(shard["sha256"]) == 64
    loader.PretrainingData(str(data_copy))  # verified once, remembered
    assert shard["file"] in json.loads((data_copy / loader.VERIFIED).read_text())
    array = np.load(data_copy / shard["file"], mmap_mode="r+")
    array[3, 0, 5] = 65535  # input_ids of row 3: outside the 30,522-entry vocabulary
    array.flush()
    del array
    with pytest.raises(ValueError, match=rf"{data_copy / shard['file']} is damaged: its sha256 differs"):
        loader.PretrainingData(str(data_copy))

    for s in manifest["splits"]["train"]["shards"]:
        del s["sha256"]
    (data_copy / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("INFO"):
        data = loader.PretrainingData(str(data_copy))
    assert "written before shards had checksums" in caplog.text
    data[2]
    with pytest.raises(ValueError, match=rf"{data_copy / shard['file']} row 3: token ids outside the vocabulary"):
        data[3]


def test_a_truncated_safetensors_file_is_named(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": np.zeros((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"^{path} cannot be read \(.*; 100 bytes\): it is truncated or damaged"):
        hf_io.read_weights(str(tmp_path))


def test_a_utf16_glue_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_text("sentence\tlabel\nit is good\t1\n", encoding="utf-16")
    with pytest.raises(ValueError, match=rf"^{path} line 1: not UTF-8 \(a UTF-16 byte-order mark fffe at column 1\)"):
        glue_data.read_tsv(str(path))
    path.write_bytes(b"sentence\tlabel\nit is good\t1\ncaf\xe9\t0\n")
    with pytest.raises(ValueError, match=rf"^{path} line 3: not UTF-8 \(byte e9 at column 4\)"):
        glue_data.read_tsv(str(path))


def test_a_regular_file_as_pretraining_workdir_is_not_a_directory(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(NotADirectoryError, match=rf"^{tmp_path / 'run'} is not a directory"):
        pretraining.train_and_evaluate(setup.tiny_config(), str(tmp_path / "run"))


# ---- multi-host coordination (case 7) ----------------------------------------------------------------------------

STALL = """
import sys, time
import jax
from convbert import distributed, faults

def main(argv):
    port, pid = argv[1], int(argv[2])
    timeouts = distributed.default_config()
    timeouts.shutdown_timeout_s = 3
    distributed.maybe_initialize(f"127.0.0.1:{port}", 2, pid, timeouts)
    jax.process_count()  # both processes are up
    if pid == 1:
        time.sleep(300)  # a stalled host
    distributed.barrier("after_setup", 2)

faults.exits_on_fault(main)(sys.argv)
"""


@pytest.mark.slow
def test_a_stalled_process_is_one_line_naming_the_barrier_and_its_timeout(tmp_path):
    """Two processes joined by jax.distributed; process 1 stalls before a barrier with a 2 s timeout: process 0
    stops with one line naming itself, the barrier and the key to raise, and exit code 69 (not SIGABRT)."""
    port = portpicker.pick_unused_port()
    env = setup.subprocess_env(1)
    stalled = subprocess.Popen(
        [sys.executable, "-c", STALL, str(port), "1"],
        cwd=setup.REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", STALL, str(port), "0"],
            cwd=setup.REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=200,
        )
    finally:
        stalled.kill()
        stalled.wait()
    assert done.returncode == faults.BarrierTimeout.exit_code == 69, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        "-c: BarrierTimeout: process 0 of 2: not every process reached barrier 'after_setup' within 2 s "
        "(config.distributed.barrier_timeout_s): a process stalled or was lost (see the other processes' logs), or "
        "is slower than that; raise --config.distributed.barrier_timeout_s for a slow host (JaxRuntimeError: "
        "DEADLINE_EXCEEDED: Barrier timed out)"
    )


def test_the_distributed_timeouts_are_config_keys(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
    config = setup.tiny_config()
    assert config.distributed.to_dict() == distributed.DEFAULTS
    config.distributed.heartbeat_timeout_s = 600
    distributed.maybe_initialize("127.0.0.1:1", 2, 0, config.distributed)
    assert calls == [
        (
            ("127.0.0.1:1", 2, 0),
            dict(initialization_timeout=300, heartbeat_timeout_seconds=600, shutdown_timeout_seconds=300),
        )
    ]


# ---- data preparation: children end with the parent (case 2) ------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (/proc)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = {int(c) for c in (task / "children").read_text().split()}
                todo += children - out
                out |= children
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # not a zombie
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_preparation_workers_end_with_their_parent(tmp_path, signum):
    """SIGTERM (or SIGKILL) to `python -m convbert.data.prepare` while its workers build units: every child process
    ends with it (before: the workers, forkserver and resource tracker lived on); SIGTERM exits 75 with one line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "convbert.data.prepare", f"--output_dir={tmp_path / 'data'}", "--num_workers=2"]
        + ["--unit_mb=0.01", "--max_seq_length=64"],
        cwd=setup.REPO,
        env=setup.subprocess_env(1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while len(children := descendants(proc.pid)) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    deadline = time.time() + 30
    while any(map(alive, children)) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(map(alive, children)), [p for p in children if alive(p)]
    if signum == signal.SIGTERM:
        assert proc.returncode == 75, err[-3000:]
        assert err.strip().splitlines()[-1] == (
            "prepare.py: Preempted: SIGTERM: stopped before finishing; run the same command again to resume"
        )
