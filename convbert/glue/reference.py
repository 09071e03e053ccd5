"""Reported ConvBERT GLUE numbers, printed beside ours in `results.md` (docs/recipes.md#glue-test,
docs/recipes.md#third-party-dev-numbers).

Each reference is {task: {metric: value}} in the keys of `convbert.glue.metrics`; scores are computed from
them with the same functions as ours (the paper's 78.9 / 79.7 / 84.9 / 86.4 and the leaderboard's 77.6 /
78.6 / 83.2 come out to the rounding).
"""

from __future__ import annotations

from convbert.finetuning.reference import Reference

# The paper's Table 3 columns (ConvBERT, arXiv 2008.02496): MNLI QNLI QQP RTE SST-2 MRPC CoLA STS-B, each the
# task's paper metric.
_PAPER_COLUMNS = (
    ("mnli", "accuracy_m"),
    ("qnli", "accuracy"),
    ("qqp", "accuracy"),
    ("rte", "accuracy"),
    ("sst2", "accuracy"),
    ("mrpc", "accuracy"),
    ("cola", "mcc"),
    ("stsb", "spearman"),
)
# GLUE leaderboard row of the 4M-update models (docs/recipes.md#glue-test): CoLA SST-2 MRPC-F1 MRPC-acc STS-P STS-S
# QQP-F1 QQP-acc MNLI-m MNLI-mm QNLI RTE WNLI.
_LEADERBOARD_COLUMNS = (
    ("cola", "mcc"),
    ("sst2", "accuracy"),
    ("mrpc", "f1"),
    ("mrpc", "accuracy"),
    ("stsb", "pearson"),
    ("stsb", "spearman"),
    ("qqp", "f1"),
    ("qqp", "accuracy"),
    ("mnli", "accuracy_m"),
    ("mnli", "accuracy_mm"),
    ("qnli", "accuracy"),
    ("rte", "accuracy"),
    ("wnli", "accuracy"),
)
# Third-party dev numbers of YituTech/conv-bert-base (JunnYu/paddle_convbert README,
# docs/recipes.md#third-party-dev-numbers): same columns as the leaderboard, no WNLI.
_DEV_COLUMNS = _LEADERBOARD_COLUMNS[:-1]


def _row(columns, values: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (task, metric), v in zip(columns, values.split(), strict=True):
        out.setdefault(task, {})[metric] = float(v)
    return out


REFERENCES: dict[str, list[Reference]] = {
    "small": [
        Reference("paper, test", _row(_PAPER_COLUMNS, "81.5 88.5 88.0 62.2 89.2 83.3 54.8 83.4")),
        Reference(
            "leaderboard / paper 4M updates, test",
            _row(_LEADERBOARD_COLUMNS, "56.7 91.2 89.1 85.1 84.6 83.8 69.9 88.4 82.1 80.8 88.5 65.1 65.1"),
        ),
    ],
    "medium_small": [
        Reference("paper, test", _row(_PAPER_COLUMNS, "82.1 88.7 88.4 65.3 89.2 84.6 56.4 82.9")),
        Reference(
            "leaderboard / paper 4M updates, test",
            _row(_LEADERBOARD_COLUMNS, "59.1 92.3 89.6 85.7 86.3 85.3 70.2 88.6 82.9 81.9 89.2 66.0 65.1"),
        ),
    ],
    "base": [
        Reference("paper, test", _row(_PAPER_COLUMNS, "85.3 92.4 89.6 74.7 95.0 88.2 66.0 88.2")),
        Reference(
            "leaderboard / paper 4M updates, test",
            _row(_LEADERBOARD_COLUMNS, "67.8 95.7 91.4 88.3 90.4 89.7 73.0 90.0 88.3 87.4 93.2 77.9 65.1"),
        ),
        Reference(
            "third-party dev, best checkpoint [JunnYu/paddle_convbert]",
            _row(_DEV_COLUMNS, "69.2 94.6 93.1 90.4 90.8 90.7 89.4 92.0 88.1 87.9 93.0 83.4"),
        ),
    ],
}
