"""`prepare_corpus` and its command line: defaults shared with configs/pretrain.py, skipped files, shards + manifest,
crash safety, HF datasets path; parts merged; the input fingerprint."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from prepare_setup import FAST, PLAYS, play

from configs.pretrain import get_config
from convbert.data import example_builder, prepare
from convbert.data.loader import PretrainingData, make_iterator
from convbert.data.prepare import merge_parts, prepare_corpus
from convbert.data.sources import DEMO_CORPUS_DIR
from convbert.tokenization import load_tokenizer


@pytest.fixture
def corpus(tmp_path):
    """Four good documents (one in a subfolder) plus an empty, a binary, a non-UTF-8 and a non-.txt file."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for name in ("hamlet", "macbeth", "tempest"):
        (root / f"{name}.txt").write_text(play(name))
    (root / "sub" / "othello.txt").write_text(play("othello"))
    (root / "empty.txt").write_text(" \n\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve.\n".encode("latin-1"))
    (root / "notes.md").write_text("ignored")
    return root


def _check_shards(out, manifest):
    total = 0
    for info in manifest["splits"].values():
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
    text.write_text("\n\n".join(play(n, 150) for n in ("hamlet", "lear", "macbeth")))
    out = tmp_path / "sp"
    m = prepare_corpus(
        str(text), str(out), tokenizer="sentencepiece", sp_vocab_size=300, blanks_separate_docs=True, eval_fraction=0
    )
    assert m["tokenizer"]["kind"] == "sentencepiece" and m["tokenizer"]["special_ids"]["cls"] == 2
    assert m["splits"]["train"]["documents"] > 3 and m["splits"]["eval"]["examples"] == 0
    assert (out / "spm.model").exists() and load_tokenizer(str(out)).kind == "sentencepiece"


def test_command_line_defaults_are_the_pretraining_configs():
    """`python -m convbert.data.prepare` and pretrain.py's own preparation (config.data) hold out, tokenize and cut
    the same way unless told otherwise."""
    out = subprocess.run(
        [sys.executable, "-m", "convbert.data.prepare", "--help"], capture_output=True, text=True
    ).stdout  # absl exits with 1 after --help
    blocks = re.findall(r"^ +--(?:\[no\])?(\w+):(.*?)(?=^ +--|\Z)", out, re.M | re.S)
    cli = {name: m[1] for name, text in blocks if (m := re.search(r"\(default: '([^']*)'\)", text))}
    config = get_config("small")
    shared = dict(config.data.to_dict(), max_seq_length=config.max_seq_length)
    for key in ("tokenizer", "sp_vocab_size", "builder_variant", "eval_fraction", "max_seq_length"):
        assert cli[key] == str(shared[key]) == str(prepare.DEFAULTS[key]), key
    assert shared["eval_fraction"] == 0.02


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

    docs = [play(n, 120) for n in ("hamlet", "lear", "tempest", "othello")]
    ds = datasets.Dataset.from_dict({"text": docs, "id": list(range(4))})
    ds.to_json(str(tmp_path / "docs.jsonl"))
    m = prepare_corpus(
        None,
        str(tmp_path / "hub"),
        hf_dataset="json",
        hf_data_files=str(tmp_path / "docs.jsonl"),
        eval_fraction=0.5,
        max_documents=3,
    )
    assert m["sources"]["hf_dataset"] == "json"
    assert (m["splits"]["train"]["documents"], m["splits"]["eval"]["documents"]) == (2, 1)
    ds.save_to_disk(str(tmp_path / "saved"))
    m2 = prepare_corpus(
        None, str(tmp_path / "disk"), hf_dataset=str(tmp_path / "saved"), eval_fraction=0.5, max_documents=3
    )
    assert m2["splits"] == m["splits"]
    with pytest.raises(ValueError, match="no column 'body'"):
        prepare_corpus(None, str(tmp_path / "bad"), hf_dataset=str(tmp_path / "saved"), hf_text_column="body")


def test_demo_corpus_is_default(tmp_path):
    m = prepare_corpus(None, str(tmp_path / "demo"), max_documents=2, eval_fraction=0)
    assert m["sources"]["inputs"] == [DEMO_CORPUS_DIR] and m["sources"]["files"] == 12
    assert m["splits"]["train"]["documents"] == 2


@pytest.fixture
def jsonl_files(tmp_path):
    """The six plays as rows of two JSON-lines files (a streamed dataset of two shards)."""
    import datasets

    paths = []
    for i, names in enumerate((PLAYS[:4], PLAYS[4:])):
        paths.append(str(tmp_path / f"docs-{i}.jsonl"))
        datasets.Dataset.from_dict({"text": [play(n, 150) for n in names]}).to_json(paths[-1])
    return paths


def _dataset(data_dir):
    """Every split's examples in the loader's order, and the first batches of a shuffled loader."""
    rows = {
        s: np.stack([np.stack(list(src[i].values())) for i in range(len(src))])
        for s in ("train", "eval")
        for src in [PretrainingData(str(data_dir), s)]
    }
    it = make_iterator(str(data_dir), global_batch_size=4, seed=1, process_index=0, process_count=1)
    return rows, [next(it)["input_ids"] for _ in range(3)]


@pytest.mark.parametrize("source", ["files", pytest.param("streamed", marks=pytest.mark.slow)])
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
        counts = lambda m, split=split: {k: v for k, v in m["splits"][split].items() if k != "shards"}
        assert counts(merged) == counts(whole)
    rows_whole, batches_whole = _dataset(tmp_path / "whole")
    rows_merged, batches_merged = _dataset(tmp_path / "parts")
    for split in rows_whole:
        np.testing.assert_array_equal(rows_merged[split], rows_whole[split])
    np.testing.assert_array_equal(np.stack(batches_merged), np.stack(batches_whole))
    assert load_tokenizer(str(tmp_path / "parts")).vocab_size == 30522


def test_fingerprint_follows_the_inputs(plays, tmp_path):
    """The manifest's fingerprint is what `prepare_corpus` computes for the same inputs and options; a changed file,
    another input or another option each show up in `fingerprint_changes`."""
    m = prepare_corpus(str(plays), str(tmp_path / "data"), num_workers=1, **FAST)
    same = prepare.fingerprint(str(plays), num_workers=2, **FAST)  # workers do not change the output
    assert m["fingerprint"] == same and prepare.fingerprint_changes(m["fingerprint"], same) == []
    with open(plays / "hamlet.txt", "a") as f:
        f.write("One more line.\n")
    changes = prepare.fingerprint_changes(m["fingerprint"], prepare.fingerprint(str(plays), **dict(FAST, seed=1)))
    assert changes[0] == "seed: 0 -> 1" and re.fullmatch(
        rf"input {plays}: 6 files of [\d,]+ bytes -> 6 files of "
        r"[\d,]+ bytes",
        changes[1],
    ), changes
    other = prepare.fingerprint(str(plays / "hamlet.txt"), **FAST)
    assert prepare.fingerprint_changes(m["fingerprint"], other) == [
        f"input {plays} no longer used",
        f"input {plays / 'hamlet.txt'} added",
    ]
