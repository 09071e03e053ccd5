"""`prepare_corpus` and its command line: defaults shared with configs/pretrain.py, skipped files, shards + manifest,
crash safety, HF datasets path; the same bytes for any number of workers, parts merged, resume after a kill, corrupt
units rebuilt."""

import glob
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from configs.pretrain import get_config
from convbert.data import example_builder, prepare
from convbert.data.loader import PretrainingData, make_iterator
from convbert.data.prepare import DEMO_CORPUS_DIR, merge_parts, prepare_corpus
from convbert.tokenization import load_tokenizer

def _play(name, num_lines=400):
    with open(os.path.join(DEMO_CORPUS_DIR, name + ".txt")) as f:
        return "".join(f.readlines()[:num_lines])


@pytest.fixture
def corpus(tmp_path):
    """Four good documents (one in a subfolder) plus an empty, a binary, a non-UTF-8 and a non-.txt file."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for name in ("hamlet", "macbeth", "tempest"):
        (root / f"{name}.txt").write_text(_play(name))
    (root / "sub" / "othello.txt").write_text(_play("othello"))
    (root / "empty.txt").write_text(" \n\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve.\n".encode("latin-1"))
    (root / "notes.md").write_text("ignored")
    return root


def _check_shards(out, manifest):
    total = 0
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            arr = np.load(out / shard["file"], mmap_mode="r")
            assert arr.shape == (shard["examples"], 3, manifest["max_seq_length"]) and arr.dtype == np.uint16
            assert (arr[:, 0, 0] == 101).all() and (arr[:, 1].sum(1) >= 2).all()
            total += len(arr)
        assert sum(s["examples"] for s in info["shards"]) == info["examples"]
    return total


def test_prepare_corpus(corpus, tmp_path):
    out = tmp_path / "data"
    m = prepare_corpus(str(corpus), str(out), num_shards=3, eval_fraction=0.25, max_seq_length=64)
    assert json.loads((out / "manifest.json").read_text()) == m
    assert {r: v["count"] for r, v in m["skipped_files"].items()} == dict(empty=1, binary=1, non_utf8=1)
    assert m["sources"]["files"] == 4 and m["builder_variant"] == "electra" and m["max_seq_length"] == 64
    assert m["tokenizer"]["kind"] == "wordpiece" and m["tokenizer"]["special_ids"]["mask"] == 103
    assert (m["splits"]["train"]["documents"], m["splits"]["eval"]["documents"]) == (3, 1)
    assert len(m["splits"]["train"]["shards"]) == 3 and m["splits"]["eval"]["examples"] > 0
    assert _check_shards(out, m) == m["splits"]["train"]["examples"] + m["splits"]["eval"]["examples"]
    assert (out / "vocab.txt").exists() and load_tokenizer(str(out)).vocab_size == 30522
    assert not glob.glob(str(tmp_path / ".data.tmp-*"))

    again = tmp_path / "again"
    prepare_corpus([str(corpus)], str(again), num_shards=3, eval_fraction=0.25, max_seq_length=64)
    for shard in m["splits"]["train"]["shards"]:
        assert (out / shard["file"]).read_bytes() == (again / shard["file"]).read_bytes()
    with pytest.raises(FileExistsError, match="again"):
        prepare_corpus(str(corpus), str(again))
    m = prepare_corpus(str(corpus), str(again), builder_variant="convbert_repo", overwrite=True)
    assert m["builder_variant"] == "convbert_repo"
    assert m["splits"]["train"]["two_segment_examples"] < 0.2 * m["splits"]["train"]["examples"]


def test_prepare_sentencepiece_and_blank_separated_docs(tmp_path):
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join(_play(n, 150) for n in ("hamlet", "lear", "macbeth")))
    out = tmp_path / "sp"
    m = prepare_corpus(str(text), str(out), tokenizer="sentencepiece", sp_vocab_size=300, blanks_separate_docs=True,
                       eval_fraction=0)
    assert m["tokenizer"]["kind"] == "sentencepiece" and m["tokenizer"]["special_ids"]["cls"] == 2
    assert m["splits"]["train"]["documents"] > 3 and m["splits"]["eval"]["examples"] == 0
    assert (out / "spm.model").exists() and load_tokenizer(str(out)).kind == "sentencepiece"


def test_command_line_defaults_are_the_pretraining_configs():
    """`python -m convbert.data.prepare` and pretrain.py's own preparation (config.data) hold out, tokenize and cut
    the same way unless told otherwise."""
    out = subprocess.run([sys.executable, "-m", "convbert.data.prepare", "--help"], capture_output=True,
                         text=True).stdout  # absl exits with 1 after --help
    blocks = re.findall(r"^ +--(?:\[no\])?(\w+):(.*?)(?=^ +--|\Z)", out, re.M | re.S)
    cli = {name: m[1] for name, text in blocks if (m := re.search(r"\(default: '([^']*)'\)", text))}
    config = get_config("small")
    shared = dict(config.data.to_dict(), max_seq_length=config.max_seq_length)
    for key in ("tokenizer", "sp_vocab_size", "builder_variant", "eval_fraction", "max_seq_length"):
        assert cli[key] == str(shared[key]) == str(prepare.DEFAULTS[key]), key
    assert shared["eval_fraction"] == 0.02


def test_missing_input_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="/no/such/corpus"):
        prepare_corpus(["/no/such/corpus"], str(tmp_path / "out"))


def test_crash_leaves_no_output(corpus, tmp_path, monkeypatch):
    calls = []

    def failing_add_line(self, ids):
        calls.append(1)
        if len(calls) > 50:
            raise RuntimeError("boom")

    monkeypatch.setattr(example_builder.ExampleBuilder, "add_line", failing_add_line)
    with pytest.raises(RuntimeError, match="boom"):
        prepare_corpus(str(corpus), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["corpus"]


def test_hf_dataset_path(tmp_path):
    import datasets
    docs = [_play(n, 120) for n in ("hamlet", "lear", "tempest", "othello")]
    ds = datasets.Dataset.from_dict({"text": docs, "id": list(range(4))})
    ds.to_json(str(tmp_path / "docs.jsonl"))
    m = prepare_corpus(None, str(tmp_path / "hub"), hf_dataset="json", hf_data_files=str(tmp_path / "docs.jsonl"),
                       eval_fraction=0.5, max_documents=3)
    assert m["sources"]["hf_dataset"] == "json"
    assert (m["splits"]["train"]["documents"], m["splits"]["eval"]["documents"]) == (2, 1)
    ds.save_to_disk(str(tmp_path / "saved"))
    m2 = prepare_corpus(None, str(tmp_path / "disk"), hf_dataset=str(tmp_path / "saved"), eval_fraction=0.5,
                        max_documents=3)
    assert m2["splits"] == m["splits"]
    with pytest.raises(ValueError, match="no column 'body'"):
        prepare_corpus(None, str(tmp_path / "bad"), hf_dataset=str(tmp_path / "saved"), hf_text_column="body")


def test_demo_corpus_is_default(tmp_path):
    m = prepare_corpus(None, str(tmp_path / "demo"), max_documents=2, eval_fraction=0)
    assert m["sources"]["inputs"] == [DEMO_CORPUS_DIR] and m["sources"]["files"] == 12
    assert m["splits"]["train"]["documents"] == 2


# Parallel, multi-part and resumable preparation.

PLAYS = ("hamlet", "lear", "macbeth", "othello", "tempest", "twelfth_night")
FAST = dict(max_seq_length=64, eval_fraction=0.25, num_shards=3, unit_mb=1e-3)  # unit_mb: one unit per file


@pytest.fixture
def plays(tmp_path):
    """Six short plays, one file each (six units with FAST)."""
    root = tmp_path / "plays"
    root.mkdir()
    for name in PLAYS:
        (root / f"{name}.txt").write_text(_play(name, 150))
    return root


@pytest.fixture
def jsonl_files(tmp_path):
    """The six plays as rows of two JSON-lines files (a streamed dataset of two shards)."""
    import datasets
    paths = []
    for i, names in enumerate((PLAYS[:4], PLAYS[4:])):
        paths.append(str(tmp_path / f"docs-{i}.jsonl"))
        datasets.Dataset.from_dict({"text": [_play(n, 150) for n in names]}).to_json(paths[-1])
    return paths


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


def _dataset(data_dir):
    """Every split's examples in the loader's order, and the first batches of a shuffled loader."""
    rows = {s: np.stack([np.stack(list(src[i].values())) for i in range(len(src))])
            for s in ("train", "eval") for src in [PretrainingData(str(data_dir), s)]}
    it = make_iterator(str(data_dir), global_batch_size=4, seed=1, process_index=0, process_count=1)
    return rows, [next(it)["input_ids"] for _ in range(3)]


def test_workers_do_not_change_the_bytes(plays, tmp_path, monkeypatch):
    """1 and 2 workers write identical folders, from files (six units) and from a saved dataset (three)."""
    import datasets
    one = prepare_corpus(str(plays), str(tmp_path / "one"), num_workers=1, **FAST)
    prepare_corpus(str(plays), str(tmp_path / "two"), num_workers=2, **FAST)
    assert one["units"] == 6 and one["splits"]["eval"]["documents"] == 2
    assert _files(tmp_path / "one") == _files(tmp_path / "two")

    monkeypatch.setattr(prepare, "HF_ROWS_PER_UNIT", 2)
    datasets.Dataset.from_dict({"text": [_play(n, 150) for n in PLAYS]}).save_to_disk(str(tmp_path / "saved"))
    for n in (1, 2):
        m = prepare_corpus(None, str(tmp_path / f"hf{n}"), hf_dataset=str(tmp_path / "saved"), num_workers=n, **FAST)
    assert m["units"] == 3 and _files(tmp_path / "hf1") == _files(tmp_path / "hf2")


@pytest.mark.parametrize("source", ["files", "streamed"])
def test_parts_merged_equal_one_run(plays, jsonl_files, tmp_path, source):
    """Two parts (files: three units each; streamed: one shard each) + merge = one run, as the loader reads it."""
    args = (str(plays),) if source == "files" else (None,)
    kwargs = dict(FAST, **({} if source == "files" else dict(hf_dataset="json", hf_data_files=jsonl_files)))
    whole = prepare_corpus(*args, str(tmp_path / "whole"), num_workers=2, **kwargs)
    with pytest.raises(FileNotFoundError, match="no part"):
        merge_parts(str(tmp_path / "parts"))
    first = prepare_corpus(*args, str(tmp_path / "parts"), part=0, num_parts=2, num_workers=1, **kwargs)
    assert first["units"] == whole["units"] // 2
    assert (tmp_path / "parts" / "part-00000-of-00002" / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="part-00001-of-00002"):
        merge_parts(str(tmp_path / "parts"))
    prepare_corpus(*args, str(tmp_path / "parts"), part=1, num_parts=2, num_workers=1, **kwargs)
    merged = merge_parts(str(tmp_path / "parts"))
    assert merged["parts"] == ["part-00000-of-00002", "part-00001-of-00002"]
    for split in ("train", "eval"):
        counts = lambda m: {k: v for k, v in m["splits"][split].items() if k != "shards"}
        assert counts(merged) == counts(whole)
    rows_whole, batches_whole = _dataset(tmp_path / "whole")
    rows_merged, batches_merged = _dataset(tmp_path / "parts")
    for split in rows_whole:
        np.testing.assert_array_equal(rows_merged[split], rows_whole[split])
    np.testing.assert_array_equal(np.stack(batches_merged), np.stack(batches_whole))
    assert load_tokenizer(str(tmp_path / "parts")).vocab_size == 30522


def _prepare_then_die(num_units, args, kwargs):
    """prepare_corpus(*args, **kwargs), SIGKILLing this process once `num_units` units are committed."""
    build, built = prepare._build_unit, []

    def build_then_die(ctx, unit):
        built.append(build(ctx, unit))
        if len(built) == num_units:
            os.kill(os.getpid(), signal.SIGKILL)
        return built[-1]

    prepare._build_unit = build_then_die
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
    build = prepare._build_unit
    monkeypatch.setattr(prepare, "_build_unit", lambda ctx, unit: built.append(unit.index) or build(ctx, unit))
    prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    assert len(built) == 3 and not partial.exists()
    assert _files(tmp_path / "data") == _files(tmp_path / "whole")


def test_corrupt_or_empty_units_are_rebuilt(plays, tmp_path, monkeypatch):
    """Truncated, empty, bit-flipped and half-written (.tmp) units are detected and rebuilt; an exception after
    units were committed keeps them for the next run."""
    prepare_corpus(str(plays), str(tmp_path / "whole"), num_workers=1, **FAST)
    build = prepare._build_unit

    def fail_on_unit_4(ctx, unit):
        if unit.index == 4:
            raise RuntimeError("boom")
        return build(ctx, unit)

    monkeypatch.setattr(prepare, "_build_unit", fail_on_unit_4)
    with pytest.raises(RuntimeError, match="boom"):
        prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    units = sorted((tmp_path / ".data.partial" / "units").glob("unit-*.npz"))
    assert [u.name for u in units] == [f"unit-{i:06d}.npz" for i in range(4)]
    units[0].write_bytes(units[0].read_bytes()[:-100])  # truncated
    units[1].write_bytes(b"")  # empty
    data = bytearray(units[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside an array: its CRC no longer matches
    units[2].write_bytes(bytes(data))
    (units[3].parent / "unit-000005.npz.tmp").write_bytes(units[3].read_bytes())  # half-written, never renamed

    built = []
    monkeypatch.setattr(prepare, "_build_unit", lambda ctx, unit: built.append(unit.index) or build(ctx, unit))
    prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    assert sorted(built) == [0, 1, 2, 4, 5]
    assert _files(tmp_path / "data") == _files(tmp_path / "whole")


# Hostile inputs (issue 14): over-long lines, invalid bytes, leftovers of interrupted runs.

LONG_LINE = """
import json, os, resource, sys
import numpy as np
from convbert.data.prepare import prepare_corpus
root, mb = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(0)
words = np.array("the king and queen of england spoke to his lords about war peace honour love death night".split())
with open(os.path.join(root, "small.txt"), "w") as f:
    f.write(" ".join(rng.choice(words, 20_000)) + ".\\n")
