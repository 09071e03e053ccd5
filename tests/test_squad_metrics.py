"""The official SQuAD v1.1 / v2.0 metrics on hand-checked cases (convbert.squad.metrics)."""

import pytest

from convbert.squad import metrics


def test_normalisation_drops_case_punctuation_articles_and_extra_whitespace():
    assert metrics.normalize_answer("The  Cat's,\tan APPLE!") == "cats apple"
    assert metrics.normalize_answer("banana anthem theory") == "banana anthem theory"  # only whole words go
    assert metrics.normalize_answer("a-the") == "athe"  # punctuation goes first, so no article is left
    assert metrics.normalize_answer(" ... ") == ""
    assert metrics.exact_match("the Eiffel Tower.", "eiffel  tower") == 1


def test_token_f1_and_the_maximum_over_ground_truths():
    assert metrics.f1_v1("the quick brown fox", "quick fox jumps") == pytest.approx(2 / 3)
    assert metrics.f1_v1("x y y z", "y y y") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    assert metrics.f1_v1("fox", "") == 0.0 and metrics.f1_v2("", "") == 1.0 and metrics.f1_v2("fox", "") == 0.0
    gold = {"q1": ["Denver Broncos", "the Broncos"], "q2": ["1895"], "q3": ["x"]}
    out = metrics.evaluate_v1(gold, {"q1": "Broncos", "q2": "in 1895"})  # q3 unanswered: counts as 0
    assert out["exact_match"] == pytest.approx(100 / 3)  # q1 matches "the Broncos" exactly
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3) and out["total"] == 3


def test_v2_no_answer_questions_thresholds_and_best_threshold():
    gold = {"a": ["Paris"], "b": [], "c": ["blue sky"], "d": [], "e": ["the"]}  # "the" normalises to "": no answer
    preds = {"a": "Paris", "b": "London", "c": "sky", "d": "Rome", "e": ""}
    odds = {"a": -3.0, "b": 2.0, "c": 0.5, "d": -1.0, "e": 1.0}
    raw_exact, raw_f1 = metrics.raw_scores_v2(gold, preds)
    assert raw_exact == {"a": 1, "b": 0, "c": 0, "d": 0, "e": 1} and raw_f1["c"] == pytest.approx(2 / 3)
    # Threshold 0: b, c, e are answered ''; that is right for b only (e lists an answer in the file).
    plain = metrics.evaluate_v2(gold, preds, odds, threshold=0.0)
    assert (plain["exact_match"], plain["f1"], plain["total"]) == (pytest.approx(40.0), pytest.approx(40.0), 5)
    assert (plain["HasAns_total"], plain["NoAns_total"]) == (3, 2)
    assert plain["HasAns_exact"] == pytest.approx(100 / 3) and plain["NoAns_exact"] == pytest.approx(50.0)
    # Best threshold, sweeping in increasing odds from "all ''" (b, d right: 2): a +1 -> 3 (at -3), d -1 -> 2,
    # c +0 -> 2, e +1 (its gold is '' for scoring) -> 3, b -1 -> 2: best 3 / 5 at the first threshold reaching it.
    assert (plain["best_exact"], plain["best_exact_thresh"]) == (pytest.approx(60.0), -3.0)
    # F1: a +1 -> 3, d -1 -> 2, c +2/3 -> 2.67, e +1 -> 3.67 (at 1.0), b -1.
    assert plain["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 5) and plain["best_f1_thresh"] == 1.0
    default = metrics.evaluate_v2(gold, preds, odds)  # threshold 1.0: only b (odds 2) is answered ''
    assert default["exact_match"] == pytest.approx(60.0) and "best_f1" in default
    no_odds = metrics.evaluate_v2(gold, preds)
    assert no_odds["exact_match"] == pytest.approx(40.0) and "best_exact" not in no_odds
