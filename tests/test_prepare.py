"""Tokenizers (special ids) and `prepare_corpus`: skipped files, shards + manifest, crash safety, HF datasets path."""

import glob
import json
import os

import numpy as np
import pytest

from convbert.assets import BERT_UNCASED_VOCAB
from convbert.data import example_builder
from convbert.data.prepare import DEMO_CORPUS_DIR, prepare_corpus
from convbert.data.text_tokenizer import WordPieceTokenizer, load_text_tokenizer, train_sentencepiece

SPECIALS_TEXT = "[CLS] To be, or not to be [MASK] [SEP] [PAD] [UNK] that is the question"


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


def test_wordpiece_special_ids():
    tok = WordPieceTokenizer(BERT_UNCASED_VOCAB)
    assert tok.kind == "wordpiece" and tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    ids = tok.encode_batch([SPECIALS_TEXT, "Hello WORLD", ""])
    assert not set(ids[0]) & {0, 100, 101, 102, 103}
    assert ids[1] == [7592, 2088] and ids[2] == []


def test_sentencepiece_reserved_ids(tmp_path):
    tok = train_sentencepiece([os.path.join(DEMO_CORPUS_DIR, "hamlet.txt")], str(tmp_path / "sp"), vocab_size=400)
    assert tok.kind == "sentencepiece" and tok.lowercase and tok.vocab_size <= 400
    assert tok.special_ids == dict(pad=0, unk=1, cls=2, sep=3, mask=4)
    ids = tok.encode_batch([SPECIALS_TEXT, "HAMLET hamlet"])
    assert not set(ids[0]) & {0, 1, 2, 3, 4}
    assert ids[1][: len(ids[1]) // 2] == ids[1][len(ids[1]) // 2:]  # lowercased
    files = tok.save(str(tmp_path / "saved"))
    assert sorted(map(os.path.basename, files)) == ["sp.model", "text_tokenizer.json"]
    assert load_text_tokenizer(str(tmp_path / "saved")).encode_batch([SPECIALS_TEXT]) == ids[:1]


def test_missing_tokenizer_file():
    with pytest.raises(FileNotFoundError, match="/no/such/vocab.txt"):
        WordPieceTokenizer("/no/such/vocab.txt")


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
    assert (out / "bert-base-uncased-vocab.txt").exists() and load_text_tokenizer(str(out)).vocab_size == 30522
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
    assert (out / "spm.model").exists() and load_text_tokenizer(str(out)).kind == "sentencepiece"


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
