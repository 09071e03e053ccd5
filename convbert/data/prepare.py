"""Builds sharded pretraining examples from raw text, in parallel, resumably, on one host or many.

  python -m convbert.data.prepare --output_dir=/tmp/demo_data          # the bundled data/demo_corpus, all cores
  python -m convbert.data.prepare --input=corpus/,more.txt --output_dir=DIR --num_workers=8 --tokenizer=sentencepiece
  python -m convbert.data.prepare --hf_dataset=Skylion007/openwebtext --output_dir=DIR   # streamed from the Hub
  python -m convbert.data.prepare ... --output_dir=DIR --part=I --num_parts=N   # host I of N; then, once:
  python -m convbert.data.prepare --output_dir=DIR --merge

Documents: one per input file (folders are searched recursively for *.txt; input files are shuffled with the
seed), or separated by blank lines with --blanks_separate_docs, or one per row of a Hugging Face dataset (streamed
with `datasets.load_dataset(streaming=True)`, so the raw corpus is never stored locally, or a `save_to_disk`
folder). Lines are the builder's sentences; a line longer than `max_line_chars` (a file without newlines) is cut at
sentence ends, else at spaces, as it is read, and counted: files are streamed, never held whole. Empty and binary
files are skipped and counted; invalid UTF-8 bytes are read as U+FFFD and counted, unless they are more than
MAX_INVALID_FRACTION of a file (another encoding) or `strict_utf8` is set: then the file is skipped as non-UTF-8.
A document's split follows its position (the index of its file plus its index in the file; its row; or its
shard's index plus its row in the shard): every round(1 / eval_fraction)-th position, starting with the second,
goes to `eval`.

Units of work (as the worker pool of google-research/electra `build_pretraining_dataset.py`, which gives every job
a slice of the input files): before anything is tokenised the corpus is cut into an ordered list of units:
consecutive input files until they hold `unit_mb` MB (or 1 / MIN_UNITS of the corpus, if less, but at least
MIN_UNIT_BYTES), `HF_ROWS_PER_UNIT` rows of a saved dataset, or one shard of a streamed one (a parquet row group,
`IterableDataset.reshard`). A worker process builds a whole unit with its own `ExampleBuilder` per split, seeded
by (seed, split, unit index). The builder's only state across documents is its random stream and the next target
length (lines never join across documents), and both restart at every unit, so a unit's examples depend on that
unit alone and the output on neither the number of workers nor their schedule.

Resume: every unit is committed as one `units/unit-XXXXXX.npz` (its train and eval arrays and its counts), written
under a temporary name and renamed, inside `.NAME.partial` next to the output folder, with `plan.json` (the
options and the unit list). Running the same command again validates the committed units (a truncated, corrupt,
empty or foreign file is rebuilt) and builds only the others. At the end the units are cut into shards, the
manifest is written and the folder is renamed into place: a folder with a manifest is always complete. An
exception before any unit is committed removes the partial folder; once units are committed it is kept. The
manifest records a `fingerprint` of the inputs (files' sizes and modification times, vocabulary, options), which
a later run compares before reusing the folder (`fingerprint_changes`).

Parts (many hosts): `part=i, num_parts=n` builds units [i U / n, (i + 1) U / n) of the U units into
`DIR/part-0000i-of-0000n` (a prepared folder of its own). `merge_parts(DIR)` (--merge) writes `DIR/manifest.json`
listing the parts' shards in part order: the loader reads the same examples in the same order as from one run
over all units.

Output folder:
  manifest.json                      see `prepare_corpus`
  text_tokenizer.json, vocab/model   the tokenizer (`convbert.tokenization.load_tokenizer(output_dir)`; WordPiece:
                                     vocab.txt + tokenizer_config.json)
  {train,eval}/shard-XXXXX-of-YYYYY.npy   [n, 3, T] arrays (input_ids, input_mask, segment_ids), contiguous
                                     slices of the split's examples in unit order; uint16 when the vocab fits,
                                     else int32; read with np.load(mmap_mode='r')
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime
import filecmp
import glob
import hashlib
import inspect
import itertools
import json
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import tqdm
from absl import app, flags, logging

from convbert.assets import BERT_UNCASED_VOCAB
from convbert.data.example_builder import FIELDS, VARIANTS, ExampleBuilder
from convbert.tokenization import (CONFIG_FILE, KINDS, ConvBertTokenizer, SentencePieceTokenizer, TextTokenizer,
                                   load_tokenizer, train_sentencepiece)

DEMO_CORPUS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "data", "demo_corpus")
FORMAT = "convbert-pretraining-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
UNITS = "units"
SPLITS = ("train", "eval")
SKIP_REASONS = ("empty", "binary", "non_utf8")
STAT_KEYS = ("documents", "lines", "text_tokens", "examples", "tokens", "two_segment_examples")
UNIT_MB = 1.0
MIN_UNITS = 64  # a smaller corpus gets smaller units (down to MIN_UNIT_BYTES), so it still spreads over the cores
MIN_UNIT_BYTES = 100_000
HF_ROWS_PER_UNIT = 10_000
MAX_LINE_CHARS = 100_000  # a longer line (a file without newlines) is cut into sentences as it is read
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
CHARS_PER_CALL = 1 << 20  # characters per tokenizer call (bounds its memory)
ROWS_PER_BLOCK = 4096  # examples of a unit collected before they are packed into one array
MAX_INVALID_FRACTION = 0.01  # of a file's bytes; more invalid UTF-8 means another encoding: the file is skipped
FINGERPRINT_IGNORES = ("overwrite", "num_workers")  # options that do not change the output
PART_NAME = re.compile(r"part-(\d{5})-of-(\d{5})")


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


class _InvalidBytes(threading.local):
    count = 0


_INVALID = _InvalidBytes()


def _replace_and_count(error: UnicodeDecodeError) -> tuple[str, int]:
    _INVALID.count += error.end - error.start
    return "\ufffd", error.end


codecs.register_error("convbert_replace_and_count", _replace_and_count)


def classify_file(path: str, strict_utf8: bool = False) -> tuple[str | None, int]:
    """(skip reason, invalid UTF-8 bytes): reason None for a text file to read, else 'empty', 'binary' (NUL
    bytes) or 'non_utf8' (any invalid byte with `strict_utf8`, else more than MAX_INVALID_FRACTION of the
    bytes: another encoding). A readable file's invalid bytes are decoded as U+FFFD."""
    _INVALID.count, size = 0, 0
    decoder, has_text = codecs.getincrementaldecoder("utf-8")("convbert_replace_and_count"), False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if b"\0" in chunk:
                return "binary", 0
            size += len(chunk)
            has_text = bool(decoder.decode(chunk).strip()) or has_text
    decoder.decode(b"", final=True)
    invalid = _INVALID.count
    if invalid and (strict_utf8 or invalid > MAX_INVALID_FRACTION * size):
        return "non_utf8", invalid
    return (None if has_text else "empty"), invalid


