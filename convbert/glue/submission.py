"""Test-set predictions in the GLUE server's format: `index<TAB>prediction` files named CoLA.tsv ... AX.tsv,
label strings as the server expects them, STS-B scores in [0, 5]
(docs/recipes.md#glue-inputs)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence

import numpy as np

from convbert.fileio import write_atomic
from convbert.glue.data import STSB_MAX
from convbert.glue.tasks import TASKS, Task

SUBMISSION_FILES = tuple(name for t in TASKS.values() for name in t.test)  # the 11 files a GLUE submission holds


def format_predictions(task: Task, index: Sequence[str], predictions: np.ndarray) -> str:
    """The file's text: label ids -> label strings; STS-B normalised scores x 5, clipped to [0, 5]."""
    if len(index) != len(predictions):
        raise ValueError(f"{task.name}: {len(predictions)} predictions for {len(index)} test examples")
    if task.labels is None:
        values = [f"{v:.3f}" for v in np.clip(np.asarray(predictions, np.float64) * STSB_MAX, 0.0, STSB_MAX)]
    else:
        values = [task.labels[int(p)] for p in predictions]
    return "".join(f"{i}\t{v}\n" for i, v in zip(["index", *index], ["prediction", *values], strict=True))


def write_submission(directory: str, filename: str, task: Task, index: Sequence[str], predictions) -> str:
    path = os.path.join(directory, filename)
    write_atomic(path, format_predictions(task, index, predictions))
    return path


def zip_submission(directory: str) -> str | None:
    """`directory/submission.zip` with the 11 files at its root once all exist (what the server takes)."""
    if not all(os.path.isfile(os.path.join(directory, f)) for f in SUBMISSION_FILES):
        return None
    path = os.path.join(directory, "submission.zip")
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
        for f in SUBMISSION_FILES:
            z.write(os.path.join(directory, f), f)
    os.replace(path + ".tmp", path)
    return path
