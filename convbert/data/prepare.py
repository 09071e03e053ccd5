"""Builds sharded pretraining examples from raw text (spec 4.1, 5.1).

  python -m convbert.data.prepare --output_dir=/tmp/demo_data          # the bundled data/demo_corpus
  python -m convbert.data.prepare --input=corpus/,more.txt --output_dir=DIR --tokenizer=sentencepiece
  python -m convbert.data.prepare --hf_dataset=Skylion007/openwebtext --output_dir=DIR   # needs internet

Documents: one per input file (folders are searched recursively for *.txt; input files are shuffled with the
seed), or separated by blank lines with --blanks_separate_docs, or one per row of a Hugging Face dataset. Lines
are the builder's sentences. Empty, binary and non-UTF-8 files are skipped and counted. Every
round(1 / eval_fraction)-th document (starting with the second) goes to the `eval` split.

Output directory (written to a temporary sibling and renamed at the end, so it never looks complete early):
  manifest.json                      see `prepare_corpus`
  text_tokenizer.json, vocab/model   the tokenizer (`load_text_tokenizer(output_dir)`)
  {train,eval}/shard-XXXXX-of-YYYYY.npy   [n, 3, T] arrays (input_ids, input_mask, segment_ids), uint16 when
                                     the vocab fits, else int32; read with np.load(mmap_mode='r')
"""

from __future__ import annotations

import codecs
import datetime
import itertools
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from absl import app, flags, logging

from convbert.assets import BERT_UNCASED_VOCAB
from convbert.data.example_builder import FIELDS, VARIANTS, ExampleBuilder
from convbert.data.text_tokenizer import (SentencePieceTokenizer, TextTokenizer, WordPieceTokenizer,
                                          train_sentencepiece)

DEMO_CORPUS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "data", "demo_corpus")
FORMAT = "convbert-pretraining-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "eval")
SKIP_REASONS = ("empty", "binary", "non_utf8")


