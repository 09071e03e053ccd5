"""Seed statistics (`convbert.stats`): the sample standard deviation and the gap with its standard error."""

import numpy as np
import pytest

from convbert import stats


def test_gap_is_the_difference_of_means_with_its_standard_error():
    a, b = [60.0, 62.0, 61.0, 63.0, 59.0], [50.0, 51.0, 49.0, 50.0, 50.0]
    g = stats.gap(a, b)
    se = np.sqrt(np.var(a, ddof=1) / 5 + np.var(b, ddof=1) / 5)
    assert g["gap"] == pytest.approx(11.0) and g["se"] == pytest.approx(se) and g["z"] == pytest.approx(11.0 / se)


def test_std_is_the_sample_deviation():
    assert stats.std([1.0, 3.0]) == pytest.approx(np.sqrt(2.0))
    assert stats.std([5.0]) == 0.0
