"""From window logits to answer texts, as google-research/electra `finetune/qa/qa_metrics.py` (`write_predictions`,
independent start / end scores): per window the `n_best_size` best starts and ends form candidate pairs; a pair
counts when both ends are context tokens, the start is in its max-context window, end >= start and it spans at
most `max_answer_length` tokens; the best start + end logit over all windows of a question wins and is cut from the
context through the tokens' character offsets. v2.0: the no-answer odds are the lowest answerability logit over
the question's windows (qa_metrics.py with `answerable_classifier`).
"""

from __future__ import annotations

import numpy as np

from convbert.squad.data import Example


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: np.ndarray,
    max_context: np.ndarray,
    n_best_size: int,
    max_answer_length: int,
) -> tuple[float, int, int] | None:
    """(score, start, end) of the best valid pair of one window (logits [T], offsets [T, 2], max_context [T]),
    or None; ties keep the better-ranked start, then end."""
    starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
    ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    in_context = offsets[:, 0] >= 0
    length = ends[None, :] - starts[:, None] + 1
    valid = (
        (in_context[starts] & max_context[starts])[:, None]
        & in_context[ends][None, :]
        & (length >= 1)
        & (length <= max_answer_length)
    )
    if not valid.any():
        return None
    scores = np.where(valid, start_logits[starts][:, None] + end_logits[ends][None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    return float(scores[i, j]), int(starts[i]), int(ends[j])


def decode(
    examples: list[Example],
    features: dict[str, np.ndarray],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    null_logits: np.ndarray | None,
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> tuple[dict[str, str], dict[str, float] | None]:
    """({question id: best non-null answer text, '' when no window has a valid span}, {question id: no-answer
    odds} or None without `null_logits`). features: example_index [W], offsets [W, T, 2], max_context [W, T]
    from `data.featurize(training=False)`; logits [W, T], null_logits [W]."""
    best: dict[int, tuple[float, int, int, int]] = {}  # example -> (score, window, start, end)
    odds: dict[int, float] = {}
    for w, index in enumerate(features["example_index"].tolist()):
        span = best_span(
            start_logits[w],
            end_logits[w],
            features["offsets"][w],
            features["max_context"][w],
            n_best_size,
            max_answer_length,
        )
        if span is not None and (index not in best or span[0] > best[index][0]):
            best[index] = (span[0], w, span[1], span[2])
        if null_logits is not None:
            odds[index] = min(odds.get(index, np.inf), float(null_logits[w]))
    predictions = {}
    for index, ex in enumerate(examples):
        if index in best:
            _, w, s, e = best[index]
            predictions[ex.qid] = ex.context[features["offsets"][w, s, 0] : features["offsets"][w, e, 1]]
        else:
            predictions[ex.qid] = ""
    if null_logits is None:
        return predictions, None
    return predictions, {ex.qid: odds[i] for i, ex in enumerate(examples)}


def apply_threshold(predictions: dict[str, str], null_odds: dict[str, float], threshold: float) -> dict[str, str]:
    """'' for every question whose no-answer odds exceed `threshold` (the official script's na_prob_thresh)."""
    return {qid: "" if null_odds[qid] > threshold else text for qid, text in predictions.items()}
