"""Units of work: the corpus cut into an ordered list of units, each built into examples by a worker process and
committed as one file, so a preparation runs on all cores and resumes after a crash (used by `prepare_corpus`).

Plan (as the worker pool of google-research/electra `build_pretraining_dataset.py`, which gives every job a slice of
the input files): before anything is tokenised the corpus is cut into units: consecutive input files (shuffled with
the seed) until they hold `unit_mb` MB (or 1 / MIN_UNITS of the corpus, if less, but at least MIN_UNIT_BYTES),
`HF_ROWS_PER_UNIT` rows of a saved dataset, or one shard of a streamed one (a parquet row group,
`IterableDataset.reshard`). A document's split follows its position (the index of its file plus its index in the
file; its row; or its shard's index plus its row in the shard): every round(1 / eval_fraction)-th position,
starting with the second, goes to `eval`.

Build: a worker process builds a whole unit with its own `ExampleBuilder` per split, seeded by (seed, split, unit
index). The builder's only state across documents is its random stream and the next target length (lines never
join across documents), and both restart at every unit, so a unit's examples depend on that unit alone and the
output on neither the number of workers nor their schedule.

Commit and resume: every unit is committed as one `unit-XXXXXX.npz` (its train and eval arrays and its counts),
written under a temporary name and renamed. A later run validates the committed units (a truncated, corrupt, empty
or foreign file is rebuilt) and builds only the others.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import tqdm
from absl import logging

from convbert import faults
from convbert.assets import BERT_UNCASED_VOCAB
from convbert.data.example_builder import FIELDS, ExampleBuilder
from convbert.data.sources import SKIP_REASONS, file_lines, hf_texts, is_streamed, readable_files, text_lines
from convbert.tokenization import (
    CONFIG_FILE,
    ConvBertTokenizer,
    SentencePieceTokenizer,
    TextTokenizer,
    load_tokenizer,
    train_sentencepiece,
)

SPLITS = ("train", "eval")
STAT_KEYS = ("documents", "lines", "text_tokens", "examples", "tokens", "two_segment_examples")
UNIT_MB = 1.0
MIN_UNITS = 64  # a smaller corpus gets smaller units (down to MIN_UNIT_BYTES), so it still spreads over the cores
MIN_UNIT_BYTES = 100_000
HF_ROWS_PER_UNIT = 10_000
CHARS_PER_CALL = 1 << 20  # characters per tokenizer call (bounds its memory)
ROWS_PER_BLOCK = 4096  # examples of a unit collected before they are packed into one array


def default_num_workers() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Unit(NamedTuple):
    """One unit of work: `files` ((position, path) pairs), `rows` ([start, stop) of a saved dataset) or `shard` (of
    a streamed dataset); `limit` caps its documents (set by max_documents). Its repr (name included) is part of
    the digest of the units in `plan.json`, which a resumed preparation compares."""

    index: int
    files: tuple[tuple[int, str], ...] = ()
    rows: tuple[int, int] | None = None
    shard: int | None = None
    limit: int | None = None


@dataclasses.dataclass
class Context:
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


def plan_units(
    inputs: Sequence[str], hf: Any, seed: int, unit_mb: float, strict_utf8: bool
) -> tuple[list[_Unit], dict[str, list], dict[str, int]]:
    """The corpus's units (see the module docstring), the skipped files by reason and {path: invalid UTF-8
    bytes} of the files read with replacement characters (`readable_files`)."""
    if hf is not None:
        if is_streamed(hf):
            units = [_Unit(i, shard=i) for i in range(hf.num_shards)]
        else:
            units = [
                _Unit(i, rows=(a, min(a + HF_ROWS_PER_UNIT, len(hf))))
                for i, a in enumerate(range(0, len(hf), HF_ROWS_PER_UNIT))
            ]
        return units, {r: [] for r in SKIP_REASONS}, {}
    files, skipped, replaced = readable_files(inputs, strict_utf8)
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    sizes = [os.path.getsize(path) for path in files]
    unit_bytes = min(unit_mb * 1e6, max(sum(sizes) / MIN_UNITS, MIN_UNIT_BYTES))
    groups, size = [[]], 0
    for position, (path, file_size) in enumerate(zip(files, sizes, strict=True)):
        groups[-1].append((position, path))
        size += file_size
        if size >= unit_bytes:
            groups, size = groups + [[]], 0
    return [_Unit(i, files=tuple(g)) for i, g in enumerate(g for g in groups if g)], skipped, replaced


def limit_units(ctx: Context, units: Sequence[_Unit], max_documents: int) -> list[_Unit]:
    """The units holding the first `max_documents` documents, the last one with a limit (reads, no tokenising)."""
    limited, seen = [], 0
    for unit in units:
        if seen >= max_documents:
            break
        n = sum(line is None for _, line in _unit_lines(ctx, unit._replace(limit=max_documents - seen), [0]))
        limited.append(unit._replace(limit=max_documents - seen) if seen + n >= max_documents else unit)
        seen += n
    return limited


def expected_documents(
    hf: Any,
    hf_split: str,
    units: Sequence[_Unit],
    blanks_separate_docs: bool,
    max_documents: int | None,
    num_parts: int,
) -> int | None:
    """The number of documents the progress bar counts to, where it is known before reading."""
    if max_documents is not None:
        return max_documents
    if units and units[0].files:
        return None if blanks_separate_docs else sum(len(u.files) for u in units)
    if units and units[0].rows:
        return sum(b - a for a, b in (u.rows for u in units))
    split = (getattr(getattr(hf, "info", None), "splits", None) or {}).get(hf_split)
    return split.num_examples if split and num_parts == 1 else None


def _unit_lines(ctx: Context, unit: _Unit, long_lines: list[int]) -> Iterator[tuple[str, str | None]]:
    """(split, line) for every line of the unit's documents in order, and (split, None) after each document's
    last line (the split from the document's position, see the module docstring). Streamed: no document is held
    whole."""

    def positioned():  # (position, line or None at a document's end)
        for position, path in unit.files:
            j, open_doc = 0, False
            for line in file_lines(path, ctx.max_line_chars, long_lines):
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
        for j, text in enumerate(hf_texts(rows, ctx.hf_text_column)):
            if lines := text_lines(text, ctx.max_line_chars, long_lines):
                yield from ((first + j, line) for line in lines)
                yield first + j, None

    documents = 0
    for position, line in positioned():
        yield ("eval" if ctx.eval_every and position % ctx.eval_every == 1 else "train"), line
        documents += line is None
        if documents == unit.limit:
            return


def make_tokenizer(
    work: str,
    ctx: Context,
    units: Sequence[_Unit],
    tokenizer: str,
    vocab: str | None,
    lowercase: bool,
    sp_vocab_size: int,
    sp_model_type: str,
    sp_max_lines: int,
    seed: int,
) -> TextTokenizer:
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
            lines = (
                line
                for unit in units
                for split, line in _unit_lines(ctx, unit, [0])
                if split == "train" and line is not None
            )
            f.writelines(line + "\n" for line in itertools.islice(lines, sp_max_lines))
        tok = train_sentencepiece(
            [text_file],
            os.path.join(work, "spm"),
            sp_vocab_size,
            sp_model_type,
            lowercase=lowercase,
            max_sentences=sp_max_lines,
            seed=seed,
        )
        os.remove(text_file)
    tok.save(work)
    return tok


def _encode_lines(
    lines: Iterable[tuple[str, str | None]],
    tokenizer: TextTokenizer,
    lines_per_call: int = 8192,
    chars_per_call: int = CHARS_PER_CALL,
) -> Iterator[tuple[str, list[int] | None]]:
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


def _build_unit(ctx: Context, unit: _Unit) -> dict:
    """Builds and commits one unit: `unit-XXXXXX.npz` with `info` (JSON: unit, limit, per-split counts, lines
    cut for length) and the `train` / `eval` arrays [n, 3, T]; returns the info. The examples are held in
    `ctx.dtype` blocks (2 bytes a token), the text only in pieces."""
    tok = ctx.tokenizer
    builders = {
        s: ExampleBuilder(
            ctx.max_seq_length,
            cls_id=tok.cls_token_id,
            sep_id=tok.sep_token_id,
            pad_id=tok.pad_token_id,
            variant=ctx.builder_variant,
            seed=(ctx.seed, k, unit.index),
        )
        for k, s in enumerate(SPLITS)
    }
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
    arrays = {
        s: np.concatenate([*blocks[s], np.array(rows[s], ctx.dtype).reshape(-1, len(FIELDS), ctx.max_seq_length)])
        for s in SPLITS
    }
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


def split_arrays(units_dir: str, units: Sequence[_Unit], split: str) -> Iterator[np.ndarray]:
    """The committed `split` examples of `units`, [n, 3, T] per unit, in unit order."""
    for unit in units:
        with np.load(_unit_path(units_dir, unit.index)) as z:
            examples = z[split]
        yield examples


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
            except Exception as e:  # noqa: BLE001 - any unreadable file is rebuilt, whatever the error
                logging.warning("rebuilding %s: %s: %s", path, type(e).__name__, e)
                os.remove(path)
    return infos


_WORKER_CONTEXT: Context | None = None


def _init_worker(ctx: Context):
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = ctx
    faults.die_with_parent()  # the parent (or the forkserver, which ends with it) ending ends the worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's `faults.Preempted`
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


def _build_each(ctx: Context, units: Sequence[_Unit], num_workers: int) -> Iterator[dict]:
    """Builds `units`, yielding their infos as they finish. One worker (or one unit) runs in this process, each
    tokenising on one thread; more run in a process pool (`_mp_context`)."""
    if num_workers == 1 or len(units) <= 1:
        with mock.patch.dict(os.environ, TOKENIZERS_PARALLELISM="false"):
            for unit in units:
                yield _build_unit(ctx, unit)
        return
    with ProcessPoolExecutor(
        min(num_workers, len(units)), mp_context=_mp_context(), initializer=_init_worker, initargs=(ctx,)
    ) as pool:
        futures = [pool.submit(_build_in_worker, unit) for unit in units]
        try:
            for future in as_completed(futures):
                yield future.result()
        except (faults.Preempted, KeyboardInterrupt):  # stop the workers rather than wait for their units
            for process in list(pool._processes.values()):  # private, but Python < 3.14 has no terminate_workers()
                process.terminate()
            raise
        finally:
            for future in futures:
                future.cancel()


def build_units(
    ctx: Context, units: Sequence[_Unit], num_workers: int, name: str, num_documents: int | None
) -> dict[int, dict]:
    """{unit index: info} of every unit: the valid committed ones, the others built (and committed) by
    `num_workers` processes under a progress bar named `name`: documents (of `num_documents`), ETA, tokens/s,
    units."""
    infos = _committed_units(ctx.units_dir, units, ctx.max_seq_length)
    if infos:
        logging.info(
            "resuming %s: %d of %d units already built", os.path.dirname(ctx.units_dir), len(infos), len(units)
        )

    def documents(info):
        return sum(s["documents"] for s in info["splits"].values())

    bar = tqdm.tqdm(
        total=num_documents,
        initial=sum(map(documents, infos.values())),
        unit="doc",
        desc=f"prepare {name}",
        mininterval=1,
    )
    tokens, start = 0, time.perf_counter()
    with bar:  # closed before an error is reported, not over it at exit
        for info in _build_each(ctx, [u for u in units if u.index not in infos], num_workers):
            infos[info["unit"]] = info
            tokens += sum(s["text_tokens"] for s in info["splits"].values())
            bar.update(documents(info))
            bar.set_postfix(
                tokens_per_s=f"{tokens / (time.perf_counter() - start):,.0f}",
                units=f"{len(infos)}/{len(units)}",
                refresh=False,
            )
    return infos
