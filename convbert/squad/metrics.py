"""The official SQuAD metrics: v1.1 (`evaluate-v1.1.py`) and v2.0 (`evaluate-v2.0.py`, as copied into
google-research/electra `finetune/qa/squad_official_eval.py`), on {question id: answer texts} instead of the JSON.

Both normalise answers (lower case, punctuation and the articles a / an / the removed, whitespace collapsed) and
take the maximum over the ground truths. v1.1 counts a question without a prediction as 0; v2.0 skips it, treats
a question without answers as having the single answer "", and with no-answer odds also reports the best
threshold: `best_exact` / `best_f1` are the scores when every question whose odds exceed the chosen threshold is
answered "".
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, then the articles, then collapse whitespace (the official order)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_v1(gold: str, pred: str) -> float:
    """v1.1 token F1 (0 when nothing is shared, including an empty prediction)."""
    return _f1(normalize_answer(gold).split(), normalize_answer(pred).split(), empty_agrees=False)


def f1_v2(gold: str, pred: str) -> float:
    """v2.0 token F1: an empty gold or prediction scores 1 when both are empty, else 0."""
    return _f1(normalize_answer(gold).split(), normalize_answer(pred).split(), empty_agrees=True)


def _f1(gold: list[str], pred: list[str], empty_agrees: bool) -> float:
    if empty_agrees and (not gold or not pred):
        return float(gold == pred)
    num_same = sum((collections.Counter(gold) & collections.Counter(pred)).values())
    if num_same == 0:
        return 0.0
    precision, recall = num_same / len(pred), num_same / len(gold)
    return 2 * precision * recall / (precision + recall)


def evaluate_v1(gold: Mapping[str, Sequence[str]], preds: Mapping[str, str]) -> dict[str, float]:
    """{'exact_match', 'f1'} in percent over every question of `gold` ({id: answer texts}); 'total'."""
    em = f1 = 0.0
    for qid, answers in gold.items():
        if qid in preds:
            em += max(exact_match(a, preds[qid]) for a in answers)
            f1 += max(f1_v1(a, preds[qid]) for a in answers)
    return {"exact_match": 100.0 * em / len(gold), "f1": 100.0 * f1 / len(gold), "total": len(gold)}


def raw_scores_v2(
    gold: Mapping[str, Sequence[str]], preds: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, float]]:
    """({id: exact}, {id: F1}) of the predicted questions; unanswerable questions have the one answer ''."""
    exact, f1 = {}, {}
    for qid, answers in gold.items():
        if qid not in preds:
            continue
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact[qid] = float(max(exact_match(a, preds[qid]) for a in answers))
        f1[qid] = max(f1_v2(a, preds[qid]) for a in answers)
    return exact, f1


def apply_no_answer_threshold(
    scores: Mapping[str, float], na_probs: Mapping[str, float], has_answer: Mapping[str, bool], threshold: float
) -> dict[str, float]:
    """Scores when every question with odds > `threshold` is answered '' (1 for unanswerable ones, else 0)."""
    return {qid: float(not has_answer[qid]) if na_probs[qid] > threshold else s for qid, s in scores.items()}


def best_threshold(
    preds: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float], has_answer: Mapping[str, bool]
) -> tuple[float, float]:
    """(best score in percent, its threshold): sweeps the questions in increasing odds, from all answered ''
    to answering every question up to the current one (the official `find_best_thresh`)."""
    cur = best = sum(1 for v in has_answer.values() if not v)
    thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        cur += scores[qid] if has_answer[qid] else (-1 if preds[qid] else 0)
        if cur > best:
            best, thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), thresh


def _mean(exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]) -> dict[str, float]:
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
        "f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
        "total": len(qids),
    }


def evaluate_v2(
    gold: Mapping[str, Sequence[str]],
    preds: Mapping[str, str],
    na_probs: Mapping[str, float] | None = None,
    threshold: float = 1.0,
) -> dict[str, float]:
    """The v2.0 script's numbers, 'exact' named 'exact_match': exact_match, f1, total, HasAns_* and NoAns_*
    (exact, f1, total) with questions whose odds exceed `threshold` answered ''; with `na_probs` also best_exact,
    best_exact_thresh, best_f1, best_f1_thresh."""
    has_answer = {qid: bool(answers) for qid, answers in gold.items()}
    exact_raw, f1_raw = raw_scores_v2(gold, preds)
    probs = na_probs if na_probs is not None else {qid: 0.0 for qid in preds}
    exact = apply_no_answer_threshold(exact_raw, probs, has_answer, threshold)
    f1 = apply_no_answer_threshold(f1_raw, probs, has_answer, threshold)
    overall = _mean(exact, f1, list(exact))
    out = {"exact_match": overall["exact"], "f1": overall["f1"], "total": overall["total"]}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [q for q, v in has_answer.items() if v == wanted]
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in _mean(exact, f1, qids).items()})
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(preds, exact_raw, na_probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(preds, f1_raw, na_probs, has_answer)
    return out
