"""A reported result printed beside ours in a driver's `results.md` (`convbert.glue.reference`,
`convbert.squad.reference`)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Reference:
    """`results`: {task or version: {metric: value}} in the keys of the task family's metrics."""

    title: str
    results: dict[str, dict[str, float]]
