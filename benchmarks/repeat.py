"""A benchmark run as separate invocations, one table of ratios: each row's ratio to PyTorch (ours / torch tokens/s,
both measured in the same invocation) as the median over invocations, with the spread (min-max). Machines of the
same kind differ from run to run and from each other, so one invocation's ratio is not a result.

  python -m benchmarks.repeat --times 3 -- python -m benchmarks.bench_model --sizes small --modes train --dropout 0
  python -m benchmarks.repeat --times 3 -- python -m benchmarks.bench_pretrain --sizes small --steps 10

The benchmark must accept `--json_out FILE` and write `results` rows with `ratio_vs_torch` (bench_model) or
`vs_torch` (bench_pretrain).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

KEY_FIELDS = ("size", "mode", "run", "framework")  # whichever a row has: its identity across invocations
RATIO_FIELDS = ("ratio_vs_torch", "vs_torch")


def row_key(row: dict) -> tuple:
    return tuple(row[f] for f in KEY_FIELDS if f in row)


def ratios(results: list[dict]) -> dict[tuple, float]:
    """{row key: ratio to torch} of one invocation's rows, torch's own rows left out."""
    out = {}
    for row in results:
        if "torch" in (row.get("framework"), row.get("run")):
            continue
        ratio = next(row[f] for f in RATIO_FIELDS if f in row)
        out[row_key(row)] = float(ratio)
    return out


def summarise(per_invocation: list[dict[tuple, float]]) -> list[dict]:
    """One row per key: the ratios of every invocation, their median, min and max."""
    keys = list(dict.fromkeys(k for inv in per_invocation for k in inv))
    rows = []
    for key in keys:
        values = [inv[key] for inv in per_invocation if key in inv]
        rows.append(
            dict(key=list(key), ratios=values, median=statistics.median(values), min=min(values), max=max(values))
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| row | ratio vs torch, median | spread (min-max) | per invocation |", "|---|---|---|---|"]
    lines += [
        f"| {' / '.join(map(str, r['key']))} | **{r['median']:.2f}x** | {r['min']:.2f}-{r['max']:.2f} | "
        f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--times", type=int, default=3, help="separate invocations (at least 3 for a reported ratio)")
    p.add_argument("--json_out", default=None, help="the summary and every invocation's results")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the benchmark command")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no benchmark command given (put it after --)")
    if args.times < 1:
        p.error(f"--times must be >= 1, got {args.times}")
    per_invocation, raw, machines = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.times):
            out = os.path.join(tmp, f"run{i}.json")
            print(f"# invocation {i + 1}/{args.times}: {' '.join(command)}", flush=True)
            subprocess.run([*command, "--json_out", out], check=True)
            with open(out) as f:
                invocation = json.load(f)
            results = invocation["results"]
            raw.append(results)
            machines.append(invocation.get("machine"))
            per_invocation.append(ratios(results))
    rows = summarise(per_invocation)
    print(f"\n{args.times} invocations of: {' '.join(command)}\n\n{table(rows)}", flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                dict(command=command, times=args.times, machine=machines[0], summary=rows, invocations=raw), f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
