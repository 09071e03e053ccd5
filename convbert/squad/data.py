"""SQuAD data: the official JSON files or `rajpurkar/squad` / `rajpurkar/squad_v2` from the hub, answer checks,
and featurisation as google-research/electra `finetune/qa/qa_tasks.py` (sliding windows over the context, the
question truncated, answers mapped to token spans), with the tokenizer's character offsets (WordPiece or
SentencePiece) in place of its whitespace tokens: every token knows its span of the original context, so predicted
spans map back to the exact text.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import logging

from convbert.tokenization import TextTokenizer

FILES = {
    "v1": {"train": "train-v1.1.json", "dev": "dev-v1.1.json"},
    "v2": {"train": "train-v2.0.json", "dev": "dev-v2.0.json"},
}
HF_DATASETS = {"v1": "rajpurkar/squad", "v2": "rajpurkar/squad_v2"}
HF_SPLITS = {"train": "train", "dev": "validation"}
FEATURES = ("input_ids", "attention_mask", "token_type_ids")
LABELS = ("start_positions", "end_positions", "is_impossible")


@dataclasses.dataclass(frozen=True)
class Example:
    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character offset in `context`), as in the file
    is_impossible: bool = False


# ------------------------------------------------------------------------------------------------
# loading


def _get(obj, key, kind, where: str):
    """obj[key] checked to be of type `kind`; ValueError naming the file position and the key otherwise."""
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def parse_squad(dataset: dict, version: str, where: str) -> list[Example]:
    """The questions of an official SQuAD JSON object (`{"data": [{"paragraphs": [{"context", "qas"}]}]}`).
    v1.1 questions must have answers; v2.0 ones are unanswerable when `is_impossible` (or, without that key,
    when they have no answers)."""
    out = []
    for i, article in enumerate(_get(dataset, "data", list, where)):
        for j, paragraph in enumerate(_get(article, "paragraphs", list, f"{where}: data[{i}]")):
            at = f"{where}: data[{i}].paragraphs[{j}]"
            context = _get(paragraph, "context", str, at)
            for k, qa in enumerate(_get(paragraph, "qas", list, at)):
                q_at = f"{at}.qas[{k}]"
                qid, question = _get(qa, "id", str, q_at), _get(qa, "question", str, q_at)
                answers = tuple(
                    (_get(a, "text", str, f"{q_at}.answers[{m}]"), _get(a, "answer_start", int, f"{q_at}.answers[{m}]"))
                    for m, a in enumerate(_get(qa, "answers", list, q_at))
                )
                impossible = bool(qa.get("is_impossible", not answers)) if version == "v2" else False
                if not answers and not impossible:
                    raise ValueError(
                        f"{q_at}.answers: empty for an answerable question"
                        + (" (SQuAD v1.1 has no unanswerable questions: use version v2)" if version == "v1" else "")
                    )
                out.append(Example(qid, question, context, () if impossible else answers, impossible))
    return out


def load_json(path: str, version: str) -> list[Example]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SQuAD file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    return parse_squad(dataset, version, path)


def load_hf(version: str, split: str) -> list[Example]:
    """`rajpurkar/squad` (v1) or `rajpurkar/squad_v2` (v2) from the Hugging Face hub (needs internet)."""
    import datasets

    ds = datasets.load_dataset(HF_DATASETS[version], split=HF_SPLITS[split])
    return [
        Example(
            r["id"],
            r["question"],
            r["context"],
            tuple(zip(r["answers"]["text"], r["answers"]["answer_start"], strict=True)),
            version == "v2" and not r["answers"]["text"],
        )
        for r in ds
    ]


def load_split(version: str, split: str, data_dir: str) -> list[Example]:
    """`split` ('train' | 'dev') from `data_dir`'s official file, or from the hub when `data_dir` is empty."""
    if data_dir:
        return load_json(os.path.join(data_dir, FILES[version][split]), version)
    return load_hf(version, split)


def answer_matches(example: Example, answer: tuple[str, int]) -> bool:
    text, start = answer
    return bool(text) and example.context[start : start + len(text)] == text


def check_answers(examples: list[Example], where: str) -> list[tuple[str, str, int]]:
    """(question id, answer text, offset) of every answer whose text is not the context at its offset; logged
    with the first few cases (training drops such questions, see `featurize`; nothing is shifted)."""
    bad = [
        (ex.qid, text, start) for ex in examples for text, start in ex.answers if not answer_matches(ex, (text, start))
    ]
    if bad:
        logging.warning(
            "%s: %d answer(s) do not match the context at their offset, e.g. %s",
            where,
            len(bad),
            "; ".join(f"{q}: {t!r} at {s}" for q, t, s in bad[:3]),
        )
    return bad


