"""Reading raw text (`convbert.data.sources`), through `prepare_corpus`: missing paths, over-long lines in bounded
memory, invalid UTF-8 bytes."""

import json
import os
import subprocess
import sys

import pytest
from prepare_setup import play

from convbert.data.prepare import prepare_corpus


def test_missing_input_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="/no/such/corpus"):
        prepare_corpus(["/no/such/corpus"], str(tmp_path / "out"))


# Hostile inputs (issue 14): over-long lines, invalid bytes.

LONG_LINE = """
import json, os, resource, sys
import numpy as np
from convbert.data.prepare import prepare_corpus
root, mb = sys.argv[1], float(sys.argv[2])
rng = np.random.default_rng(0)
words = np.array("the king and queen of england spoke to his lords about war peace honour love death night".split())
with open(os.path.join(root, "small.txt"), "w") as f:
    f.write(" ".join(rng.choice(words, 20_000)) + ".\\n")
with open(os.path.join(root, "big.txt"), "w") as f:  # one line of `mb` MB, a sentence end after every "love"
    while f.tell() < mb * 1e6:
        f.write(" ".join(rng.choice(words, 100_000)).replace("love ", "love. ") + " ")
prepare_corpus(os.path.join(root, "small.txt"), os.path.join(root, "small"), eval_fraction=0, num_workers=1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB: imports, tokenizer, one small preparation
m = prepare_corpus(os.path.join(root, "big.txt"), os.path.join(root, "big"), eval_fraction=0, num_workers=1)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps(dict(grown_mb=grown / 1024, long_lines=m["long_lines"]["count"], **m["splits"]["train"])))
"""


@pytest.mark.slow
def test_long_line_is_cut_into_sentences_in_bounded_memory(tmp_path):
    """A 10 MB file without a newline (issue 14: 50 MB cost 8.6 GB and became one 128-token example): it is read
    in pieces of max_line_chars and cut at sentence ends, counted; the peak memory of the process preparing it
    grows by far less than the file's tokenizer output (1.2 GB before this change for this file)."""
    done = subprocess.run(
        [sys.executable, "-c", LONG_LINE, str(tmp_path), "10"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["long_lines"] == 1 and out["lines"] > 50_000 and out["grown_mb"] < 150, out
    assert out["examples"] > 0.9 * out["text_tokens"] / 128, out  # the text is used, not one truncated line


def test_a_few_invalid_bytes_are_replaced_and_counted(tmp_path):
    """A 170 KB text with one invalid byte is read (the byte as U+FFFD, counted) rather than dropped whole;
    strict_utf8 keeps the old behaviour (skipped as non_utf8); a file that is mostly another encoding is skipped
    either way."""
    root = tmp_path / "corpus"
    root.mkdir()
    text = (play("hamlet", 10_000) + play("othello", 10_000)).encode()
    assert len(text) > 160_000
    (root / "hamlet.txt").write_bytes(text[:80_000] + b"\xff" + text[80_000:])
    (root / "macbeth.txt").write_text(play("macbeth"))
    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve.\n".encode("latin-1"))
    m = prepare_corpus(str(root), str(tmp_path / "lenient"), eval_fraction=0, max_seq_length=64)
    assert m["replaced_utf8"] == dict(files=1, bytes=1, paths=[str(root / "hamlet.txt")])
    assert m["skipped_files"]["non_utf8"] == dict(count=1, paths=[str(root / "latin1.txt")])
    assert m["splits"]["train"]["documents"] == 2
    strict = prepare_corpus(str(root), str(tmp_path / "strict"), eval_fraction=0, max_seq_length=64, strict_utf8=True)
    assert strict["skipped_files"]["non_utf8"]["count"] == 2 and strict["splits"]["train"]["documents"] == 1
    assert strict["replaced_utf8"]["files"] == 0
