"""benchmarks/repeat.py: ratios over separate invocations (a fake benchmark that writes known ratios)."""

import json
import subprocess
import sys

from benchmarks import repeat

FAKE = """
import json, sys
out = sys.argv[sys.argv.index("--json_out") + 1]
counter = sys.argv[1]
with open(counter, "a+") as f:
    f.seek(0)
    n = len(f.read())
    f.write("x")
ratio = [1.1, 0.9, 1.3][n]
json.dump({"results": [{"size": "small", "mode": "train", "framework": "jax", "ratio_vs_torch": ratio},
                       {"size": "small", "mode": "train", "framework": "torch", "ratio_vs_torch": 1.0}]},
          open(out, "w"))
"""


def test_median_and_spread_over_invocations(tmp_path):
    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE)
    out = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.repeat",
            "--times",
            "3",
            "--json_out",
            str(out),
            "--",
            sys.executable,
            str(script),
            str(tmp_path / "counter"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=repeat.__file__.rsplit("/benchmarks/", 1)[0],
    )
    summary = json.loads(out.read_text())["summary"]
    assert summary == [dict(key=["small", "train", "jax"], ratios=[1.1, 0.9, 1.3], median=1.1, min=0.9, max=1.3)]
    assert "| small / train / jax | **1.10x** | 0.90-1.30 | 1.10, 0.90, 1.30 |" in done.stdout


def test_rows_of_bench_pretrain_are_keyed_by_run():
    rows = [{"size": "small", "run": "torch", "vs_torch": 1.0}, {"size": "small", "run": "default", "vs_torch": 1.3}]
    assert repeat.ratios(rows) == {("small", "default"): 1.3}