def _input_list(inputs: str | Sequence[str] | None, hf_dataset: str | None) -> list[str]:
    """Input paths from a comma-separated string or a list; the bundled demo corpus when there are none."""
    if isinstance(inputs, str):
        inputs = [p for p in inputs.split(",") if p]
    return list(inputs or []) if inputs or hf_dataset else [DEMO_CORPUS_DIR]


def _files_digest(path: str, files: Sequence[str]) -> dict:
    """{path, files, bytes, sha256 of every file's relative path, size and modification time}."""
    h, total = hashlib.sha256(), 0
    for file in files:
        st = os.stat(file)
        total += st.st_size
        h.update(f"{os.path.relpath(file, path) if file != path else ''}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return dict(path=os.path.abspath(path), files=len(files), bytes=total, sha256=h.hexdigest())


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(inputs: str | Sequence[str] | None, **options: Any) -> dict:
    """What a prepared folder is made from: the input files (per input path: count, bytes and a digest of their
    names, sizes and modification times; for a dataset, its name and split and its local files), the vocabulary
    file's content, and the options that shape the output. `options`: `prepare_corpus`'s keyword arguments (its
    defaults for the rest). `sha256` digests all of it: equal fingerprints, the same shards."""
    options = {k: v for k, v in {**DEFAULTS, **options}.items() if k not in FINGERPRINT_IGNORES}
    if options["hf_dataset"]:
        data_files = options["hf_data_files"] or []
        local = [options["hf_dataset"], *([data_files] if isinstance(data_files, str) else data_files)]
        entries = [_files_digest(p, sorted(os.path.join(r, n) for r, _, ns in os.walk(p) for n in ns)
                                 if os.path.isdir(p) else [p]) for p in local if os.path.exists(p)]
    else:
        entries = [_files_digest(p, find_text_files([p])) for p in _input_list(inputs, None)]
    vocab = options["vocab"] or (BERT_UNCASED_VOCAB if options["tokenizer"] == "wordpiece" else None)
    out = dict(inputs=entries, vocab=vocab and dict(path=os.path.abspath(vocab), sha256=_sha256_file(vocab)),
               options=options)
    return dict(out, sha256=hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest())


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two `fingerprint`s, one readable line each ([] when they are equal)."""
    if old["sha256"] == new["sha256"]:
        return []
    changes = [f"{k}: {old['options'].get(k)!r} -> {new['options'].get(k)!r}"
               for k in sorted(old["options"].keys() | new["options"].keys())
               if old["options"].get(k) != new["options"].get(k)]
    before, after = ({e["path"]: e for e in f["inputs"]} for f in (old, new))
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None or b is None:
            changes.append(f"input {path} {'added' if a is None else 'no longer used'}")
        elif a["sha256"] != b["sha256"]:
            changes.append(f"input {path}: {a['files']} files of {a['bytes']:,} bytes -> {b['files']} files of "
                           f"{b['bytes']:,} bytes" + (" (modified since)" if (a["files"], a["bytes"]) ==
                                                       (b["files"], b["bytes"]) else ""))
    if old["vocab"] != new["vocab"]:
        changes.append(f"vocabulary: {(old['vocab'] or {}).get('path')} -> {(new['vocab'] or {}).get('path')} "
                       "(content differs)")
    return changes or ["the fingerprints differ"]


def part_name(part: int, num_parts: int) -> str:
    """The folder of part `part` of `num_parts` inside the output folder."""
    return f"part-{part:05d}-of-{num_parts:05d}"


def default_num_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Unit(NamedTuple):
    """One unit of work: `files` ((position, path) pairs), `rows` ([start, stop) of a saved dataset) or `shard` (of
    a streamed dataset); `limit` caps its documents (set by max_documents)."""
    index: int
    files: tuple[tuple[int, str], ...] = ()
    rows: tuple[int, int] | None = None
    shard: int | None = None
    limit: int | None = None


@dataclasses.dataclass
class _Context:
    """What building a unit needs; every worker receives it once."""
    max_seq_length: int
    builder_variant: str
    seed: int
    eval_every: int
    blanks_separate_docs: bool
    units_dir: str
    max_line_chars: int
    hf: Any = None  # datasets.Dataset (saved folder) or datasets.IterableDataset (streamed)
    hf_text_column: str = "text"
    tokenizer: TextTokenizer | None = None
    dtype: np.dtype | None = None


def _pieces(text: str, max_chars: int) -> list[str]:
    """`text` cut into pieces of at most `max_chars` characters: at sentence ends, else at the last space,
    else anywhere. Pieces keep their surrounding spaces (the last one may continue in the next chunk)."""
    pieces = []
    for sentence in SENTENCE_END.split(text):
        while len(sentence) > max_chars:
            cut = sentence.rfind(" ", 1, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut])
            sentence = sentence[cut:]
        pieces.append(sentence)
    return pieces


def _text_lines(text: str, max_chars: int, long_lines: list[int]) -> list[str]:
    """The non-empty stripped lines of a text (a dataset row); lines over `max_chars` as `_pieces` (counted in
    long_lines[0])."""
    lines = []
    for line in text.splitlines():
        if len(line) > max_chars:
            long_lines[0] += 1
            lines += _pieces(line, max_chars)
        else:
            lines.append(line)
    return [s for line in lines if (s := line.strip())]


def _file_lines(path: str, max_chars: int, long_lines: list[int]) -> Iterator[str]:
    """The stripped lines of a text file ('' for a blank one), read in pieces of at most `max_chars`
    characters: a longer line comes as `_pieces` (counted in long_lines[0]), so memory does not grow with it.
    Invalid UTF-8 bytes read as U+FFFD (`classify_file` decides which files are read)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        while line := f.readline(max_chars):
            if line.endswith("\n") or len(line) < max_chars:
                yield line.strip()
                continue
            long_lines[0] += 1
            carry = line
            while True:  # the rest of the long line, one chunk at a time
                chunk = f.readline(max_chars)
                ended = not chunk or chunk.endswith("\n") or len(chunk) < max_chars
                *done, carry = _pieces(carry + chunk, max_chars)
                yield from (s for piece in done if (s := piece.strip()))
                if ended:
                    if carry := carry.strip():
                        yield carry
                    break


def _hf_texts(rows, column: str) -> Iterator[str]:
    for batch in rows.iter(batch_size=1000):
        if column not in batch:
            raise ValueError(f"dataset has no column {column!r}; columns: {list(batch)}")
        yield from (text or "" for text in batch[column])


def _unit_lines(ctx: _Context, unit: _Unit, long_lines: list[int]) -> Iterator[tuple[str, str | None]]:
    """(split, line) for every line of the unit's documents in order, and (split, None) after each document's
    last line (the split from the document's position, see the module docstring). Streamed: no document is held
    whole."""
    def positioned():  # (position, line or None at a document's end)
        for position, path in unit.files:
            j, open_doc = 0, False
            for line in _file_lines(path, ctx.max_line_chars, long_lines):
                if line:
                    open_doc = True
                    yield position + j, line
                elif ctx.blanks_separate_docs and open_doc:
                    yield position + j, None
                    j, open_doc = j + 1, False
            if open_doc:
                yield position + j, None
        if unit.rows:
            rows, first = ctx.hf.select(range(*unit.rows)), unit.rows[0]
        elif unit.shard is not None:
            rows, first = ctx.hf.shard(num_shards=ctx.hf.num_shards, index=unit.shard), unit.shard
        else:
            return
        for j, text in enumerate(_hf_texts(rows, ctx.hf_text_column)):
            if lines := _text_lines(text, ctx.max_line_chars, long_lines):
                yield from ((first + j, line) for line in lines)
                yield first + j, None

    documents = 0
    for position, line in positioned():
        yield ("eval" if ctx.eval_every and position % ctx.eval_every == 1 else "train"), line
        documents += line is None
        if documents == unit.limit:
            return


def _encode_lines(lines: Iterable[tuple[str, str | None]], tokenizer: TextTokenizer, lines_per_call: int = 8192,
                  chars_per_call: int = CHARS_PER_CALL) -> Iterator[tuple[str, list[int] | None]]:
    """(split, token ids) per (split, line), (split, None) passed through; many lines share one `encode_batch`
    call, at most `lines_per_call` lines or `chars_per_call` characters (which bounds the tokenizer's memory)."""
    def encode(pending, texts):
        ids = iter(tokenizer.encode_batch(texts))
        return [(split, None if line is None else next(ids)) for split, line in pending]

    pending, texts, chars = [], [], 0
    for split, line in lines:
        pending.append((split, line))
        if line is not None:
            texts.append(line)
            chars += len(line)
            if len(texts) >= lines_per_call or chars >= chars_per_call:
                yield from encode(pending, texts)
                pending, texts, chars = [], [], 0
    yield from encode(pending, texts)


def _unit_path(units_dir: str, index: int) -> str:
    return os.path.join(units_dir, f"unit-{index:06d}.npz")


def _build_unit(ctx: _Context, unit: _Unit) -> dict:
    """Builds and commits one unit: `unit-XXXXXX.npz` with `info` (JSON: unit, limit, per-split counts, lines
    cut for length) and the `train` / `eval` arrays [n, 3, T]; returns the info. The examples are held in
    `ctx.dtype` blocks (2 bytes a token), the text only in pieces."""
    tok = ctx.tokenizer
    builders = {s: ExampleBuilder(ctx.max_seq_length, cls_id=tok.cls_token_id, sep_id=tok.sep_token_id,
                                  pad_id=tok.pad_token_id, variant=ctx.builder_variant,
                                  seed=(ctx.seed, k, unit.index)) for k, s in enumerate(SPLITS)}
    stats = {s: dict.fromkeys(STAT_KEYS, 0) for s in SPLITS}
    blocks: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    rows: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    long_lines = [0]
    for split, ids in _encode_lines(_unit_lines(ctx, unit, long_lines), ctx.tokenizer):
        if ids is None:
            stats[split]["documents"] += 1
            example = builders[split].end_document()
        else:
            stats[split]["lines"] += 1
            stats[split]["text_tokens"] += len(ids)
            example = builders[split].add_line(ids)
        if example is not None:
            rows[split].append(np.stack([example[k] for k in FIELDS]))
            if len(rows[split]) == ROWS_PER_BLOCK:
                blocks[split].append(np.array(rows[split], ctx.dtype))
                rows[split] = []
    arrays = {s: np.concatenate([*blocks[s], np.array(rows[s], ctx.dtype).reshape(-1, len(FIELDS),
                                                                                  ctx.max_seq_length)])
              for s in SPLITS}
    for split, a in arrays.items():
        stats[split].update(examples=len(a), tokens=int(a[:, 1].sum()), two_segment_examples=int(a[:, 2].any(1).sum()))
    info = dict(unit=unit.index, limit=unit.limit, splits=stats, long_lines=long_lines[0])
    path = _unit_path(ctx.units_dir, unit.index)
    with open(path + ".tmp", "wb") as f:
        np.savez(f, info=np.array(json.dumps(info)), **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)
    return info


def _read_unit(path: str, unit: _Unit, seq_len: int) -> dict:
    """The info of a committed unit after reading all of it (zip CRCs, shapes, counts); raises if it is bad."""
    with np.load(path) as z:
        info = json.loads(str(z["info"]))
        shapes = {s: z[s].shape for s in SPLITS}
    if (info["unit"], info["limit"]) != (unit.index, unit.limit):
        raise ValueError(f"holds unit {info['unit']} (limit {info['limit']})")
    for split, shape in shapes.items():
        if shape != (info["splits"][split]["examples"], len(FIELDS), seq_len):
            raise ValueError(f"{split} array has shape {shape}, info says {info['splits'][split]['examples']} rows")
    return info


def _unit_split(path: str, split: str) -> np.ndarray:
    with np.load(path) as z:
        return z[split]


def _committed_units(units_dir: str, units: Sequence[_Unit], seq_len: int) -> dict[int, dict]:
    """{unit index: info} of the valid committed units; bad ones and temporary files are deleted (rebuilt later)."""
    for name in os.listdir(units_dir):
        if name.endswith(".tmp"):
            os.remove(os.path.join(units_dir, name))
    infos = {}
    for unit in units:
        if os.path.exists(path := _unit_path(units_dir, unit.index)):
            try:
                infos[unit.index] = _read_unit(path, unit, seq_len)
            except Exception as e:  # any unreadable file is rebuilt, whatever the error
                logging.warning("rebuilding %s: %s: %s", path, type(e).__name__, e)
                os.remove(path)
    return infos


_WORKER_CONTEXT: _Context | None = None


def _init_worker(ctx: _Context):
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ctx
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: N workers use N cores


def _build_in_worker(unit: _Unit) -> dict:
    return _build_unit(_WORKER_CONTEXT, unit)


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork, so the workers share this process's imports (a spawned worker would import jax again, about 2 s);
    forkserver once JAX has started its backends (and threads) in this process, which makes fork unsafe."""
    xla_bridge = getattr(getattr(sys.modules.get("jax"), "_src", None), "xla_bridge", None)
    if xla_bridge is not None and xla_bridge.backends_are_initialized():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("fork")


def _build_units(ctx: _Context, units: Sequence[_Unit], num_workers: int) -> Iterator[dict]:
    """Builds `units`, yielding their infos as they finish. One worker (or one unit) runs in this process, each
    tokenising on one thread; more run in a process pool (`_mp_context`)."""
    if num_workers == 1 or len(units) <= 1:
        with mock.patch.dict(os.environ, TOKENIZERS_PARALLELISM="false"):
            for unit in units:
                yield _build_unit(ctx, unit)
        return
    with ProcessPoolExecutor(min(num_workers, len(units)), mp_context=_mp_context(),
                             initializer=_init_worker, initargs=(ctx,)) as pool:
        futures = [pool.submit(_build_in_worker, unit) for unit in units]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _write_shards(root: str, split: str, num_shards: int, chunks: Iterable[np.ndarray], total: int,
                  seq_len: int, dtype: np.dtype) -> list[dict]:
    """Cuts the split's examples (`chunks`, [n, 3, T] each, in order) into `num_shards` contiguous .npy files."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    files = [f"{split}/shard-{i:05d}-of-{num_shards:05d}.npy" for i in range(num_shards)]
    sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
    chunks, pending = iter(chunks), np.empty((0, len(FIELDS), seq_len), dtype)
    for file, size in zip(files, sizes):
        with open(os.path.join(root, file), "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (size, len(FIELDS), seq_len)})
            while size:
                if not len(pending):
                    pending = next(chunks)
                f.write(pending[:size].tobytes())
                size, pending = size - len(pending[:size]), pending[size:]
    return [{"file": f, "examples": n} for f, n in zip(files, sizes)]


def _plan_units(inputs: Sequence[str], hf: Any, seed: int, unit_mb: float, strict_utf8: bool
                ) -> tuple[list[_Unit], dict[str, list], dict[str, int]]:
    """The corpus's units (see the module docstring), the skipped files by reason and {path: invalid UTF-8
    bytes} of the files read with replacement characters."""
    skipped: dict[str, list[str]] = {r: [] for r in SKIP_REASONS}
    replaced: dict[str, int] = {}
    if hf is None:
        files = []
        for path in find_text_files(inputs):
            reason, invalid = classify_file(path, strict_utf8)
            (skipped[reason] if reason else files).append(path)
            if invalid and not reason:
                replaced[path] = invalid
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
        sizes = [os.path.getsize(path) for path in files]
        unit_bytes = min(unit_mb * 1e6, max(sum(sizes) / MIN_UNITS, MIN_UNIT_BYTES))
        groups, size = [[]], 0
        for position, (path, file_size) in enumerate(zip(files, sizes)):
            groups[-1].append((position, path))
            size += file_size
            if size >= unit_bytes:
                groups, size = groups + [[]], 0
        units = [_Unit(i, files=tuple(g)) for i, g in enumerate(g for g in groups if g)]
    elif _is_streamed(hf):
        units = [_Unit(i, shard=i) for i in range(hf.num_shards)]
    else:
        units = [_Unit(i, rows=(a, min(a + HF_ROWS_PER_UNIT, len(hf))))
                 for i, a in enumerate(range(0, len(hf), HF_ROWS_PER_UNIT))]
    for reason, paths in skipped.items():
        if paths:
            logging.warning("skipped %d %s file(s), e.g. %s%s", len(paths), reason, paths[0],
                            "" if reason != "non_utf8" else f" (strict_utf8={strict_utf8}; without it a file is "
                            f"read with U+FFFD for up to {MAX_INVALID_FRACTION:.0%} invalid bytes)")
    if replaced:
        logging.warning("read %d file(s) with %d invalid UTF-8 byte(s) decoded as U+FFFD, e.g. %s (strict_utf8 "
                        "skips them)", len(replaced), sum(replaced.values()), next(iter(replaced)))
    return units, skipped, replaced


def _is_streamed(hf) -> bool:
    import datasets
    return isinstance(hf, datasets.IterableDataset)


def _limit_units(ctx: _Context, units: Sequence[_Unit], max_documents: int) -> list[_Unit]:
    """The units holding the first `max_documents` documents, the last one with a limit (reads, no tokenising)."""
    limited, seen = [], 0
    for unit in units:
        if seen >= max_documents:
            break
        n = sum(line is None for _, line in _unit_lines(ctx, unit._replace(limit=max_documents - seen), [0]))
        limited.append(unit._replace(limit=max_documents - seen) if seen + n >= max_documents else unit)
        seen += n
    return limited


def _open_hf(name: str, config: str | None, split: str, text_column: str, data_files):
    """A `save_to_disk` folder as a Dataset, anything else streamed as an IterableDataset (`reshard`: one shard per
    parquet row group)."""
    import datasets
    if any(os.path.isfile(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(name)
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    else:
        ds = datasets.load_dataset(name, config, split=split, data_files=data_files, streaming=True).reshard()
    if ds.column_names is not None and text_column not in ds.column_names:
        raise ValueError(f"dataset {name} has no column {text_column!r}; columns: {ds.column_names}")
    return ds.select_columns([text_column])


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, value):
    """Writes under a temporary name and renames, so `path` is never half-written."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _make_tokenizer(work: str, ctx: _Context, units: Sequence[_Unit], tokenizer: str, vocab: str | None,
                    lowercase: bool, sp_vocab_size: int, sp_model_type: str, sp_max_lines: int,
                    seed: int) -> TextTokenizer:
    """The tokenizer saved in `work` by an earlier start, else a new one (SentencePiece: trained on the first
    `sp_max_lines` train lines of the whole corpus, so every part trains on the same text), saved there."""
    if os.path.isfile(os.path.join(work, CONFIG_FILE)):
        return load_tokenizer(work)
    if tokenizer == "wordpiece":
        tok = ConvBertTokenizer(vocab or BERT_UNCASED_VOCAB, do_lower_case=lowercase)
    elif vocab:
        tok = SentencePieceTokenizer(vocab)
    else:
        text_file = os.path.join(work, "sentencepiece-train.txt")
        with open(text_file, "w", encoding="utf-8") as f:
            lines = (line for unit in units for split, line in _unit_lines(ctx, unit, [0])
                     if split == "train" and line is not None)
            f.writelines(line + "\n" for line in itertools.islice(lines, sp_max_lines))
        tok = train_sentencepiece([text_file], os.path.join(work, "spm"), sp_vocab_size, sp_model_type,
                                  lowercase=lowercase, max_sentences=sp_max_lines, seed=seed)
        os.remove(text_file)
    tok.save(work)
    return tok


def prepare_corpus(inputs: str | Sequence[str] | None, output_dir: str, *, tokenizer: str = "wordpiece",
                   vocab: str | None = None, lowercase: bool = True, sp_vocab_size: int = 8000,
                   sp_model_type: str = "unigram", sp_max_lines: int = 2_000_000, max_seq_length: int = 128,
                   eval_fraction: float = 0.02, num_shards: int = 8, builder_variant: str = "electra",
                   seed: int = 0, blanks_separate_docs: bool = False, hf_dataset: str | None = None,
                   hf_config: str | None = None, hf_split: str = "train", hf_text_column: str = "text",
                   hf_data_files: str | Sequence[str] | None = None, max_documents: int | None = None,
                   overwrite: bool = False, num_workers: int | None = None, part: int = 0, num_parts: int = 1,
                   unit_mb: float = UNIT_MB, strict_utf8: bool = False,
                   max_line_chars: int = MAX_LINE_CHARS) -> dict:
    """Tokenises documents, builds ELECTRA examples (`ExampleBuilder`) and writes shards + manifest; returns the
    manifest. Resumes a partial preparation of the same options (see the module docstring).

    `inputs`: files/folders (a comma-separated string or a list); None = the bundled demo corpus. `hf_dataset`
    (a Hub name, a builder such as 'json' with `hf_data_files`, or a `save_to_disk` folder) replaces `inputs`.
    `tokenizer`: 'wordpiece' (`vocab` defaults to the bundled BERT uncased vocab) or 'sentencepiece' (`vocab` =
    an existing .model, else one of `sp_vocab_size` pieces is trained on the train split; pass the same model to
    every part). `num_workers`: processes (None or 0: all cores); the output does not depend on it. `part` of
    `num_parts`: write only that slice of the units into `output_dir/part-...` (then `merge_parts(output_dir)`).
    `overwrite`: replace a finished output folder, or a partial one made with other options. `strict_utf8`: skip a
    file with any invalid UTF-8 byte (default: read it with U+FFFD for them, counted, unless they are more than
    MAX_INVALID_FRACTION of it). Lines longer than `max_line_chars` characters are cut at sentence ends (else
    spaces) as they are read, counted. Multi-process trainers call this on one process only.

    Manifest fields: format, format_version, created, max_seq_length, fields, dtype, tokenizer (kind, file,
    lowercase, vocab_size, special_ids), builder_variant, seed, eval_fraction, blanks_separate_docs, sources,
    max_documents, unit_mb, units (this part's), part, num_parts, skipped_files ({reason: {count, paths}}),
    replaced_utf8 ({files, bytes, paths}), long_lines ({count, max_line_chars}), fingerprint (`fingerprint`), splits
    ({split: {documents, lines, text_tokens, examples, tokens, two_segment_examples, shards: [{file, examples}]}}).
    """
    options = {k: v for k, v in locals().items() if k not in ("inputs", "output_dir")}
    inputs = _input_list(inputs, hf_dataset)
    if tokenizer not in KINDS:
        raise ValueError(f"unknown tokenizer {tokenizer!r}; expected one of {KINDS}")
    if builder_variant not in VARIANTS:
        raise ValueError(f"builder_variant must be one of {VARIANTS}, got {builder_variant!r}")
    if not 0 <= eval_fraction <= 0.5:
        raise ValueError(f"eval_fraction must be in [0, 0.5], got {eval_fraction}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= part < num_parts:
        raise ValueError(f"part must be in [0, num_parts={num_parts}), got {part}")
    if max_documents is not None and num_parts > 1:
        raise ValueError("max_documents counts documents over the whole corpus; it cannot be used with num_parts > 1")
    if max_line_chars < 1:
        raise ValueError(f"max_line_chars must be >= 1, got {max_line_chars}")
    inputs_fingerprint = fingerprint(inputs, **options)
    num_workers = num_workers or default_num_workers()
    output_dir = os.path.abspath(output_dir)
    final = output_dir if num_parts == 1 else os.path.join(output_dir, part_name(part, num_parts))
    if os.path.isdir(final) and os.listdir(final) and not overwrite:
        raise FileExistsError(f"output directory is not empty: {final} (pass overwrite=True / --overwrite)")
    work = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    for stale in glob.glob(os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-*")):
        logging.info("removing %s, left by an interrupted preparation of an earlier version", stale)
        shutil.rmtree(stale, ignore_errors=True)

    if hf_dataset:
        sources = dict(hf_dataset=hf_dataset, hf_config=hf_config, hf_split=hf_split, hf_text_column=hf_text_column,
                       hf_data_files=hf_data_files)
        hf = _open_hf(hf_dataset, hf_config, hf_split, hf_text_column, hf_data_files)
    else:
        hf = None
    ctx = _Context(max_seq_length, builder_variant, seed, round(1 / eval_fraction) if eval_fraction else 0,
                   blanks_separate_docs, os.path.join(work, UNITS), max_line_chars, hf, hf_text_column)
    units, skipped, replaced = _plan_units(inputs, hf, seed, unit_mb, strict_utf8)
    if not hf_dataset:
        sources = dict(inputs=[os.path.abspath(p) for p in inputs], files=sum(len(u.files) for u in units))
    if max_documents is not None:
        units = _limit_units(ctx, units, max_documents)
    mine = units[len(units) * part // num_parts:len(units) * (part + 1) // num_parts]
    plan = dict(format_version=FORMAT_VERSION, sources=sources, tokenizer=tokenizer, vocab=vocab, lowercase=lowercase,
                sp=[sp_vocab_size, sp_model_type, sp_max_lines], max_seq_length=max_seq_length,
                eval_fraction=eval_fraction, builder_variant=builder_variant, seed=seed,
                blanks_separate_docs=blanks_separate_docs, max_documents=max_documents, unit_mb=unit_mb, part=part,
                num_parts=num_parts, units=hashlib.sha256(repr(units).encode()).hexdigest(),
                fingerprint=inputs_fingerprint["sha256"])
    if os.path.isdir(work):
        old = _read_json(os.path.join(work, PLAN)) if os.path.isfile(os.path.join(work, PLAN)) else None
        if old is not None and old != plan and not overwrite:
            raise FileExistsError(f"{work} holds a partial preparation with other options (pass overwrite=True / "
                                  f"--overwrite to discard it)")
        if old != plan:
            shutil.rmtree(work)
    os.makedirs(ctx.units_dir, exist_ok=True)
    _write_json(os.path.join(work, PLAN), plan)

    try:
        ctx.tokenizer = tok = _make_tokenizer(work, ctx, units, tokenizer, vocab, lowercase, sp_vocab_size,
                                              sp_model_type, sp_max_lines, seed)
        ctx.dtype = dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.int32)
        infos = _committed_units(ctx.units_dir, mine, max_seq_length)
        if infos:
            logging.info("resuming %s: %d of %d units already built", work, len(infos), len(mine))
        _build_with_progress(ctx, mine, infos, num_workers, os.path.basename(final),
                             _expected_documents(hf, hf_split, mine, blanks_separate_docs, max_documents, num_parts))

        splits = {}
        for split in SPLITS:
            counts = {k: sum(infos[u.index]["splits"][split][k] for u in mine) for k in STAT_KEYS}
            chunks = (_unit_split(_unit_path(ctx.units_dir, u.index), split) for u in mine)
            splits[split] = dict(counts, shards=_write_shards(work, split, num_shards if split == "train" else 1,
                                                              chunks, counts["examples"], max_seq_length, dtype))
        manifest = dict(
            format=FORMAT, format_version=FORMAT_VERSION, created=_now(), max_seq_length=max_seq_length,
            fields=list(FIELDS), dtype=dtype.name, tokenizer=tok.config(), builder_variant=builder_variant, seed=seed,
            eval_fraction=eval_fraction, blanks_separate_docs=blanks_separate_docs, sources=sources,
            max_documents=max_documents, unit_mb=unit_mb, units=len(mine), part=part, num_parts=num_parts,
            skipped_files={r: dict(count=len(p), paths=p[:20]) for r, p in skipped.items()},
            replaced_utf8=dict(files=len(replaced), bytes=sum(replaced.values()), paths=list(replaced)[:20]),
            long_lines=dict(count=sum(infos[u.index]["long_lines"] for u in mine), max_line_chars=max_line_chars),
            fingerprint=inputs_fingerprint, splits=splits)
        if not splits["train"]["examples"] and num_parts == 1:
            raise ValueError(f"no training examples from {sources}")
        _write_json(os.path.join(work, MANIFEST), manifest)
        os.chmod(work, 0o755)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.rename(work, final)
    except Exception:
        if built := sum(name.endswith(".npz") for name in os.listdir(ctx.units_dir)):
            logging.error("kept %s (%d units built): run the same command again to resume", work, built)
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(os.path.join(final, UNITS))
    os.remove(os.path.join(final, PLAN))
    if manifest["long_lines"]["count"]:
        logging.warning("cut %d line(s) longer than max_line_chars=%d characters into sentences (or at spaces)",
                        manifest["long_lines"]["count"], max_line_chars)
    logging.info("prepared %s: %s", final, {s: v["examples"] for s, v in manifest["splits"].items()})
    return manifest


# `prepare_corpus`'s keyword defaults: also those of the command line and of configs/pretrain.py's `config.data` and
# `config.max_seq_length`, so data prepared either way is the same.
DEFAULTS: dict[str, Any] = {name: p.default for name, p in inspect.signature(prepare_corpus).parameters.items()
                            if p.default is not inspect.Parameter.empty}


def _build_with_progress(ctx: _Context, units: Sequence[_Unit], infos: dict[int, dict], num_workers: int,
                         name: str, num_documents: int | None):
    """Builds the units not in `infos` (adding theirs) under a progress bar: documents, ETA, tokens/s, units."""
    def documents(info):
        return sum(s["documents"] for s in info["splits"].values())

    bar = tqdm.tqdm(total=num_documents, initial=sum(map(documents, infos.values())), unit="doc",
                    desc=f"prepare {name}", mininterval=1)
    tokens, start = 0, time.perf_counter()
    for info in _build_units(ctx, [u for u in units if u.index not in infos], num_workers):
        infos[info["unit"]] = info
        tokens += sum(s["text_tokens"] for s in info["splits"].values())
        bar.update(documents(info))
        bar.set_postfix(tokens_per_s=f"{tokens / (time.perf_counter() - start):,.0f}",
                        units=f"{len(infos)}/{len(units)}", refresh=False)
    bar.close()


def _expected_documents(hf, hf_split: str, units: Sequence[_Unit], blanks_separate_docs: bool,
                        max_documents: int | None, num_parts: int) -> int | None:
    """The number of documents the progress bar counts to, where it is known before reading."""
    if max_documents is not None:
        return max_documents
    if units and units[0].files:
        return None if blanks_separate_docs else sum(len(u.files) for u in units)
    if units and units[0].rows:
        return sum(b - a for a, b in (u.rows for u in units))
    split = (getattr(getattr(hf, "info", None), "splits", None) or {}).get(hf_split)
    return split.num_examples if split and num_parts == 1 else None


def merge_parts(output_dir: str) -> dict:
    """Writes `output_dir/manifest.json` (and the tokenizer) over its finished `part-XXXXX-of-YYYYY` folders: their
    shards in part order, counts summed. Raises if a part is missing or unfinished, or the parts disagree."""
    output_dir = os.path.abspath(output_dir)
    names = sorted(n for n in os.listdir(output_dir) if PART_NAME.fullmatch(n)) if os.path.isdir(output_dir) else []
    if not names:
        raise FileNotFoundError(f"no part-XXXXX-of-YYYYY folders in {output_dir}")
    num_parts = int(PART_NAME.fullmatch(names[0])[2])
    expected = [part_name(i, num_parts) for i in range(num_parts)]
    if names != expected:
        raise FileNotFoundError(f"{output_dir}: expected parts {expected}, found {names}")
    unfinished = [n for n in names if not os.path.isfile(os.path.join(output_dir, n, MANIFEST))]
    if unfinished:
        raise FileNotFoundError(f"{output_dir}: parts not finished (no {MANIFEST}): {unfinished}")
    manifests = [_read_json(os.path.join(output_dir, n, MANIFEST)) for n in names]
    # per part: the fingerprint too, since every host's copy of the inputs has its own modification times
    per_part = ("created", "part", "units", "splits", "long_lines", "fingerprint")
    common = {k: v for k, v in manifests[0].items() if k not in per_part}
    tok_files = [manifests[0]["tokenizer"]["file"], CONFIG_FILE]
    for name, m in zip(names, manifests):
        if {k: v for k, v in m.items() if k not in per_part} != common:
            raise ValueError(f"{name} was prepared with other options than {names[0]}")
        for f in tok_files:
            if not filecmp.cmp(os.path.join(output_dir, name, f), os.path.join(output_dir, names[0], f), False):
                raise ValueError(f"{name}/{f} differs from {names[0]}/{f}: every part needs the same tokenizer "
                                 "(pass one --vocab to all parts)")
    load_tokenizer(os.path.join(output_dir, names[0])).save(output_dir)
    splits = {s: dict({k: sum(m["splits"][s][k] for m in manifests) for k in STAT_KEYS},
                      shards=[dict(sh, file=f"{n}/{sh['file']}") for n, m in zip(names, manifests)
                              for sh in m["splits"][s]["shards"]]) for s in SPLITS}
    if not splits["train"]["examples"]:
        raise ValueError(f"no training examples in the parts of {output_dir}")
    merged = dict(common, created=_now(), part=None, parts=names, units=sum(m["units"] for m in manifests),
                  long_lines=dict(manifests[0]["long_lines"], count=sum(m["long_lines"]["count"] for m in manifests)),
                  fingerprint=manifests[0]["fingerprint"], splits=splits)
    _write_json(os.path.join(output_dir, MANIFEST), merged)
    logging.info("merged %d parts into %s: %s", len(names), output_dir, {s: v["examples"] for s, v in splits.items()})
    return merged


FLAGS = flags.FLAGS


def _define_flags():
    """Command-line flags (defined only when run as a program, so importing this module adds none); their defaults
    are `DEFAULTS`."""
    d = DEFAULTS
    flags.DEFINE_list("input", None, "Text files or folders (*.txt, recursive); default: the bundled demo corpus.")
    flags.DEFINE_string("output_dir", None, "Where to write shards and manifest.json.")
    flags.DEFINE_enum("tokenizer", d["tokenizer"], list(KINDS), "Tokenizer kind.")
    flags.DEFINE_string("vocab", d["vocab"], "WordPiece vocab or SentencePiece .model (default: BERT uncased / train "
                        "one).")
    flags.DEFINE_bool("lowercase", d["lowercase"], "Lowercase (and strip accents for WordPiece).")
    flags.DEFINE_integer("sp_vocab_size", d["sp_vocab_size"], "SentencePiece vocabulary size when training one.")
    flags.DEFINE_enum("sp_model_type", d["sp_model_type"], ["unigram", "bpe"], "SentencePiece model type.")
    flags.DEFINE_integer("max_seq_length", d["max_seq_length"], "Example length T.")
    flags.DEFINE_float("eval_fraction", d["eval_fraction"],
                       "Fraction of documents held out as the eval split (0 to 0.5).")
    flags.DEFINE_integer("num_shards", d["num_shards"], "Train shards (eval has one).")
    flags.DEFINE_enum("builder_variant", d["builder_variant"], list(VARIANTS), "Segment logic (spec 5.1).")
    flags.DEFINE_integer("seed", d["seed"], "Seed for file order, builder randomness and tokenizer training.")
    flags.DEFINE_bool("blanks_separate_docs", d["blanks_separate_docs"], "Blank lines separate documents inside a "
                      "file.")
    flags.DEFINE_string("hf_dataset", d["hf_dataset"], "Hugging Face dataset name or a save_to_disk folder (replaces "
                        "--input).")
    flags.DEFINE_string("hf_config", d["hf_config"], "Dataset config, e.g. 20231101.en for wikimedia/wikipedia.")
    flags.DEFINE_string("hf_split", d["hf_split"], "Dataset split.")
    flags.DEFINE_string("hf_text_column", d["hf_text_column"], "Column holding the document text.")
    flags.DEFINE_list("hf_data_files", d["hf_data_files"], "data_files for builders such as json/text/parquet.")
    flags.DEFINE_integer("max_documents", d["max_documents"], "Use at most this many documents.")
    flags.DEFINE_bool("overwrite", d["overwrite"], "Replace an existing output directory.")
    flags.DEFINE_integer("num_workers", d["num_workers"], "Worker processes (unset or 0: all cores); the output does "
                         "not depend on it.")
    flags.DEFINE_integer("part", d["part"], "With --num_parts: the slice of the units this host prepares (0-based).")
    flags.DEFINE_integer("num_parts", d["num_parts"], "Split the corpus into this many parts (one per host), merged "
                         "by --merge.")
    flags.DEFINE_float("unit_mb", d["unit_mb"], "MB of input files per unit of work (the resume granularity).")
    flags.DEFINE_bool("strict_utf8", d["strict_utf8"], "Skip files with any invalid UTF-8 byte (default: read them "
                      "with U+FFFD, counted, unless over 1% of their bytes are invalid).")
    flags.DEFINE_integer("max_line_chars", d["max_line_chars"], "Lines longer than this many characters are cut into "
                         "sentences (else at spaces) as they are read, counted.")
    flags.DEFINE_bool("merge", False, "Only write the manifest over the finished parts in --output_dir.")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if FLAGS.merge:
        merge_parts(FLAGS.output_dir)
        return
    options = ("tokenizer", "vocab", "lowercase", "sp_vocab_size", "sp_model_type", "max_seq_length", "eval_fraction",
               "num_shards", "builder_variant", "seed", "blanks_separate_docs", "hf_dataset", "hf_config", "hf_split",
               "hf_text_column", "hf_data_files", "max_documents", "overwrite", "num_workers", "part", "num_parts",
               "unit_mb", "strict_utf8", "max_line_chars")
    prepare_corpus(FLAGS.input, FLAGS.output_dir, **{name: FLAGS[name].value for name in options})


if __name__ == "__main__":
    _define_flags()
    app.run(main)
