"""GLUE metrics, the two GLUE scores against the paper / leaderboard (docs/recipes.md#glue-metrics-and-score,
docs/recipes.md#glue-test), submission format."""

import re

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from convbert.glue import metrics, report, submission
from convbert.glue.reference import REFERENCES
from convbert.glue.tasks import TASKS


def test_metrics_against_hand_computed_values():
    labels, preds = [1, 1, 0, 0], [1, 0, 0, 0]
    assert metrics.accuracy(labels, preds) == pytest.approx(75.0)
    # TP 1, FP 0, FN 1: precision 1, recall 0.5 -> F1 2/3.
    assert metrics.f1(labels, preds) == pytest.approx(200 / 3)
    # MCC = (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (1*2 - 0) / sqrt(1*2*2*3).
    assert metrics.mcc(labels, preds) == pytest.approx(100 * 2 / np.sqrt(12))
    assert metrics.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(100 * 0.9933992677987828)
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(80.0)  # 1 - 6 * 2 / (4 * 15)
    assert metrics.pearson([1, 2, 3], [5, 5, 5]) == 0.0  # undefined for constant predictions
    assert metrics.mcc([1, 0, 1], [1, 1, 1]) == 0.0


def test_metrics_against_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert metrics.accuracy(labels, preds) == pytest.approx(100 * sklearn.metrics.accuracy_score(labels, preds))
    assert metrics.f1(labels, preds) == pytest.approx(100 * sklearn.metrics.f1_score(labels, preds))
    assert metrics.mcc(labels, preds) == pytest.approx(100 * sklearn.metrics.matthews_corrcoef(labels, preds))
    x, y = rng.normal(size=100), rng.normal(size=100)
    assert metrics.pearson(x, y) == pytest.approx(100 * scipy.stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(100 * scipy.stats.spearmanr(x, y)[0])
    mnli = metrics.task_metrics(TASKS["mnli"], [0, 1, 2], [0, 1, 1], "mm")
    assert mnli == {"accuracy_mm": pytest.approx(200 / 3)}
    assert set(metrics.task_metrics(TASKS["qqp"], labels, preds)) == {"accuracy", "f1"}


def test_glue_score_reproduces_the_paper_and_the_leaderboard():
    base_4m = REFERENCES["base"][1].results  # the paper's 4M-update row = the leaderboard entry
    # (88.3 + 93.2 + 90.0 + 77.9 + 95.7 + 88.3 + 67.8 + 89.7) / 8 = 86.36 -> the paper's 86.4.
    assert metrics.glue_score(base_4m) == pytest.approx(86.3625)
    assert round(metrics.glue_score(base_4m), 1) == 86.4
    assert metrics.leaderboard_score(base_4m) == pytest.approx(748.95 / 9)  # 83.2 on the leaderboard
    expected = {"small": (78.9, 80.1, 77.6), "medium_small": (79.7, 81.1, 78.6), "base": (84.9, 86.4, 83.2)}
    for size, (paper, paper_4m, leaderboard) in expected.items():
        refs = REFERENCES[size]
        assert round(metrics.glue_score(refs[0].results), 1) == paper
        assert round(metrics.glue_score(refs[1].results), 1) == paper_4m
        assert round(metrics.leaderboard_score(refs[1].results), 1) == leaderboard
    assert metrics.leaderboard_score(REFERENCES["base"][2].results) is None  # no WNLI in the third-party numbers
    partial = {k: v for k, v in base_4m.items() if k != "rte"}
    assert metrics.glue_score(partial) is None and metrics.missing_tasks(partial) == ["rte"]


def test_submission_files_use_the_server_labels():
    def rows(task, preds):
        return submission.format_predictions(TASKS[task], [str(i) for i in range(len(preds))], np.array(preds))

    assert rows("mnli", [0, 1, 2]) == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
    assert rows("qnli", [1, 0]).splitlines()[1:] == ["0\tnot_entailment", "1\tentailment"]
    assert rows("rte", [0]).splitlines()[1] == "0\tentailment"
    assert rows("cola", [1, 0]).splitlines()[1:] == ["0\t1", "1\t0"]
    assert rows("stsb", [0.5, 1.2, -0.1]).splitlines()[1:] == ["0\t2.500", "1\t5.000", "2\t0.000"]
    with pytest.raises(ValueError, match="2 predictions for 3 test examples"):
        submission.format_predictions(TASKS["sst2"], ["0", "1", "2"], np.array([0, 1]))
    assert len(submission.SUBMISSION_FILES) == 11 and "AX.tsv" in submission.SUBMISSION_FILES


def test_results_table_puts_the_paper_beside_ours():
    seeds = lambda *vals: [{"seed": i, "dev": {"accuracy": v}} for i, v in enumerate(vals)]
    results = {"rte": {"median": {"accuracy": 70.0}, "seeds": seeds(68.0, 70.0, 71.0), "submission_seed": 1}}
    summary = report.summarize(results, "base", "YituTech/conv-bert-base")
    assert summary["glue_score"] is None and "cola" in summary["missing_for_glue_score"]
    table = report.markdown(summary)
    assert "| RTE | acc* | 68.0 | 70.0 | 71.0 | 70.0 | 74.7 | 77.9 | 83.4 |" in table
    assert "| GLUE score (paper: 8 tasks, no WNLI) |  |  |  |  |  | 84.9 | 86.4 | 87.7 |" in table
    # Every reported column names its source: the paper's table and the third-party README, not private notes.
    assert "| third-party dev, best checkpoint [JunnYu/paddle_convbert] |" in table
    prose = " ".join(table.split())
    assert "(ConvBERT, arXiv 2008.02496, Table 3) and the GLUE leaderboard are **test**-set numbers" in prose
    assert "best-checkpoint selection (JunnYu/paddle_convbert README)" in prose
    assert not re.search(r"\bspec\b|\[JY\]", table)
