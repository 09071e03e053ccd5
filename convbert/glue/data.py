"""GLUE data: the original GLUE TSV folders or Hugging Face `nyu-mll/glue`, and featurisation
(docs/recipes.md#glue-inputs).

TSVs are split on tabs only: quote characters are ordinary text (GLUE fields start with `"` and hold unbalanced
quotes), and a leading UTF-8 byte-order mark (MRPC) is dropped. A malformed row (the wrong number of fields, or a
label outside the task's labels) is skipped with a warning naming the file, its lines and the count, as
google-research/electra `finetune/classification/classification_tasks.py` (`_load_glue`) skips rows it cannot
read (the original QQP train.tsv has some); more than `MAX_MALFORMED_FRACTION` of a file's rows, or any with
`strict`, is an error naming the file and line. An empty file, or a header without rows, is an error too.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging

from convbert.glue.tasks import Columns, Split, Task
from convbert.tokenization import TextTokenizer

STSB_MAX = 5.0  # STS-B scores are in [0, 5]; the model regresses score / 5 (docs/recipes.md#glue-inputs)
FEATURES = ("input_ids", "attention_mask", "token_type_ids")
MAX_MALFORMED_FRACTION = 0.01  # of a TSV file's rows, skipped with a warning unless `strict`


@dataclasses.dataclass
class Examples:
    """A split as columns. `labels`: int32 ids into `Task.labels`, float32 STS-B scores (0-5), or None."""

    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray | None
    index: list[str]  # the file's index column, else the row number

    def __len__(self) -> int:
        return len(self.text_a)

    def doubled_unordered(self) -> Examples:
        """Every pair again with its sentences swapped (MRPC and STS-B training, docs/recipes.md#glue-inputs)."""
        return Examples(
            self.text_a + self.text_b,
            self.text_b + self.text_a,
            np.concatenate([self.labels, self.labels]),
            self.index + self.index,
        )


def parse_label(task: Task, raw, where: str):
    """A label id (classification) or a float score in [0, 5] (STS-B); ValueError naming `where` otherwise."""
    if task.labels is None:
        try:
            score = float(raw)
        except ValueError:
            score = float("nan")
        if not 0.0 <= score <= STSB_MAX:
            raise ValueError(f"{where}: {task.name} label {raw!r} is not a score in [0, {STSB_MAX:g}]")
        return score
    if raw not in task.labels:
        raise ValueError(f"{where}: {task.name} label {raw!r} is not one of {', '.join(task.labels)}")
    return task.labels.index(raw)


def _label_array(task: Task, values: list) -> np.ndarray:
    return np.asarray(values, np.float32 if task.labels is None else np.int32)


def read_tsv(path: str) -> list[tuple[int, list[str]]]:
    """[(line number, fields)] of a tab-separated file, blank lines skipped; no quoting."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE file not found: {path} (expected the original GLUE layout under data_dir)")
    try:
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            return [(i, line.rstrip("\r\n").split("\t")) for i, line in enumerate(f, 1) if line.strip("\r\n")]
    except UnicodeDecodeError as error:
        undecodable = error
    with open(path, "rb") as f:  # the file and line of the first byte that is not UTF-8
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                utf16 = number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
                raise ValueError(
                    f"{path} line {number}: not UTF-8 ({'a UTF-16 byte-order mark' if utf16 else 'byte'} "
                    f"{raw[e.start : e.start + (2 if utf16 else 1)].hex()} at column {e.start + 1}): GLUE files are "
                    "UTF-8; convert it (e.g. iconv -f UTF-16 -t UTF-8)"
                ) from None
    raise ValueError(f"{path}: not UTF-8 ({undecodable})")


def load_tsv_split(data_dir: str, task: Task, split: Split, strict: bool = False) -> Examples:
    """Reads `data_dir/split.file` with the header names or column numbers of `split.columns`; malformed rows are
    skipped (at most `MAX_MALFORMED_FRACTION` of them) or, with `strict`, an error (see the module docstring)."""
    path = os.path.join(data_dir, split.file)
    rows = read_tsv(path)
    cols: Columns = split.columns
    fields = {k: getattr(cols, k) for k in ("text_a", "text_b", "label", "index") if getattr(cols, k) is not None}
    if not rows:
        raise ValueError(f"{path} is empty: expected {task.name} rows (re-download the GLUE data)")
    if cols.num_columns is None:  # a header row names the columns
        (_, header), rows = rows[0], rows[1:]
        missing = [name for name in fields.values() if name not in header]
        if missing:
            raise ValueError(f"{path}:1: header lacks column(s) {missing}; header is {header}")
        if not rows:
            raise ValueError(f"{path} has a header but no rows")
        positions = {k: header.index(name) for k, name in fields.items()}
        num_columns = len(header)
    else:
        positions, num_columns = fields, cols.num_columns
    out = {k: [] for k in positions}
    malformed = []  # (line, reason)
    for line, row in rows:
        try:
            if len(row) != num_columns:
                raise ValueError(f"{path}:{line}: expected {num_columns} tab-separated columns, found {len(row)}")
            values = {
                k: parse_label(task, row[i], f"{path}:{line}") if k == "label" else row[i] for k, i in positions.items()
            }
        except ValueError as e:
            if strict:
                raise
            malformed.append((line, str(e)))
            continue
        for k, v in values.items():
            out[k].append(v)
    if malformed:
        lines = ", ".join(str(line) for line, _ in malformed[:20]) + (", ..." if len(malformed) > 20 else "")
        if len(malformed) > MAX_MALFORMED_FRACTION * len(rows):
            raise ValueError(
                f"{path}: {len(malformed)} of {len(rows)} rows are malformed (more than "
                f"{MAX_MALFORMED_FRACTION:.0%}; lines {lines}); first: {malformed[0][1]}"
            )
        logging.warning(
            "%s: skipped %d malformed row(s) of %d (lines %s); first: %s",
            path,
            len(malformed),
            len(rows),
            lines,
            malformed[0][1],
        )
    n = len(out["text_a"])
    return Examples(
        out["text_a"],
        out.get("text_b"),
        _label_array(task, out["label"]) if "label" in out else None,
        out.get("index", [str(i) for i in range(n)]),
    )


def load_hf_split(hf_dataset: str, task: Task, split: Split) -> Examples:
    """Loads `split` from the Hugging Face hub (`nyu-mll/glue`); label -1 (test) means unlabelled."""
    import datasets

    config, hf_split = split.hf
    ds = datasets.load_dataset(hf_dataset, config, split=hf_split)
    a, b = task.hf_text
    where = f"{hf_dataset}/{config}[{hf_split}]"
    raw = list(ds["label"])
    if split.columns.label is None or all(x == -1 for x in raw):
        labels = None
    elif task.labels is None:
        labels = _label_array(task, [parse_label(task, x, where) for x in raw])
    else:
        bad = sorted({x for x in raw if not 0 <= x < len(task.labels)})
        if bad:
            raise ValueError(f"{where}: {task.name} label ids {bad} are outside 0..{len(task.labels) - 1}")
        labels = _label_array(task, raw)
    return Examples(list(ds[a]), list(ds[b]) if b else None, labels, [str(i) for i in ds["idx"]])


def load_split(task: Task, split: Split, data_dir: str, hf_dataset: str, strict: bool = False) -> Examples:
    """From `data_dir` (original GLUE layout; `strict`: see `load_tsv_split`) when given, else from the hub dataset
    `hf_dataset`."""
    return load_tsv_split(data_dir, task, split, strict) if data_dir else load_hf_split(hf_dataset, task, split)


# ------------------------------------------------------------------------------------------------
# featurisation


def truncate_pair(a: list[int], b: list[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """Pops the last token of the longer side (of b on ties) until len(a) + len(b) <= max_tokens, as
    yitu-opensource/ConvBert `finetune/classification/classification_tasks.py` (docs/recipes.md#glue-inputs)."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


def featurize(examples: Examples, tokenizer: TextTokenizer, max_seq_length: int, task: Task) -> dict[str, np.ndarray]:
    """[CLS] a [SEP] (b [SEP]) with segment ids 0 / 1, padded with [PAD] to `max_seq_length`, as
    google-research/electra `finetune/classification/classification_tasks.py` `featurize`: a text_b without tokens
    (e.g. empty) gives the single-sentence layout there too.

    Returns int32 arrays [N, max_seq_length] and `labels`: int32 ids, or STS-B scores / 5 as float32 (zeros for an
    unlabelled split).
    """
    ids_a = tokenizer.encode_batch(examples.text_a)
    ids_b = tokenizer.encode_batch(examples.text_b) if examples.text_b is not None else [[]] * len(examples)
    n = len(examples)
    out = {k: np.zeros((n, max_seq_length), np.int32) for k in FEATURES}
    out["input_ids"][:] = tokenizer.pad_token_id
    cls, sep = [tokenizer.cls_token_id], [tokenizer.sep_token_id]
    for i in range(n):
        if not ids_b[i]:
            tokens, first = cls + ids_a[i][: max_seq_length - 2] + sep, max_seq_length
        else:
            a, b = truncate_pair(ids_a[i], ids_b[i], max_seq_length - 3)
            tokens, first = cls + a + sep + b + sep, len(a) + 2
        out["input_ids"][i, : len(tokens)] = tokens
        out["attention_mask"][i, : len(tokens)] = 1
        out["token_type_ids"][i, first : len(tokens)] = 1
    if examples.labels is None:
        out["labels"] = np.zeros(n, np.float32 if task.labels is None else np.int32)
    else:
        out["labels"] = examples.labels / STSB_MAX if task.labels is None else examples.labels.copy()
    return out
