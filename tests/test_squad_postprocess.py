"""n-best decoding (convbert.squad.postprocess): validity rules, scores across windows, text from offsets,
no-answer odds."""

import numpy as np

from convbert.squad import postprocess
from convbert.squad.data import Example


def window(n_tokens=8, context=range(3, 7), starts=(0, 2, 5, 7, 9, 14), max_context=None):
    """offsets [T, 2] (context tokens at positions `context`, each a 2-character word `starts` apart), max_context."""
    offsets = np.full((n_tokens, 2), -1, np.int32)
    for pos, s in zip(context, starts, strict=False):
        offsets[pos] = (s, s + 2)
    mc = np.zeros(n_tokens, bool)
    mc[list(context)] = True if max_context is None else max_context
    return offsets, mc


def test_best_span_skips_invalid_pairs():
    offsets, mc = window()
    start, end = np.zeros(8), np.zeros(8)
    start[[0, 1, 4, 5]] = [9, 8, 3, 1]  # [CLS] and a question token score best but are not context
    end[[2, 3, 4, 6]] = [9, 1, 2, 5]
    assert postprocess.best_span(start, end, offsets, mc, 20, 30) == (8.0, 4, 6)  # 3 + 5
    assert postprocess.best_span(start, end, offsets, mc, 20, 2) == (6.0, 5, 6)  # 4..6 is 3 tokens long
    assert postprocess.best_span(start, end, offsets, mc, 20, 1) == (5.0, 4, 4)  # ties: the better-ranked start
    mc[4] = False  # not this window's max-context token
    assert postprocess.best_span(start, end, offsets, mc, 20, 30) == (6.0, 5, 6)
    assert postprocess.best_span(start, end, offsets, mc, 1, 30) is None  # top-1 start is [CLS]
    assert postprocess.best_span(-start, end, window(context=[])[0], mc, 20, 30) is None


def test_decode_scores_across_windows_and_cuts_the_context():
    context = "ab cd ef gh ij kl"
    examples = [Example("q1", "?", context, (("ef", 6),)), Example("q2", "?", "xy", ())]
    o1, m1 = window(context=range(3, 7), starts=(0, 3, 6, 9))  # window 0: tokens ab cd ef gh
    o2, m2 = window(context=range(3, 7), starts=(6, 9, 12, 15), max_context=[False, True, True, True])
    o3, m3 = window(context=[], starts=())  # q2: no context token at all
    features = {
        "example_index": np.array([0, 0, 1]),
        "offsets": np.stack([o1, o2, o3]),
        "max_context": np.stack([m1, m2, m3]),
    }
    start, end = np.zeros((3, 8)), np.zeros((3, 8))
    start[0, 5], end[0, 6] = 2.0, 2.0  # "ef gh", score 4
    start[1, 4], end[1, 5] = 3.0, 3.0  # "gh ij" in window 1, score 6: wins
    null = np.array([0.5, -1.0, 2.0])
    preds, odds = postprocess.decode(examples, features, start, end, null)
    assert preds == {"q1": "gh ij", "q2": ""} and odds == {"q1": -1.0, "q2": 2.0}
    assert postprocess.decode(examples, features, start, end, None) == (preds, None)
    assert postprocess.apply_threshold(preds, odds, 0.0) == {"q1": "gh ij", "q2": ""}
    assert postprocess.apply_threshold(preds, odds, -2.0) == {"q1": "", "q2": ""}