# ------------------------------------------------------------------------------------------------
# featurisation


def doc_spans(num_tokens: int, max_tokens: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over `num_tokens` context tokens: `max_tokens` long, starts `stride` apart,
    the last one ending at the context's end (qa_tasks.py); one empty window for an empty context."""
    spans, start = [], 0
    while True:
        length = min(num_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= num_tokens:
            return spans
        start += min(length, stride)


def max_context_window(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
    """[num_tokens]: the window where each token has the most context, min(left, right) + 0.01 * window length,
    the first such window on ties (`_check_is_max_context`)."""
    best, score = np.zeros(num_tokens, np.int64), np.full(num_tokens, -np.inf)
    for w, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        s = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = s > score[pos]
        best[pos[better]], score[pos[better]] = w, s[better]
    return best


def answer_token_span(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """(first, last) context token overlapping characters [start, end), or None when no token does."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
    return (inside[0], inside[-1]) if inside else None


def featurize(
    examples: list[Example],
    tokenizer: TextTokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    training: bool,
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Windows `[CLS] question [SEP] context window [SEP]` (segment ids 0 / 1, padded with 0) of every example.

    `tokenizer`: its `encode_offsets` gives each token's character span. Returns (features, counts).
    features: input_ids, attention_mask, token_type_ids [W, T] int32 and example_index [W] (into `examples`);
    training adds start_positions, end_positions (the answer's tokens, 0 = [CLS] for unanswerable questions and for
    windows without the answer, as qa_tasks.py) and is_impossible [W] (the question's); evaluation adds offsets
    [W, T, 2] (the character span of each context token, -1 elsewhere) and max_context [W, T] (whether this window
    is the token's max-context window). Training uses each question's first answer and drops questions whose answer
    does not match the context (counted in counts['answer_mismatch']).
    """
    if max_seq_length - max_query_length - 3 < 1:
        raise ValueError(
            f"max_seq_length={max_seq_length} leaves no room for the context after max_query_length="
            f"{max_query_length} and [CLS] [SEP] [SEP]"
        )
    contexts = list(dict.fromkeys(ex.context for ex in examples))
    encoded = dict(zip(contexts, tokenizer.encode_offsets(contexts), strict=True))
    questions = tokenizer.encode_offsets([ex.question for ex in examples])
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    extra = LABELS if training else ("offsets", "max_context")
    rows: dict[str, list] = {k: [] for k in (*FEATURES, "example_index", *extra)}
    counts = {"answer_mismatch": 0, "windows_without_answer": 0}
    for index, (ex, (q_ids, _)) in enumerate(zip(examples, questions, strict=True)):
        q_ids = q_ids[:max_query_length]
        ids, offsets = encoded[ex.context]
        answer = None
        if training and not ex.is_impossible:
            text, start = ex.answers[0]
            answer = answer_token_span(offsets, start, start + len(text)) if answer_matches(ex, ex.answers[0]) else None
            if answer is None:
                counts["answer_mismatch"] += 1
                continue
        spans = doc_spans(len(ids), max_seq_length - len(q_ids) - 3, doc_stride)
        best = max_context_window(spans, len(ids))
        shift = len(q_ids) + 2  # window token i sits at position shift + i
        for w, (start, length) in enumerate(spans):
            tokens = [cls, *q_ids, sep, *ids[start : start + length], sep]
            n = len(tokens)
            rows["input_ids"].append(tokens + [pad] * (max_seq_length - n))
            rows["attention_mask"].append([1] * n + [0] * (max_seq_length - n))
            rows["token_type_ids"].append([0] * shift + [1] * (n - shift) + [0] * (max_seq_length - n))
            rows["example_index"].append(index)
            if training:
                inside = answer is not None and start <= answer[0] and answer[1] < start + length
                counts["windows_without_answer"] += answer is not None and not inside
                rows["start_positions"].append(answer[0] - start + shift if inside else 0)
                rows["end_positions"].append(answer[1] - start + shift if inside else 0)
                rows["is_impossible"].append(int(ex.is_impossible))
            else:
                span_offsets = np.full((max_seq_length, 2), -1, np.int32)
                span_offsets[shift : shift + length] = np.asarray(offsets[start : start + length], np.int32).reshape(
                    -1, 2
                )
                rows["offsets"].append(span_offsets)
                is_max = np.zeros(max_seq_length, bool)
                is_max[shift : shift + length] = best[start : start + length] == w
                rows["max_context"].append(is_max)
    out = {k: np.asarray(v, bool if k == "max_context" else np.int32) for k, v in rows.items()}
    if not rows["input_ids"]:  # keep the shapes of an empty split
        out.update({k: np.zeros((0, max_seq_length), np.int32) for k in FEATURES})
    return out, counts
