"""Statistics over fine-tuning seeds, read by the transfer comparison (`convbert.glue.compare`) and the ablation
tables (`convbert.ablation.results`): the sample standard deviation and the gap between two sets of seeds with its
standard error (Welch's, unpooled)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def std(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof=1); 0 for fewer than two values."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def gap(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean difference a - b, its standard error and z = difference / standard error."""
    diff = float(np.mean(a) - np.mean(b))
    se = float(np.sqrt(std(a) ** 2 / len(a) + std(b) ** 2 / len(b))) if min(len(a), len(b)) > 1 else 0.0
    return {"gap": diff, "se": se, "z": diff / se if se > 0 else float("inf") * np.sign(diff)}
