"""Shared setup of the data preparation tests (test_prepare, test_units, test_sources; their `plays` fixture is in
conftest.py): texts of the bundled corpus and the options that make every file a unit."""

import os

from convbert.data.sources import DEMO_CORPUS_DIR

PLAYS = ("hamlet", "lear", "macbeth", "othello", "tempest", "twelfth_night")
FAST = dict(max_seq_length=64, eval_fraction=0.25, num_shards=3, unit_mb=1e-3)  # unit_mb: one unit per file


def play(name, num_lines=400):
    """The first `num_lines` lines of a play of the bundled corpus."""
    with open(os.path.join(DEMO_CORPUS_DIR, name + ".txt")) as f:
        return "".join(f.readlines()[:num_lines])
