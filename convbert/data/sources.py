"""Raw text as documents and lines: input files and folders, their encoding, over-long lines, Hugging Face datasets.

Documents: one per input file (folders are searched recursively for *.txt), or separated by blank lines with
`blanks_separate_docs`, or one per row of a Hugging Face dataset (streamed with `datasets.load_dataset(streaming=True)`,
so the raw corpus is never stored locally, or a `save_to_disk` folder). Lines are the example builder's sentences; a
line longer than `max_line_chars` (a file without newlines) is cut at sentence ends, else at spaces, as it is read,
and counted: files are streamed, never held whole. Empty and binary files are skipped and counted; invalid UTF-8
bytes are read as U+FFFD and counted, unless they are more than MAX_INVALID_FRACTION of a file (another encoding) or
`strict_utf8` is set: then the file is skipped as non-UTF-8.
"""

from __future__ import annotations

import codecs
import os
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from absl import logging

DEMO_CORPUS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data", "demo_corpus"
)
SKIP_REASONS = ("empty", "binary", "non_utf8")
MAX_LINE_CHARS = 100_000  # a longer line (a file without newlines) is cut into sentences as it is read
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_INVALID_FRACTION = 0.01  # of a file's bytes; more invalid UTF-8 means another encoding: the file is skipped


def input_list(inputs: str | Sequence[str] | None, hf_dataset: str | None) -> list[str]:
    """Input paths from a comma-separated string or a list; the bundled demo corpus when there are none."""
    if isinstance(inputs, str):
        inputs = [p for p in inputs.split(",") if p]
    return list(inputs or []) if inputs or hf_dataset else [DEMO_CORPUS_DIR]


def find_text_files(inputs: Sequence[str]) -> list[str]:
    """Input files, with folders expanded to their *.txt files (sorted); a missing path raises FileNotFoundError."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(
                os.path.join(root, name) for root, _, names in os.walk(path) for name in names if name.endswith(".txt")
            )
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


def readable_files(inputs: Sequence[str], strict_utf8: bool) -> tuple[list[str], dict[str, list[str]], dict[str, int]]:
    """The text files of `inputs` to read (`find_text_files`, in order), the skipped ones by reason
    (`classify_file`) and {path: invalid UTF-8 bytes} of the files read with replacement characters; skipped and
    replaced files are logged."""
    files: list[str] = []
    skipped: dict[str, list[str]] = {r: [] for r in SKIP_REASONS}
    replaced: dict[str, int] = {}
    for path in find_text_files(inputs):
        reason, invalid = classify_file(path, strict_utf8)
        (skipped[reason] if reason else files).append(path)
        if invalid and not reason:
            replaced[path] = invalid
    for reason, paths in skipped.items():
        if paths:
            logging.warning(
                "skipped %d %s file(s), e.g. %s%s",
                len(paths),
                reason,
                paths[0],
                ""
                if reason != "non_utf8"
                else f" (strict_utf8={strict_utf8}; without it a file is "
                f"read with U+FFFD for up to {MAX_INVALID_FRACTION:.0%} invalid bytes)",
            )
    if replaced:
        logging.warning(
            "read %d file(s) with %d invalid UTF-8 byte(s) decoded as U+FFFD, e.g. %s (strict_utf8 skips them)",
            len(replaced),
            sum(replaced.values()),
            next(iter(replaced)),
        )
    return files, skipped, replaced


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


def text_lines(text: str, max_chars: int, long_lines: list[int]) -> list[str]:
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


def file_lines(path: str, max_chars: int, long_lines: list[int]) -> Iterator[str]:
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


def open_hf(name: str, config: str | None, split: str, text_column: str, data_files: Any) -> Any:
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


def is_streamed(hf: Any) -> bool:
    """Whether `open_hf` streams the dataset (an IterableDataset, read by shards) rather than loading it from disk."""
    import datasets

    return isinstance(hf, datasets.IterableDataset)


def hf_texts(rows: Any, column: str) -> Iterator[str]:
    """The texts of `rows` (a dataset or a shard of one) in `column`, in order ('' for a missing one)."""
    for batch in rows.iter(batch_size=1000):
        if column not in batch:
            raise ValueError(f"dataset has no column {column!r}; columns: {list(batch)}")
        yield from (text or "" for text in batch[column])
