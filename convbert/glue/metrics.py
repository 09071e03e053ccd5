"""GLUE metrics (all x 100) and the two GLUE scores (docs/recipes.md#glue-metrics-and-score).

* `glue_score`: the paper's number, the mean of CoLA MCC, SST-2 acc, MRPC acc, STS-B Spearman, QQP acc,
  MNLI-m acc, QNLI acc and RTE acc (WNLI excluded): 86.4 for ConvBERT-base.
* `leaderboard_score`: the GLUE leaderboard's "Score", the mean over those eight tasks plus WNLI, where MRPC
  (F1, acc), STS-B (Pearson, Spearman), QQP (F1, acc) and MNLI (m, mm) contribute the mean of their two
  numbers: 83.2 for the same submission.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.stats
import sklearn.metrics

from convbert.glue.tasks import LEADERBOARD_TASKS, PAPER_TASKS, TASKS, Task


def _finite(x: float) -> float:
    """An undefined correlation (constant predictions) counts as 0, as scikit-learn's MCC does."""
    return float(x) if np.isfinite(x) else 0.0


def accuracy(labels, predictions) -> float:
    return 100.0 * float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels, predictions) -> float:
    """F1 of the positive class (label id 1: MRPC equivalent, QQP duplicate)."""
    return 100.0 * float(sklearn.metrics.f1_score(labels, predictions, pos_label=1, zero_division=0.0))


def mcc(labels, predictions) -> float:
    return 100.0 * float(sklearn.metrics.matthews_corrcoef(labels, predictions))


def pearson(labels, predictions) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0
    return 100.0 * _finite(scipy.stats.pearsonr(predictions, labels)[0])


def spearman(labels, predictions) -> float:
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0
    return 100.0 * _finite(scipy.stats.spearmanr(predictions, labels)[0])


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}


def task_metrics(task: Task, labels, predictions, suffix: str = "") -> dict[str, float]:
    """{metric[_suffix]: value} for one dev split; `predictions` are label ids, or scores for STS-B."""
    return {f"{m}_{suffix}" if suffix else m: METRICS[m](labels, predictions) for m in task.metrics}


def missing_tasks(results: Mapping[str, Mapping[str, float]], tasks=PAPER_TASKS) -> list[str]:
    return [t for t in tasks if t not in results]


def glue_score(results: Mapping[str, Mapping[str, float]]) -> float | None:
    """The paper's GLUE score from {task: {metric: value}}; None unless all eight tasks are present."""
    if missing_tasks(results, PAPER_TASKS):
        return None
    return float(np.mean([results[t][TASKS[t].paper_metric] for t in PAPER_TASKS]))


def leaderboard_score(results: Mapping[str, Mapping[str, float]]) -> float | None:
    """The leaderboard-style score (nine tasks incl. WNLI); None unless all nine are present."""
    if missing_tasks(results, LEADERBOARD_TASKS):
        return None
    return float(np.mean([np.mean([results[t][m] for m in TASKS[t].leaderboard_metrics]) for t in LEADERBOARD_TASKS]))