with open(os.path.join(root, "big.txt"), "w") as f:  # one line of `mb` MB, a sentence end after every "love"
    while f.tell() < mb * 1e6:
        f.write(" ".join(rng.choice(words, 100_000)).replace("love ", "love. ") + " ")
prepare_corpus(os.path.join(root, "small.txt"), os.path.join(root, "small"), eval_fraction=0, num_workers=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB: imports, tokenizer, one small preparation
m = prepare_corpus(os.path.join(root, "big.txt"), os.path.join(root, "big"), eval_fraction=0, num_workers=1)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(dict(grown_mb=grown / 1024, long_lines=m["long_lines"]["count"], **m["splits"]["train"])))
"""


def test_long_line_is_cut_into_sentences_in_bounded_memory(tmp_path):
    """A 10 MB file without a newline (issue 14: 50 MB cost 8.6 GB and became one 128-token example): it is read
    in pieces of max_line_chars and cut at sentence ends, counted; the peak memory of the process preparing it
    grows by far less than the file's tokenizer output (1.2 GB before this change for this file)."""
    done = subprocess.run([sys.executable, "-c", LONG_LINE, str(tmp_path), "10"], capture_output=True, text=True,
                          timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["long_lines"] == 1 and out["lines"] > 50_000 and out["grown_mb"] < 150, out
    assert out["examples"] > 0.9 * out["text_tokens"] / 128, out  # the text is used, not one truncated line


def test_a_few_invalid_bytes_are_replaced_and_counted(tmp_path):
    """A 170 KB text with one invalid byte is read (the byte as U+FFFD, counted) rather than dropped whole;
    strict_utf8 keeps the old behaviour (skipped as non_utf8); a file that is mostly another encoding is skipped
    either way."""
    root = tmp_path / "corpus"
    root.mkdir()
    text = (_play("hamlet", 10_000) + _play("othello", 10_000)).encode()
    assert len(text) > 160_000
    (root / "hamlet.txt").write_bytes(text[:80_000] + b"\xff" + text[80_000:])
    (root / "macbeth.txt").write_text(_play("macbeth"))
    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve.\n".encode("latin-1"))
    m = prepare_corpus(str(root), str(tmp_path / "lenient"), eval_fraction=0, max_seq_length=64)
    assert m["replaced_utf8"] == dict(files=1, bytes=1, paths=[str(root / "hamlet.txt")])
    assert m["skipped_files"]["non_utf8"] == dict(count=1, paths=[str(root / "latin1.txt")])
    assert m["splits"]["train"]["documents"] == 2
    strict = prepare_corpus(str(root), str(tmp_path / "strict"), eval_fraction=0, max_seq_length=64, strict_utf8=True)
    assert strict["skipped_files"]["non_utf8"]["count"] == 2 and strict["splits"]["train"]["documents"] == 1
    assert strict["replaced_utf8"]["files"] == 0


def test_interrupted_preparation_leaves_nothing_behind(plays, tmp_path):
    """A preparation killed after 2 of 6 units, plus the `.data.tmp-*` folder an interrupted run of an earlier
    version left: the next run (as pretraining starts it: overwrite=True) reuses the committed units, removes
    the leftover, and leaves only the prepared folder."""
    _killed_after(2, str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    (tmp_path / ".data.tmp-abc123" / "train").mkdir(parents=True)
    prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, overwrite=True, **FAST)
    assert sorted(os.listdir(tmp_path)) == ["data", "plays"]


def test_fingerprint_follows_the_inputs(plays, tmp_path):
    """The manifest's fingerprint is what `prepare_corpus` computes for the same inputs and options; a changed file,
    another input or another option each show up in `fingerprint_changes`."""
    m = prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    same = prepare.fingerprint(str(plays), num_workers=2, **FAST)  # workers do not change the output
    assert m["fingerprint"] == same and prepare.fingerprint_changes(m["fingerprint"], same) == []
    with open(plays / "hamlet.txt", "a") as f:
        f.write("One more line.\n")
    changes = prepare.fingerprint_changes(m["fingerprint"], prepare.fingerprint(str(plays), **dict(FAST, seed=1)))
    assert changes[0] == "seed: 0 -> 1" and re.fullmatch(rf"input {plays}: 6 files of [\d,]+ bytes -> 6 files of "
                                                         r"[\d,]+ bytes", changes[1]), changes
    other = prepare.fingerprint(str(plays / "hamlet.txt"), **FAST)
    assert prepare.fingerprint_changes(m["fingerprint"], other) == [f"input {plays} no longer used",
                                                                    f"input {plays / 'hamlet.txt'} added"]
