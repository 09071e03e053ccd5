"""Builds sharded pretraining examples from raw text, in parallel, resumably, on one host or many.

  python -m convbert.data.prepare --output_dir=/tmp/demo_data          # the bundled data/demo_corpus, all cores
  python -m convbert.data.prepare --input=corpus/,more.txt --output_dir=DIR --num_workers=8 --tokenizer=sentencepiece
  python -m convbert.data.prepare --hf_dataset=Skylion007/openwebtext --output_dir=DIR   # streamed from the Hub
  python -m convbert.data.prepare ... --output_dir=DIR --part=I --num_parts=N   # host I of N; then, once:
  python -m convbert.data.prepare --output_dir=DIR --merge

Documents (`convbert.data.sources`): one per input file (folders are searched recursively for *.txt), or separated
by blank lines with --blanks_separate_docs, or one per row of a Hugging Face dataset (streamed, or a `save_to_disk`
folder). Empty, binary and non-UTF-8 files are skipped, a few invalid UTF-8 bytes are read as U+FFFD, lines longer
than --max_line_chars are cut into sentences; all of it counted in the manifest. Units of work
(`convbert.data.units`): the corpus is cut into units that worker processes build into examples, each unit on its
own, so the output depends on neither the number of workers nor their schedule; every round(1 / eval_fraction)-th
document goes to `eval`.

Resume: the units are committed (`units/unit-XXXXXX.npz`) inside `.NAME.partial` next to the output folder, with
`plan.json` (the options and the unit list). Running the same command again validates the committed units and
builds only the others. At the end the units are cut into shards, the manifest is written and the folder is
renamed into place: a folder with a manifest is always complete. An exception before any unit is committed removes
the partial folder; once units are committed it is kept. The manifest records a `fingerprint` of the inputs (files'
sizes and modification times, vocabulary, options), which a later run compares before reusing the folder
(`fingerprint_changes`).

One preparation per output folder: a second one is refused (`convbert.workdir_lock`; the lock is `.NAME.lock` next
to the folder, a part's next to the part's folder).

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

import datetime
import filecmp
import functools
import glob
import hashlib
import inspect
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging

from convbert import faults, fileio, workdir_lock
from convbert.assets import BERT_UNCASED_VOCAB
from convbert.data.example_builder import FIELDS, VARIANTS
from convbert.data.sources import MAX_LINE_CHARS, find_text_files, input_list, open_hf
from convbert.data.units import (
    SPLITS,
    STAT_KEYS,
    UNIT_MB,
    Context,
    build_units,
    default_num_workers,
    expected_documents,
    limit_units,
    make_tokenizer,
    plan_units,
    split_arrays,
)
from convbert.tokenization import CONFIG_FILE, KINDS, load_tokenizer

FORMAT = "convbert-pretraining-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
UNITS = "units"
FINGERPRINT_IGNORES = ("overwrite", "num_workers")  # options that do not change the output
PART_NAME = re.compile(r"part-(\d{5})-of-(\d{5})")


def _files_digest(path: str, files: Sequence[str]) -> dict:
    """{path, files, bytes, sha256 of every file's relative path, size and modification time}."""
    h, total = hashlib.sha256(), 0
    for file in files:
        st = os.stat(file)
        total += st.st_size
        h.update(f"{os.path.relpath(file, path) if file != path else ''}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return dict(path=os.path.abspath(path), files=len(files), bytes=total, sha256=h.hexdigest())


def sha256_file(path: str) -> str:
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
        entries = [
            _files_digest(
                p, sorted(os.path.join(r, n) for r, _, ns in os.walk(p) for n in ns) if os.path.isdir(p) else [p]
            )
            for p in local
            if os.path.exists(p)
        ]
    else:
        entries = [_files_digest(p, find_text_files([p])) for p in input_list(inputs, None)]
    vocab = options["vocab"] or (BERT_UNCASED_VOCAB if options["tokenizer"] == "wordpiece" else None)
    out = dict(
        inputs=entries, vocab=vocab and dict(path=os.path.abspath(vocab), sha256=sha256_file(vocab)), options=options
    )
    return dict(out, sha256=hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest())


def fingerprint_changes(old: dict, new: dict) -> list[str]:
    """What differs between two `fingerprint`s, one readable line each ([] when they are equal)."""
    if old["sha256"] == new["sha256"]:
        return []
    changes = [
        f"{k}: {old['options'].get(k)!r} -> {new['options'].get(k)!r}"
        for k in sorted(old["options"].keys() | new["options"].keys())
        if old["options"].get(k) != new["options"].get(k)
    ]
    before, after = ({e["path"]: e for e in f["inputs"]} for f in (old, new))
    for path in sorted(before.keys() | after.keys()):
        a, b = before.get(path), after.get(path)
        if a is None or b is None:
            changes.append(f"input {path} {'added' if a is None else 'no longer used'}")
        elif a["sha256"] != b["sha256"]:
            changes.append(
                f"input {path}: {a['files']} files of {a['bytes']:,} bytes -> {b['files']} files of "
                f"{b['bytes']:,} bytes"
                + (" (modified since)" if (a["files"], a["bytes"]) == (b["files"], b["bytes"]) else "")
            )
    if old["vocab"] != new["vocab"]:
        changes.append(
            f"vocabulary: {(old['vocab'] or {}).get('path')} -> {(new['vocab'] or {}).get('path')} (content differs)"
        )
    return changes or ["the fingerprints differ"]


def part_name(part: int, num_parts: int) -> str:
    """The folder of part `part` of `num_parts` inside the output folder."""
    return f"part-{part:05d}-of-{num_parts:05d}"


def _write_shards(
    root: str, split: str, num_shards: int, chunks: Iterable[np.ndarray], total: int, seq_len: int, dtype: np.dtype
) -> list[dict]:
    """Cuts the split's examples (`chunks`, [n, 3, T] each, in order) into `num_shards` contiguous .npy files."""
    os.makedirs(os.path.join(root, split), exist_ok=True)
    files = [f"{split}/shard-{i:05d}-of-{num_shards:05d}.npy" for i in range(num_shards)]
    sizes = [total // num_shards + (i < total % num_shards) for i in range(num_shards)]
    chunks, pending = iter(chunks), np.empty((0, len(FIELDS), seq_len), dtype)
    digests = []
    for file, size in zip(files, sizes, strict=True):
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header,
            {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": (size, len(FIELDS), seq_len),
            },
        )
        digest = hashlib.sha256(header.getvalue())
        with open(os.path.join(root, file), "wb") as f:
            f.write(header.getvalue())
            while size:
                if not len(pending):
                    pending = next(chunks)
                data = pending[:size].tobytes()
                f.write(data)
                digest.update(data)
                size, pending = size - len(pending[:size]), pending[size:]
        digests.append(digest.hexdigest())
    return [{"file": f, "examples": n, "sha256": d} for f, n, d in zip(files, sizes, digests, strict=True)]


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def lock_file(folder: str) -> str:
    """The lock of a prepared folder, next to it (the folder itself is replaced when it is finished)."""
    folder = os.path.abspath(folder)
    return os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.lock")


def _holds_output(folder: Callable[..., str]) -> Callable:
    """Decorator: the function runs holding the folder `folder(*its arguments)` (`workdir_lock.hold`)."""

    def decorate(prepare: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(prepare)
        def run(*args, **kwargs) -> dict:
            final = folder(*args, **kwargs)
            with workdir_lock.hold(final, lock_file=lock_file(final)):
                return prepare(*args, **kwargs)

        return run

    return decorate


def _output_folder(inputs, output_dir: str, *, part: int = 0, num_parts: int = 1, **options) -> str:
    """`prepare_corpus`'s folder: `output_dir`, or its part's folder."""
    return output_dir if num_parts == 1 else os.path.join(output_dir, part_name(part, num_parts))


@_holds_output(_output_folder)
def prepare_corpus(
    inputs: str | Sequence[str] | None,
    output_dir: str,
    *,
    tokenizer: str = "wordpiece",
    vocab: str | None = None,
    lowercase: bool = True,
    sp_vocab_size: int = 8000,
    sp_model_type: str = "unigram",
    sp_max_lines: int = 2_000_000,
    max_seq_length: int = 128,
    eval_fraction: float = 0.02,
    num_shards: int = 8,
    builder_variant: str = "electra",
    seed: int = 0,
    blanks_separate_docs: bool = False,
    hf_dataset: str | None = None,
    hf_config: str | None = None,
    hf_split: str = "train",
    hf_text_column: str = "text",
    hf_data_files: str | Sequence[str] | None = None,
    max_documents: int | None = None,
    overwrite: bool = False,
    num_workers: int | None = None,
    part: int = 0,
    num_parts: int = 1,
    unit_mb: float = UNIT_MB,
    strict_utf8: bool = False,
    max_line_chars: int = MAX_LINE_CHARS,
) -> dict:
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
    ({split: {documents, lines, text_tokens, examples, tokens, two_segment_examples, shards: [{file, examples,
    sha256}]}}; the loader verifies each shard's sha256 the first time a run reads it).
    """
    options = {k: v for k, v in locals().items() if k not in ("inputs", "output_dir")}
    inputs = input_list(inputs, hf_dataset)
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
        sources = dict(
            hf_dataset=hf_dataset,
            hf_config=hf_config,
            hf_split=hf_split,
            hf_text_column=hf_text_column,
            hf_data_files=hf_data_files,
        )
        hf = open_hf(hf_dataset, hf_config, hf_split, hf_text_column, hf_data_files)
    else:
        hf = None
    ctx = Context(
        max_seq_length,
        builder_variant,
        seed,
        round(1 / eval_fraction) if eval_fraction else 0,
        blanks_separate_docs,
        os.path.join(work, UNITS),
        max_line_chars,
        hf,
        hf_text_column,
    )
    units, skipped, replaced = plan_units(inputs, hf, seed, unit_mb, strict_utf8)
    if not hf_dataset:
        sources = dict(inputs=[os.path.abspath(p) for p in inputs], files=sum(len(u.files) for u in units))
    if max_documents is not None:
        units = limit_units(ctx, units, max_documents)
    mine = units[len(units) * part // num_parts : len(units) * (part + 1) // num_parts]
    plan = dict(
        format_version=FORMAT_VERSION,
        sources=sources,
        tokenizer=tokenizer,
        vocab=vocab,
        lowercase=lowercase,
        sp=[sp_vocab_size, sp_model_type, sp_max_lines],
        max_seq_length=max_seq_length,
        eval_fraction=eval_fraction,
        builder_variant=builder_variant,
        seed=seed,
        blanks_separate_docs=blanks_separate_docs,
        max_documents=max_documents,
        unit_mb=unit_mb,
        part=part,
        num_parts=num_parts,
        units=hashlib.sha256(repr(units).encode()).hexdigest(),
        fingerprint=inputs_fingerprint["sha256"],
    )
    if os.path.isdir(work):
        old = _read_json(os.path.join(work, PLAN)) if os.path.isfile(os.path.join(work, PLAN)) else None
        if old is not None and old != plan and not overwrite:
            raise FileExistsError(
                f"{work} holds a partial preparation with other options (pass overwrite=True / "
                f"--overwrite to discard it)"
            )
        if old != plan:
            shutil.rmtree(work)
    os.makedirs(ctx.units_dir, exist_ok=True)
    fileio.write_json(os.path.join(work, PLAN), plan)

    try:
        ctx.tokenizer = tok = make_tokenizer(
            work, ctx, units, tokenizer, vocab, lowercase, sp_vocab_size, sp_model_type, sp_max_lines, seed
        )
        ctx.dtype = dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.int32)
        infos = build_units(
            ctx,
            mine,
            num_workers,
            os.path.basename(final),
            expected_documents(hf, hf_split, mine, blanks_separate_docs, max_documents, num_parts),
        )

        splits = {}
        for split in SPLITS:
            counts = {k: sum(infos[u.index]["splits"][split][k] for u in mine) for k in STAT_KEYS}
            chunks = split_arrays(ctx.units_dir, mine, split)
            splits[split] = dict(
                counts,
                shards=_write_shards(
                    work,
                    split,
                    num_shards if split == "train" else 1,
                    chunks,
                    counts["examples"],
                    max_seq_length,
                    dtype,
                ),
            )
        manifest = dict(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            created=_now(),
            max_seq_length=max_seq_length,
            fields=list(FIELDS),
            dtype=dtype.name,
            tokenizer=tok.config(),
            builder_variant=builder_variant,
            seed=seed,
            eval_fraction=eval_fraction,
            blanks_separate_docs=blanks_separate_docs,
            sources=sources,
            max_documents=max_documents,
            unit_mb=unit_mb,
            units=len(mine),
            part=part,
            num_parts=num_parts,
            skipped_files={r: dict(count=len(p), paths=p[:20]) for r, p in skipped.items()},
            replaced_utf8=dict(files=len(replaced), bytes=sum(replaced.values()), paths=list(replaced)[:20]),
            long_lines=dict(count=sum(infos[u.index]["long_lines"] for u in mine), max_line_chars=max_line_chars),
            fingerprint=inputs_fingerprint,
            splits=splits,
        )
        if not splits["train"]["examples"] and num_parts == 1:
            raise ValueError(f"no training examples from {sources}")
        fileio.write_json(os.path.join(work, MANIFEST), manifest)
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
        logging.warning(
            "cut %d line(s) longer than max_line_chars=%d characters into sentences (or at spaces)",
            manifest["long_lines"]["count"],
            max_line_chars,
        )
    logging.info("prepared %s: %s", final, {s: v["examples"] for s, v in manifest["splits"].items()})
    return manifest


# `prepare_corpus`'s keyword defaults: also those of the command line and of configs/pretrain.py's `config.data` and
# `config.max_seq_length`, so data prepared either way is the same.
DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(prepare_corpus).parameters.items()
    if p.default is not inspect.Parameter.empty
}


@_holds_output(lambda output_dir: output_dir)
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
    for name, m in zip(names, manifests, strict=True):
        if {k: v for k, v in m.items() if k not in per_part} != common:
            raise ValueError(f"{name} was prepared with other options than {names[0]}")
        for f in tok_files:
            if not filecmp.cmp(os.path.join(output_dir, name, f), os.path.join(output_dir, names[0], f), False):
                raise ValueError(
                    f"{name}/{f} differs from {names[0]}/{f}: every part needs the same tokenizer "
                    "(pass one --vocab to all parts)"
                )
    load_tokenizer(os.path.join(output_dir, names[0])).save(output_dir)
    splits = {
        s: dict(
            {k: sum(m["splits"][s][k] for m in manifests) for k in STAT_KEYS},
            shards=[
                dict(sh, file=f"{n}/{sh['file']}")
                for n, m in zip(names, manifests, strict=True)
                for sh in m["splits"][s]["shards"]
            ],
        )
        for s in SPLITS
    }
    if not splits["train"]["examples"]:
        raise ValueError(f"no training examples in the parts of {output_dir}")
    merged = dict(
        common,
        created=_now(),
        part=None,
        parts=names,
        units=sum(m["units"] for m in manifests),
        long_lines=dict(manifests[0]["long_lines"], count=sum(m["long_lines"]["count"] for m in manifests)),
        fingerprint=manifests[0]["fingerprint"],
        splits=splits,
    )
    fileio.write_json(os.path.join(output_dir, MANIFEST), merged)
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
    flags.DEFINE_string(
        "vocab", d["vocab"], "WordPiece vocab or SentencePiece .model (default: BERT uncased / train one)."
    )
    flags.DEFINE_bool("lowercase", d["lowercase"], "Lowercase (and strip accents for WordPiece).")
    flags.DEFINE_integer("sp_vocab_size", d["sp_vocab_size"], "SentencePiece vocabulary size when training one.")
    flags.DEFINE_enum("sp_model_type", d["sp_model_type"], ["unigram", "bpe"], "SentencePiece model type.")
    flags.DEFINE_integer("max_seq_length", d["max_seq_length"], "Example length T.")
    flags.DEFINE_float(
        "eval_fraction", d["eval_fraction"], "Fraction of documents held out as the eval split (0 to 0.5)."
    )
    flags.DEFINE_integer("num_shards", d["num_shards"], "Train shards (eval has one).")
    flags.DEFINE_enum(
        "builder_variant", d["builder_variant"], list(VARIANTS), "Segment logic (docs/electra.md#builder-variants)."
    )
    flags.DEFINE_integer("seed", d["seed"], "Seed for file order, builder randomness and tokenizer training.")
    flags.DEFINE_bool(
        "blanks_separate_docs", d["blanks_separate_docs"], "Blank lines separate documents inside a file."
    )
    flags.DEFINE_string(
        "hf_dataset", d["hf_dataset"], "Hugging Face dataset name or a save_to_disk folder (replaces --input)."
    )
    flags.DEFINE_string("hf_config", d["hf_config"], "Dataset config, e.g. 20231101.en for wikimedia/wikipedia.")
    flags.DEFINE_string("hf_split", d["hf_split"], "Dataset split.")
    flags.DEFINE_string("hf_text_column", d["hf_text_column"], "Column holding the document text.")
    flags.DEFINE_list("hf_data_files", d["hf_data_files"], "data_files for builders such as json/text/parquet.")
    flags.DEFINE_integer("max_documents", d["max_documents"], "Use at most this many documents.")
    flags.DEFINE_bool("overwrite", d["overwrite"], "Replace an existing output directory.")
    flags.DEFINE_integer(
        "num_workers", d["num_workers"], "Worker processes (unset or 0: all cores); the output does not depend on it."
    )
    flags.DEFINE_integer("part", d["part"], "With --num_parts: the slice of the units this host prepares (0-based).")
    flags.DEFINE_integer(
        "num_parts", d["num_parts"], "Split the corpus into this many parts (one per host), merged by --merge."
    )
    flags.DEFINE_float("unit_mb", d["unit_mb"], "MB of input files per unit of work (the resume granularity).")
    flags.DEFINE_bool(
        "strict_utf8",
        d["strict_utf8"],
        "Skip files with any invalid UTF-8 byte (default: read them "
        "with U+FFFD, counted, unless over 1% of their bytes are invalid).",
    )
    flags.DEFINE_integer(
        "max_line_chars",
        d["max_line_chars"],
        "Lines longer than this many characters are cut into sentences (else at spaces) as they are read, counted.",
    )
    flags.DEFINE_bool("merge", False, "Only write the manifest over the finished parts in --output_dir.")


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if FLAGS.merge:
        merge_parts(FLAGS.output_dir)
        return
    options = (
        "tokenizer",
        "vocab",
        "lowercase",
        "sp_vocab_size",
        "sp_model_type",
        "max_seq_length",
        "eval_fraction",
        "num_shards",
        "builder_variant",
        "seed",
        "blanks_separate_docs",
        "hf_dataset",
        "hf_config",
        "hf_split",
        "hf_text_column",
        "hf_data_files",
        "max_documents",
        "overwrite",
        "num_workers",
        "part",
        "num_parts",
        "unit_mb",
        "strict_utf8",
        "max_line_chars",
    )
    prepare_corpus(FLAGS.input, FLAGS.output_dir, **{name: FLAGS[name].value for name in options})


if __name__ == "__main__":
    _define_flags()
    app.run(faults.exits_on_fault(main))