def find_text_files(inputs: Sequence[str]) -> list[str]:
    """Input files, with folders expanded to their *.txt files (sorted); a missing path raises FileNotFoundError."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                            for name in names if name.endswith(".txt"))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"input path not found: {path}")
    return files


def classify_file(path: str) -> str | None:
    """None for a readable text file, else the skip reason: 'empty', 'binary' (NUL bytes) or 'non_utf8'."""
    decoder, has_text = codecs.getincrementaldecoder("utf-8")(), False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if b"\0" in chunk:
                return "binary"
            try:
                has_text = bool(decoder.decode(chunk).strip()) or has_text
            except UnicodeDecodeError:
                return "non_utf8"
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "non_utf8"
    return None if has_text else "empty"


def _file_documents(files: Iterable[str], blanks_separate_docs: bool) -> Iterator[list[str]]:
    for path in files:
        doc = []
        with open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line := line.strip():
                    doc.append(line)
                elif blanks_separate_docs and doc:
                    yield doc
                    doc = []
        if doc:
            yield doc


def _hf_documents(name: str, config: str | None, split: str, text_column: str,
                  data_files: str | Sequence[str] | None) -> Iterator[list[str]]:
    """Rows of a Hub dataset (`datasets.load_dataset`) or of a folder written by `Dataset.save_to_disk`."""
    import datasets
    if any(os.path.isfile(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(name)
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    else:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files)
    if text_column not in ds.column_names:
        raise ValueError(f"dataset {name} has no column {text_column!r}; columns: {ds.column_names}")
    for batch in ds.select_columns([text_column]).iter(batch_size=1000):
        for text in batch[text_column]:
            if lines := [s for line in (text or "").splitlines() if (s := line.strip())]:
                yield lines


def _encode_documents(documents: Iterable[tuple[str, list[str]]], tokenizer: TextTokenizer,
                      lines_per_call: int = 8192) -> Iterator[tuple[str, list[list[int]]]]:
    """(split, token ids per line) per (split, lines) document; many documents share one `encode_batch` call."""
    def encode(docs):
        ids = iter(tokenizer.encode_batch([line for _, doc in docs for line in doc]))
        return [(split, list(itertools.islice(ids, len(doc)))) for split, doc in docs]

    pending, num_lines = [], 0
    for split, doc in documents:
        pending.append((split, doc))
        num_lines += len(doc)
        if num_lines >= lines_per_call:
            yield from encode(pending)
            pending, num_lines = [], 0
    yield from encode(pending)


class _ShardWriter:
    """Writes [3, T] examples round-robin into `num_shards` .npy files; appends raw rows, adds the header at close."""

    def __init__(self, root: str, split: str, num_shards: int, seq_len: int, dtype: np.dtype, chunk: int = 4096):
        os.makedirs(os.path.join(root, split))
        self.root, self.seq_len, self.dtype, self.chunk = root, seq_len, dtype, chunk
        self.files = [f"{split}/shard-{i:05d}-of-{num_shards:05d}.npy" for i in range(num_shards)]
        self.counts = [0] * num_shards
        self._written = 0
        self._buffers: list[list[np.ndarray]] = [[] for _ in range(num_shards)]

    def add(self, example: dict[str, np.ndarray]):
        i = self._written % len(self.files)
        self._written += 1
        self._buffers[i].append(np.stack([example[k] for k in FIELDS]).astype(self.dtype))
        self.counts[i] += 1
        if len(self._buffers[i]) >= self.chunk:
            self._flush(i)

    def _flush(self, i: int):
        with open(os.path.join(self.root, self.files[i] + ".raw"), "ab") as f:
            f.writelines(row.tobytes() for row in self._buffers[i])
        self._buffers[i] = []

    def close(self) -> list[dict]:
        for i, (file, count) in enumerate(zip(self.files, self.counts)):
            self._flush(i)
            path = os.path.join(self.root, file)
            with open(path, "wb") as out, open(path + ".raw", "rb") as raw:
                np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                           "fortran_order": False, "shape": (count, 3, self.seq_len)})
                shutil.copyfileobj(raw, out)
            os.remove(path + ".raw")
        return [{"file": f, "examples": c} for f, c in zip(self.files, self.counts)]


def prepare_corpus(inputs: str | Sequence[str] | None, output_dir: str, *, tokenizer: str = "wordpiece",
                   vocab: str | None = None, lowercase: bool = True, sp_vocab_size: int = 8000,
                   sp_model_type: str = "unigram", sp_max_lines: int = 2_000_000, max_seq_length: int = 128,
                   eval_fraction: float = 0.05, num_shards: int = 8, builder_variant: str = "electra",
                   seed: int = 0, blanks_separate_docs: bool = False, hf_dataset: str | None = None,
                   hf_config: str | None = None, hf_split: str = "train", hf_text_column: str = "text",
                   hf_data_files: str | Sequence[str] | None = None, max_documents: int | None = None,
                   overwrite: bool = False) -> dict:
    """Tokenises documents, builds ELECTRA examples (spec 5.1) and writes shards + manifest; returns the manifest.

    `inputs`: files/folders (a comma-separated string or a list); None = the bundled demo corpus. `hf_dataset`
    (a Hub name, a builder such as 'json' with `hf_data_files`, or a `save_to_disk` folder) replaces `inputs`.
    `tokenizer`: 'wordpiece' (`vocab` defaults to the bundled BERT uncased vocab) or 'sentencepiece' (`vocab` =
    an existing .model, else one of `sp_vocab_size` pieces is trained on the train split). Multi-process
    trainers call this on one process only.

    Manifest fields: format, format_version, created, max_seq_length, fields, dtype, tokenizer (kind, file,
    lowercase, vocab_size, special_ids), builder_variant, seed, eval_fraction, blanks_separate_docs, sources,
    max_documents, skipped_files ({reason: {count, paths}}), splits ({split: {documents, lines, text_tokens,
    examples, tokens, two_segment_examples, shards: [{file, examples}]}}).
    """
    if isinstance(inputs, str):
        inputs = [p for p in inputs.split(",") if p]
    if not inputs and not hf_dataset:
        inputs = [DEMO_CORPUS_DIR]
    if tokenizer not in ("wordpiece", "sentencepiece"):
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected 'wordpiece' or 'sentencepiece'")
    if builder_variant not in VARIANTS:
        raise ValueError(f"builder_variant must be one of {VARIANTS}, got {builder_variant!r}")
    if not 0 <= eval_fraction <= 0.5:
        raise ValueError(f"eval_fraction must be in [0, 0.5], got {eval_fraction}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise FileExistsError(f"output directory is not empty: {output_dir} (pass overwrite=True / --overwrite)")
    eval_every = round(1 / eval_fraction) if eval_fraction else 0

    skipped: dict[str, list[str]] = {r: [] for r in SKIP_REASONS}
    files: list[str] = []
    if hf_dataset:
        sources = dict(hf_dataset=hf_dataset, hf_config=hf_config, hf_split=hf_split, hf_text_column=hf_text_column,
                       hf_data_files=hf_data_files)
    else:
        for path in find_text_files(inputs):
            reason = classify_file(path)
            (skipped[reason] if reason else files).append(path)
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        sources = dict(inputs=[os.path.abspath(p) for p in inputs], files=len(files))
    for reason, paths in skipped.items():
        if paths:
            logging.warning("skipped %d %s file(s), e.g. %s", len(paths), reason, paths[0])

    def documents() -> Iterator[tuple[str, list[str]]]:
        docs = (_hf_documents(hf_dataset, hf_config, hf_split, hf_text_column, hf_data_files) if hf_dataset
                else _file_documents(files, blanks_separate_docs))
        for i, doc in enumerate(itertools.islice(docs, max_documents)):
            yield ("eval" if eval_every and i % eval_every == 1 else "train"), doc

    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=os.path.dirname(output_dir))
    try:
        if tokenizer == "wordpiece":
            tok = WordPieceTokenizer(vocab or BERT_UNCASED_VOCAB, lowercase=lowercase)
        elif vocab:
            tok = SentencePieceTokenizer(vocab)
        else:
            text_file = os.path.join(tmp, "sentencepiece-train.txt")
            with open(text_file, "w", encoding="utf-8") as f:
                lines = (line for split, doc in documents() if split == "train" for line in doc)
                f.writelines(line + "\n" for line in itertools.islice(lines, sp_max_lines))
            tok = train_sentencepiece([text_file], os.path.join(tmp, "spm"), sp_vocab_size, sp_model_type,
                                      lowercase=lowercase, max_sentences=sp_max_lines, seed=seed)
            os.remove(text_file)
        tok.save(tmp)

        dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.int32)
        writers = {s: _ShardWriter(tmp, s, num_shards if s == "train" else 1, max_seq_length, dtype) for s in SPLITS}
        builders = {s: ExampleBuilder(max_seq_length, cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id,
                                      variant=builder_variant, seed=(seed, k)) for k, s in enumerate(SPLITS)}
        stats = {s: Counter() for s in SPLITS}
        for split, ids in _encode_documents(documents(), tok):
            stats[split].update(documents=1, lines=len(ids), text_tokens=sum(map(len, ids)))
            for example in builders[split].build([ids]):
                writers[split].add(example)
                stats[split].update(examples=1, tokens=int(example["input_mask"].sum()),
                                    two_segment_examples=int(example["segment_ids"].any()))
            logging.log_every_n_seconds(logging.INFO, "prepare: %s", 30, dict(stats["train"]))

        manifest = dict(
            format=FORMAT, format_version=FORMAT_VERSION,
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            max_seq_length=max_seq_length, fields=list(FIELDS), dtype=dtype.name, tokenizer=tok.config(),
            builder_variant=builder_variant, seed=seed, eval_fraction=eval_fraction,
            blanks_separate_docs=blanks_separate_docs, sources=sources, max_documents=max_documents,
            skipped_files={r: dict(count=len(p), paths=p[:20]) for r, p in skipped.items()},
            splits={s: dict({k: stats[s][k] for k in ("documents", "lines", "text_tokens", "examples", "tokens",
                                                       "two_segment_examples")}, shards=writers[s].close())
                    for s in SPLITS})
        if not manifest["splits"]["train"]["examples"]:
            raise ValueError(f"no training examples from {sources}")
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)
        os.chmod(tmp, 0o755)
        if os.path.isdir(output_dir):
            shutil.rmtree(output_dir)
        os.rename(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("prepared %s: %s", output_dir, {s: v["examples"] for s, v in manifest["splits"].items()})
    return manifest


FLAGS = flags.FLAGS


def _define_flags():
    """Command-line flags (defined only when run as a program, so importing this module adds none)."""
    flags.DEFINE_list("input", None, "Text files or folders (*.txt, recursive); default: the bundled demo corpus.")
    flags.DEFINE_string("output_dir", None, "Where to write shards and manifest.json.")
    flags.DEFINE_enum("tokenizer", "wordpiece", ["wordpiece", "sentencepiece"], "Tokenizer kind.")
    flags.DEFINE_string("vocab", None, "WordPiece vocab or SentencePiece .model (default: BERT uncased / train one).")
    flags.DEFINE_bool("lowercase", True, "Lowercase (and strip accents for WordPiece).")
    flags.DEFINE_integer("sp_vocab_size", 8000, "SentencePiece vocabulary size when training one.")
    flags.DEFINE_enum("sp_model_type", "unigram", ["unigram", "bpe"], "SentencePiece model type.")
    flags.DEFINE_integer("max_seq_length", 128, "Example length T.")
    flags.DEFINE_float("eval_fraction", 0.05, "Fraction of documents held out as the eval split (0 to 0.5).")
    flags.DEFINE_integer("num_shards", 8, "Train shards (eval has one).")
    flags.DEFINE_enum("builder_variant", "electra", ["electra", "convbert_repo"], "Segment logic (spec 5.1).")
    flags.DEFINE_integer("seed", 0, "Seed for file order, builder randomness and tokenizer training.")
    flags.DEFINE_bool("blanks_separate_docs", False, "Blank lines separate documents inside a file.")
    flags.DEFINE_string("hf_dataset", None, "Hugging Face dataset name or a save_to_disk folder (replaces --input).")
    flags.DEFINE_string("hf_config", None, "Dataset config, e.g. 20231101.en for wikimedia/wikipedia.")
    flags.DEFINE_string("hf_split", "train", "Dataset split.")
    flags.DEFINE_string("hf_text_column", "text", "Column holding the document text.")
    flags.DEFINE_list("hf_data_files", None, "data_files for builders such as json/text/parquet.")
    flags.DEFINE_integer("max_documents", None, "Use at most this many documents.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    options = ("tokenizer", "vocab", "lowercase", "sp_vocab_size", "sp_model_type", "max_seq_length", "eval_fraction",
               "num_shards", "builder_variant", "seed", "blanks_separate_docs", "hf_dataset", "hf_config", "hf_split",
               "hf_text_column", "hf_data_files", "max_documents", "overwrite")
    prepare_corpus(FLAGS.input, FLAGS.output_dir, **{name: FLAGS[name].value for name in options})


if __name__ == "__main__":
    _define_flags()
    app.run(main)
