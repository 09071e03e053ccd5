"""Every measured number has one home: a committed results file. The tables in the Markdown pages are generated from
those files, never typed.

    python -m tools.tables            # rewrite every region from its results file
    python -m tools.tables --check    # exit 1 and name the stale regions (tests/test_tables.py runs this check)

A region is three or more lines, each comment at the start of its line,

    <!-- results: RENDERER[:ARG] -->
    (generated: do not edit)
    <!-- /results -->

in README.md, BENCHMARKS.md or a page under docs/. RENDERER names one of `RENDERERS`; it reads its results file(s)
and returns the region's body. A region is stale when its body differs from what its renderer returns now, which
happens when the results file changed (a re-measurement) or someone edited a number by hand.

A table whose results file does not exist yet is a pending marker instead, exactly one of `PENDING` (the line
itself, no body); `tests/test_tables.py` allows only those, and fails once the file exists, so that the marker is
replaced by its region.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION = re.compile(
    r"(?m)^(?P<open><!-- results: (?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<arg>[^>]*?))? -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /results -->)",
    re.S,
)
OPEN = re.compile(r"(?m)^<!-- results:")

AOT_LAYOUTS = "benchmarks/results/aot_layouts.jsonl"
AOT_LARGE_LAYERS = "benchmarks/results/aot_large_layers"
MAIN_JOB = "benchmarks/results/main_job/comparison.json"
MAIN_JOB_RUNS = "benchmarks/results/main_job/runs.jsonl"
BENCH_FINETUNE = "benchmarks/results/bench_finetune.json"
AOT_FINETUNE = "benchmarks/results/aot_finetune"
QUIET_LOAD = 1.0  # a timing counts when the 1-minute load at its start was below this

# Tables whose results file is still to be committed: marker line -> (renderer, the file it will read).
PENDING = {
    f"<!-- main job table: pending {MAIN_JOB} -->": ("comparison", MAIN_JOB),
}


def markdown_files(root: str = ROOT) -> list[str]:
    """The pages that may hold regions, relative to `root`."""
    files = ["README.md", "BENCHMARKS.md", *sorted(glob.glob("docs/**/*.md", root_dir=root, recursive=True))]
    return [f for f in files if os.path.isfile(os.path.join(root, f))]


def _path(rel: str, root: str) -> str:
    return os.path.join(root, rel)


# --- renderers ------------------------------------------------------------------------------------------------------


def _aot_rows(root: str) -> list[dict]:
    from benchmarks.aot_layouts import read_results

    rows = read_results(_path(AOT_LAYOUTS, root))
    if not rows:
        raise FileNotFoundError(f"{AOT_LAYOUTS}: missing or empty")
    return rows


def aot_layouts(arg: str, root: str) -> str:
    """The layout search table of `python -m benchmarks.aot_layouts` (its own `table`), from aot_layouts.jsonl.
    ARG: optional comma-separated sizes to keep."""
    from benchmarks.aot_layouts import table

    rows = _aot_rows(root)
    if arg:
        sizes = arg.split(",")
        rows = [r for r in rows if r["size"] in sizes]
    return table(rows) + "\n"


def _find_row(rows: list[dict], size: str, topology: str, layout: str, scanned: bool = False) -> dict:
    found = [
        r
        for r in rows
        if (r["size"], r["topology"], r["layout"], bool(r.get("scan_layers"))) == (size, topology, layout, scanned)
        and r.get("report")
    ]
    if not found:
        raise KeyError(f"{AOT_LAYOUTS}: no report for {size} {topology} {layout}{' scanned' if scanned else ''}")
    return found[-1]


def aot_report(arg: str, root: str) -> str:
    """What `python -m convbert.aot` prints (its own `format_report`) for one compile of aot_layouts.jsonl.
    ARG: SIZE,TOPOLOGY,LAYOUT."""
    from convbert.aot.__main__ import format_report

    size, topology, layout = arg.split(",")
    row = _find_row(_aot_rows(root), size, topology, layout)
    return "```\n" + format_report(row["report"]).rstrip("\n") + "\n```\n"


def _extrapolate(l1: dict, l2: dict, layers: int, key: str) -> float:
    return l1[key] + (layers - 1) * (l2[key] - l1[key])


def aot_large_extrapolated(arg: str, root: str) -> str:
    """large's step ESTIMATE from its 1- and 2-layer compiles (aot_large_layers/<topology>_<remat>_L{1,2}.json),
    c(24) = c(1) + 23 (c(2) - c(1)), with the roofline of `convbert.aot.steps.estimate`; the communication of the
    scanned 24-layer compile in aot_layouts.jsonl. Last line: the same extrapolation checked against base's full
    compile (base_v5e-16_fsdp_none_L{1,2}.json against the base v5e-16 fsdp row)."""
    from benchmarks.aot_layouts import communication

    folder = _path(AOT_LARGE_LAYERS, root)
    rows = _aot_rows(root)
    lines = [
        "| topology | remat | FLOPs / chip | bytes / chip | est. step (ms) | est. comm (ms) | est. tokens/s | "
        "est. MFU | compile s, 1 / 2 layers |",
        "|" + "---|" * 9,
    ]
    pairs = sorted(glob.glob(os.path.join(folder, "*_L1.json")))
    for p1 in pairs:
        name = os.path.basename(p1)[: -len("_L1.json")]
        if name.startswith("base_"):
            continue
        with open(p1) as f1, open(p1[: -len("L1.json")] + "L2.json") as f2:
            l1, l2 = json.load(f1), json.load(f2)
        topology, remat = l1["topology"], l1["remat"]
        ex = lambda key: _extrapolate(l1, l2, 24, key)  # noqa: B023
        flops, bytes_, model_flops = ex("flops_per_device"), ex("bytes_accessed_per_device"), ex("model_flops_per_step")
        peak, hbm = l1["peak_flops_per_second"], l1["hbm_bytes_per_second"]
        compute, memory = flops / peak, bytes_ / hbm
        step = max(compute, memory)
        scanned = _find_row(rows, "large", topology, "fsdp", scanned=True)
        comm = communication(scanned)
        lines.append(
            "| "
            + " | ".join(
                [
                    topology,
                    remat,
                    f"{flops:.3g}",
                    f"{bytes_:.3g}",
                    f"{step * 1e3:.1f} ({'compute' if compute >= memory else 'memory'})",
                    "" if comm is None else f"{comm * 1e3:.1f}",
                    f"{l1['global_batch'] * l1['seq_len'] / step:,.0f}",
                    f"{model_flops / (step * peak * l1['num_chips']):.1%}",
                    f"{l1['compile_seconds']:.0f} / {l2['compile_seconds']:.0f}",
                ]
            )
            + " |"
        )
    check = os.path.join(folder, "base_v5e-16_fsdp_none_L1.json")
    if os.path.isfile(check):
        with open(check) as f1, open(check[: -len("L1.json")] + "L2.json") as f2:
            l1, l2 = json.load(f1), json.load(f2)
        full = _find_row(rows, "base", "v5e-16", "fsdp")["report"]
        layers = 12
        df = _extrapolate(l1, l2, layers, "flops_per_device") / full["flops_per_device"] - 1
        db = _extrapolate(l1, l2, layers, "bytes_accessed_per_device") / full["bytes_accessed_per_device"] - 1
        lines += [
            "",
            f"Check on base (v5e-16, FSDP, {layers} layers, where the full compile exists): extrapolated FLOPs "
            f"{df:+.3%}, bytes accessed {db:+.1%} against the full compile.",
        ]
    return "\n".join(lines) + "\n"


def comparison(arg: str, root: str) -> str:
    """The table `python -m convbert.glue.compare` prints (its own `table`), from its comparison.json. ARG: the
    file, relative to the repository (default: the main job's)."""
    from convbert.glue.compare import CONTROL, table

    with open(_path(arg or MAIN_JOB, root)) as f:
        result = json.load(f)
    names = [*result.get("checkpoints", {}), CONTROL]
    scores: dict = {n: {} for n in names}
    for row in result["rows"]:
        for n in names:
            scores[n].setdefault(row["mode"], {})[row["task"]] = row["scores"][n]
    seeds = result["rows"][0]["seeds"]
    _, md = table(scores)
    return f"Dev accuracy (%) over {seeds} seeds; `{CONTROL}` = the no-pretraining control.\n\n" + md


def _median_spread(values: list[float], fmt: str = "{:.0f}") -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main_job_time(arg: str, root: str) -> str:
    """The main job's wall time per stage (`python -m benchmarks.main_job`, runs.jsonl): every run on quiet cores
    (load below `QUIET_LOAD` at its start), grouped by recipe and compile cache, medians with the spread. Runs from
    before `group_by_length` existed (no such key) had padded batches. `compare / pretrain` divides out the
    machine's speed of the moment (this VM's varies), as the pretraining stage runs the same code in every row."""
    with open(_path(MAIN_JOB_RUNS, root)) as f:
        runs = [json.loads(line) for line in f if line.strip()]
    quiet = [r for r in runs if r["load_at_start"] < QUIET_LOAD]
    groups: dict[tuple, list[dict]] = {}
    for r in quiet:
        key = (
            r.get("pretrain_steps"),
            r.get("transfer_epochs"),
            r.get("group_by_length", False),
            r["compile_cache"],
            r["machine"],
        )
        groups.setdefault(key, []).append(r)
    stages = list(dict.fromkeys(s for r in quiet for s in r["stages"]))
    header = ["pretraining steps", "transfer epochs", "fine-tuning batches", "compile cache", "runs"]
    header += [f"{s} (s)" for s in stages]
    header += ["compare / pretrain", "total (min)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(header) - 4)]
    for (steps, epochs, grouped, cache, _), rs in groups.items():
        cells = [f"{steps:,}", str(epochs), "grouped by length" if grouped else "padded", cache, str(len(rs))]
        cells += [_median_spread([r["stages"][s] for r in rs if s in r["stages"]]) for s in stages]
        cells.append(_median_spread([r["stages"]["compare"] / r["stages"]["pretrain"] for r in rs], "{:.2f}"))
        cells.append(_median_spread([r["total_seconds"] / 60 for r in rs], "{:.1f}"))
        lines.append("| " + " | ".join(cells) + " |")
    machines = sorted({k[4] for k in groups})
    dates = sorted(r["date"] for r in quiet)
    return (
        "\n".join(lines)
        + f"\n\nMedian (min-max) over the runs; machine: {'; '.join(machines)}; runs of {dates[0]} to {dates[-1]} UTC "
        f"({len(runs) - len(quiet)} run(s) with the load at {QUIET_LOAD:g} or above at the start left out).\n"
    )


def bench_finetune(arg: str, root: str) -> str:
    """Seeds per minute of `python -m benchmarks.bench_finetune` (via `benchmarks.repeat`): the median over the
    invocations with the spread, and the ratio to the PyTorch row of the same invocation. ARG: another results
    file of the same benchmark."""
    with open(_path(arg or BENCH_FINETUNE, root)) as f:
        result = json.load(f)
    runs: dict[str, list[dict]] = {}
    for invocation in result["invocations"]:
        for row in invocation:
            runs.setdefault(row["run"], []).append(row)
    lines = ["| run | seeds per minute | vs torch | seconds |", "|---|---:|---:|---:|"]
    for run, rows in runs.items():
        ratio = "1" if run == "torch" else _median_spread([r["vs_torch"] for r in rows], "{:.2f}")
        lines.append(
            f"| {run} | {_median_spread([r['seeds_per_minute'] for r in rows], '{:.1f}')} | {ratio} | "
            f"{_median_spread([r['seconds'] for r in rows])} |"
        )
    return (
        "\n".join(lines)
        + f"\n\nMedian (min-max) over {result['times']} invocations of `python {' '.join(result['command'][1:])}`; "
        f"machine: {result.get('machine', 'not recorded')}.\n"
    )


def aot_finetune(arg: str, root: str) -> str:
    """Memory per chip of the vectorised fine-tuning step compiled ahead of time (`python -m convbert.aot
    --step=finetune --json_out=...`), one row per report in aot_finetune/."""
    reports = []
    for path in sorted(glob.glob(_path(f"{AOT_FINETUNE}/*.json", root))):
        with open(path) as f:
            reports.append(json.load(f))
    if not reports:
        raise FileNotFoundError(f"{AOT_FINETUNE}/*.json: none")
    lines = [
        "| config | step | topology | global batch per seed | memory per chip (GiB) | fits |",
        "|---|---|---|---:|---|---|",
    ]
    for r in sorted(reports, key=lambda r: (r["config"], r["topology"], r["description"])):
        memory = f"{r['per_device_bytes']['total'] / 2**30:.2f} of {r['hbm_bytes'] / 2**30:.0f}"
        lines.append(
            f"| `{os.path.basename(r['config'])}` | {r['description']} | {r['topology']} | {r['global_batch']} | "
            f"{memory} | {'yes' if r['fits'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Renderer:
    render: Callable[[str, str], str]
    sources: str  # the results file(s) it reads, for the docs


RENDERERS: dict[str, Renderer] = {
    "aot_layouts": Renderer(aot_layouts, AOT_LAYOUTS),
    "aot_report": Renderer(aot_report, AOT_LAYOUTS),
    "aot_large_extrapolated": Renderer(aot_large_extrapolated, f"{AOT_LARGE_LAYERS}/*.json, {AOT_LAYOUTS}"),
    "comparison": Renderer(comparison, MAIN_JOB + " (or ARG)"),
    "main_job_time": Renderer(main_job_time, MAIN_JOB_RUNS),
    "bench_finetune": Renderer(bench_finetune, BENCH_FINETUNE + " (or ARG)"),
    "aot_finetune": Renderer(aot_finetune, f"{AOT_FINETUNE}/*.json"),
}


# --- regions --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    file: str
    line: int
    name: str
    arg: str
    body: str


def regions(text: str, file: str = "") -> list[Region]:
    """Every region of `text`; an opening comment without its closing one is an error."""
    found = []
    for m in REGION.finditer(text):
        found.append(Region(file, text.count("\n", 0, m.start()) + 1, m["name"], m["arg"] or "", m["body"]))
    if len(found) != len(OPEN.findall(text)):
        raise ValueError(f"{file}: a '<!-- results: ... -->' line without its '<!-- /results -->' (or malformed)")
    return found


def render(region: Region, root: str = ROOT) -> str:
    if region.name not in RENDERERS:
        raise KeyError(f"{region.file}:{region.line}: unknown renderer {region.name!r} (known: {sorted(RENDERERS)})")
    return RENDERERS[region.name].render(region.arg, root)


def rewrite(text: str, file: str = "", root: str = ROOT) -> str:
    """`text` with every region's body regenerated."""
    regions(text, file)  # the structure check

    def sub(m: re.Match) -> str:
        region = Region(file, text.count("\n", 0, m.start()) + 1, m["name"], m["arg"] or "", m["body"])
        return m["open"] + render(region, root) + m["close"]

    return REGION.sub(sub, text)


def stale(root: str = ROOT) -> list[str]:
    """The files whose regions differ from what their renderers give now."""
    out = []
    for rel in markdown_files(root):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        if rewrite(text, rel, root) != text:
            out.append(rel)
    return out


def used(root: str = ROOT) -> set[str]:
    """Renderers named by a region or a pending marker."""
    names = set()
    for rel in markdown_files(root):
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        names |= {r.name for r in regions(text, rel)}
        names |= {renderer for marker, (renderer, _) in PENDING.items() if marker in text}
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a region is stale")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        for rel in bad:
            print(f"{rel}: a results table differs from its results file; run `python -m tools.tables`")
        return 1 if bad else 0
    for rel in markdown_files():
        path = os.path.join(ROOT, rel)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = rewrite(text, rel)
        if new != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(new)
            print(f"rewrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
