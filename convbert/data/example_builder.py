"""ELECTRA pretraining-example builder (`ExampleBuilder` of google-research/electra build_pretraining_dataset.py;
docs/electra.md#example-builder).

Lines (token-id lists) accumulate until their total length reaches the target length or the document ends;
then one example `[CLS] A [SEP] B [SEP]` is emitted from all accumulated lines and the rest is discarded.

`variant='electra'` is the fixed upstream segment logic (a line goes to A if A is empty, if it fits under
`first_target`, or, while B is empty and A is under `first_target`, on a coin flip). `variant='convbert_repo'`
is the pre-fix copy in the ConvBERT repository ("A non-empty" and "B non-empty" in conditions 1 and 3): once A
has a line every later line joins A, so examples are almost always a single segment.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

VARIANTS = ("electra", "convbert_repo")
FIELDS = ("input_ids", "input_mask", "segment_ids")
SINGLE_SEGMENT_PROB = 0.1
RANDOM_LENGTH_PROB = 0.05
MIN_RANDOM_LENGTH = 5


class ExampleBuilder:
    """Packs tokenised lines into fixed-length examples; deterministic for a seed (numpy Generator).

    Each example is a dict of int32 arrays of shape [max_seq_length]: `input_ids` (padded with `pad_id`),
    `input_mask` (1 on real tokens) and `segment_ids` (0 for [CLS] A [SEP], 1 for B [SEP], 0 on padding).
    """

    def __init__(
        self,
        max_seq_length: int,
        *,
        cls_id: int,
        sep_id: int,
        pad_id: int = 0,
        variant: str = "electra",
        seed: int | Sequence[int] = 0,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"builder variant must be one of {VARIANTS}, got {variant!r}")
        if max_seq_length < MIN_RANDOM_LENGTH:
            raise ValueError(f"max_seq_length must be >= {MIN_RANDOM_LENGTH}, got {max_seq_length}")
        self.max_seq_length, self.variant = max_seq_length, variant
        self._cls, self._sep, self._pad = cls_id, sep_id, pad_id
        self._rng = np.random.default_rng(seed)
        self._lines: list[Sequence[int]] = []
        self._length = 0
        self.target_length = max_seq_length

    def add_line(self, ids: Sequence[int]) -> dict[str, np.ndarray] | None:
        """Adds one tokenised line; returns an example once the target length is reached. Empty lines are ignored."""
        if len(ids) == 0:
            return None
        self._lines.append(ids)
        self._length += len(ids)
        return self._create_example() if self._length >= self.target_length else None

    def end_document(self) -> dict[str, np.ndarray] | None:
        """Ends the current document: returns an example from the pending lines, if any."""
        return self._create_example() if self._length else None

    def build(self, documents: Iterable[Iterable[Sequence[int]]]) -> Iterator[dict[str, np.ndarray]]:
        """Examples from documents, each an iterable of tokenised lines."""
        for document in documents:
            for ids in document:
                if (example := self.add_line(ids)) is not None:
                    yield example
            if (example := self.end_document()) is not None:
                yield example

    def _goes_to_first(self, first: list[int], second: list[int], line: Sequence[int], first_target: int) -> bool:
        # Fixed logic: conditions 1 and 3 are "A empty" / "B empty"; ConvBERT repo: "A non-empty" / "B non-empty".
        fixed = self.variant == "electra"
        return (
            (len(first) == 0) == fixed
            or len(first) + len(line) < first_target
            or ((len(second) == 0) == fixed and len(first) < first_target and self._rng.random() < 0.5)
        )

    def _create_example(self) -> dict[str, np.ndarray]:
        # -3: [CLS], [SEP], [SEP]
        first_target = 100_000 if self._rng.random() < SINGLE_SEGMENT_PROB else (self.target_length - 3) // 2
        first, second = [], []
        for line in self._lines:
            (first if self._goes_to_first(first, second, line, first_target) else second).extend(line)
        first = first[: self.max_seq_length - 2]
        second = second[: max(0, self.max_seq_length - len(first) - 3)]

        self._lines, self._length = [], 0
        if self._rng.random() < RANDOM_LENGTH_PROB:
            self.target_length = int(self._rng.integers(MIN_RANDOM_LENGTH, self.max_seq_length, endpoint=True))
        else:
            self.target_length = self.max_seq_length
        return self._make_example(first, second)

    def _make_example(self, first: list[int], second: list[int]) -> dict[str, np.ndarray]:
        ids = [self._cls, *first, self._sep]
        segments = [0] * len(ids)
        if second:
            ids += [*second, self._sep]
            segments += [1] * (len(second) + 1)
        n, pad = len(ids), self.max_seq_length - len(ids)
        return {
            "input_ids": np.array(ids + [self._pad] * pad, np.int32),
            "input_mask": np.array([1] * n + [0] * pad, np.int32),
            "segment_ids": np.array(segments + [0] * pad, np.int32),
        }
