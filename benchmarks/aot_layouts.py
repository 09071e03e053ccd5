"""Layout search by ahead-of-time compilation: every size x TPU topology x layout (x remat policy, where the model
config has that knob) compiled with `python -m convbert.aot`, each in its own subprocess with a timeout.

    python -m benchmarks.aot_layouts --out=benchmarks/results/aot_layouts          # the whole search: hours of CPU
    python -m benchmarks.aot_layouts --sizes=tiny,small --topologies=v5e:2x2 --out=/tmp/aot_check

Writes one JSON line per compile to OUT.jsonl (the `convbert.aot` report, or the error) and, after every compile,
the table OUT.md: fits, memory per chip, the ESTIMATED step time, tokens/s and MFU (a roofline from XLA's cost
analysis: communication is left out), the ESTIMATED communication time (collective traffic / inter-chip bandwidth)
and the compile time; the best fitting layout of each (size, topology), by estimated step + communication, is
marked. A rerun skips the compiles already in OUT.jsonl (--redo compiles them again).

Layouts: `dp` (data parallel: mesh data=-1), `fsdp` (data=1 fsdp=-1: parameters and optimizer state split over all
chips), `fsdp+tpN` (fsdp=-1 model=N: tensor parallel over N chips inside the FSDP mesh). The global batch is
--per_chip_batch x the chip count (the same tokens per chip for every layout; 0: the config's batch_size).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT
from convbert.aot.steps import communication_seconds
from convbert.aot.topology import CHIPS, parse_topology

SIZES = ("small", "medium_small", "base", "large")
TOPOLOGIES = ("v4-32", "v5e-16", "v5e-256", "v5p-128", "v6e-256")
LAYOUTS = ("dp", "fsdp", "fsdp+tp2")
REMAT = ("none", "full")  # values of config.model.remat compiled when the config has that key


def layout_mesh(layout: str) -> dict[str, int]:
    """'dp' | 'fsdp' | 'fsdp+tpN' -> the config.mesh sizes."""
    if layout == "dp":
        return dict(data=-1, fsdp=1, model=1)
    if layout == "fsdp":
        return dict(data=1, fsdp=-1, model=1)
    if layout.startswith("fsdp+tp") and layout[7:].isdigit() and int(layout[7:]) > 1:
        return dict(data=1, fsdp=-1, model=int(layout[7:]))
    raise ValueError(f"--layouts: unknown layout {layout!r}; use dp, fsdp or fsdp+tpN (N > 1)")


def model_keys(size: str) -> set[str] | None:
    """The keys of configs/pretrain.py:SIZE's `model`, or None when the config file has no such size."""
    from configs.pretrain import get_config

    try:
        return set(get_config(size).model)
    except ValueError:
        return None


def num_chips(topology: str) -> int:
    return parse_topology(topology).num_chips


def compile_one(job: dict, timeout: float) -> dict:
    """One `python -m convbert.aot` run; the report (its JSON), or the error's tail, plus rc and wall time."""
    flags = [f"--config=configs/pretrain.py:{job['size']}", f"--topology={job['topology']}"]
    flags += [f"--config.mesh.{k}={v}" for k, v in layout_mesh(job["layout"]).items()]
    flags += [f"--config.batch_size={job['batch_size']}"] if job["batch_size"] else []
    flags += [f"--config.model.remat={job['remat']}"] if job["remat"] != "n/a" else []
    flags += ["--config.model.scan_layers=True"] if job["scan_layers"] else []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        start = time.time()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "convbert.aot", *flags, f"--json_out={out}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {**job, "rc": None, "error": f"timed out after {timeout:.0f} s", "wall_seconds": time.time() - start}
        result = {**job, "rc": proc.returncode, "wall_seconds": time.time() - start, "flags": flags}
        if os.path.isfile(out):
            with open(out) as f:
                result["report"] = json.load(f)
        else:
            result["error"] = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return result


def _key(r: dict) -> tuple:
    return r["size"], r["topology"], r["layout"], r["remat"], r.get("scan_layers", False), r["batch_size"]


def read_results(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def failure(r: dict) -> str:
    """Why a compile gave no report: a crash's signal, else the error (the last line of its stderr)."""
    if r.get("rc") is not None and r["rc"] < 0:
        return f"crashed ({signal.Signals(-r['rc']).name}) after {r['wall_seconds']:.0f} s"
    return r.get("error", f"exit {r['rc']}")


def communication(r: dict) -> float | None:
    """The report's communication ESTIMATE, seconds per step (computed from its collectives for reports written
    before `convbert.aot` gave it); None without a report or chip figures."""
    rep = r.get("report") or {}
    if rep.get("estimated_communication_seconds") is not None:
        return rep["estimated_communication_seconds"]
    chip = CHIPS.get(parse_topology(r["topology"]).generation)
    return communication_seconds(rep["collectives"], chip) if chip and rep.get("collectives") else None


def table(results: list[dict]) -> str:
    """Markdown table of the latest result per compile, the best fitting layout per (size, topology) in bold: the
    shortest estimated step plus estimated communication (no overlap; the same global batch for every layout of a
    size and topology). Compiles with scanned layers show no step estimate (XLA's cost analysis counts one layer of
    them) and are not ranked."""
    latest = {_key(r): r for r in results}
    best, best_seconds = {}, {}
    for r in latest.values():
        rep = r.get("report") or {}
        if rep.get("fits") and rep.get("estimated_step_seconds") is not None and not r.get("scan_layers"):
            group, seconds = (r["size"], r["topology"]), rep["estimated_step_seconds"] + (communication(r) or 0.0)
            if group not in best or seconds < best_seconds[group]:
                best[group], best_seconds[group] = r, seconds
    lines = [
        "| size | topology | layout | remat | batch | fits | memory per chip (GiB) | est. step (ms) | "
        "est. comm (ms) | est. tokens/s | est. MFU | compile s (CPU s) |",
        "|" + "---|" * 12,
    ]
    for r in sorted(latest.values(), key=lambda r: (SIZES.index(r["size"]) if r["size"] in SIZES else -1, *_key(r))):
        rep = r.get("report")
        mark = "**" if best.get((r["size"], r["topology"])) is r else ""
        if rep is None:
            cells = [failure(r)] + [""] * 6
            batch = r["batch_size"] or ""
        else:
            total, hbm = rep["per_device_bytes"]["total"], rep["hbm_bytes"]
            memory = "?" if total is None else f"{total / 2**30:.2f}" + (f" of {hbm / 2**30:.0f}" if hbm else "")
            est, comm = None if r.get("scan_layers") else rep["estimated_step_seconds"], communication(r)
            cells = [
                "yes" if rep["fits"] else "no" if rep["fits"] is False else "n/a",
                memory,
                f"{est * 1e3:.1f}" if est else "",
                "" if comm is None else f"{comm * 1e3:.1f}",
                f"{rep['estimated_tokens_per_second']:,.0f}" if est else "",
                f"{rep['estimated_mfu']:.1%}" if est and rep["estimated_mfu"] is not None else "",
                f"{rep['compile_seconds']:.0f}"
                + (f" ({rep['compile_cpu_seconds']:.0f})" if "compile_cpu_seconds" in rep else ""),
            ]
            batch = rep["global_batch"]
        remat = r["remat"] + (", scanned" if r.get("scan_layers") else "")
        row = [r["size"], r["topology"], f"{mark}{r['layout']}{mark}", remat, str(batch), *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_table(results: list[dict], path: str) -> None:
    commands = "\n".join(f"    {c}" for c in dict.fromkeys(r["command"] for r in results if "command" in r))
    with open(path, "w") as f:
        f.write(
            f"# Layout search by ahead-of-time compilation\n\n{commands}\n\n"
            "Step time, tokens/s and MFU are ESTIMATES: max(FLOPs / peak, bytes accessed / HBM bandwidth) per "
            "chip from XLA's cost analysis, without communication. Comm: the ESTIMATED time of the step's "
            "collectives, the bytes each chip sends over its inter-chip bandwidth (convbert/aot/steps.py "
            "`communication_seconds`). Memory per chip: XLA's memory analysis (arguments + outputs - aliased + "
            "temporaries + code) against the chip's HBM. Bold: the fitting layout with the shortest step + comm "
            "(no overlap) for its size and topology. Compile: wall seconds (CPU "
            "seconds of the compiling process). Rows marked scanned were compiled with "
            "model.scan_layers=True: XLA's cost analysis counts one layer of them, so they carry no estimate."
            "\n\n" + table(results) + "\n"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES))
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--remat", default=",".join(REMAT), help="config.model.remat values, where the config has it")
    p.add_argument(
        "--scan_layers",
        action="store_true",
        help="compile with config.model.scan_layers=True (faster compiles; XLA's cost analysis then counts "
        "one layer, so the estimates are not comparable)",
    )
    p.add_argument("--per_chip_batch", type=int, default=16, help="global batch = this x chips; 0: the config's")
    p.add_argument("--timeout", type=float, default=3600.0, help="per compile, seconds")
    p.add_argument("--out", default="benchmarks/results/aot_layouts", help="writes OUT.jsonl and OUT.md")
    p.add_argument("--redo", action="store_true", help="compile again what OUT.jsonl already has")
    args = p.parse_args(argv)
    layouts = args.layouts.split(",")
    for layout in layouts:
        layout_mesh(layout)
    topologies = args.topologies.split(",")
    chips = {t: num_chips(t) for t in topologies}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    jsonl, md = args.out + ".jsonl", args.out + ".md"
    results = read_results(jsonl)
    done = {_key(r) for r in results if "report" in r}
    command = "python -m benchmarks.aot_layouts " + " ".join(argv if argv is not None else sys.argv[1:])

    for size in args.sizes.split(","):
        keys = model_keys(size)
        if keys is None:
            print(f"{size}: not a size of configs/pretrain.py, skipped", flush=True)
            continue
        remats = args.remat.split(",") if "remat" in keys and args.remat else ["n/a"]
        for topology, layout, remat in itertools.product(topologies, layouts, remats):
            job = dict(
                size=size,
                topology=topology,
                layout=layout,
                remat=remat,
                scan_layers=args.scan_layers,
                batch_size=args.per_chip_batch * chips[topology],
            )
            if _key(job) in done and not args.redo:
                continue
            print(
                f"{size} {topology} {layout} remat={remat} batch={job['batch_size'] or 'config'} ...",
                end=" ",
                flush=True,
            )
            result = {**compile_one(job, args.timeout), "command": command}
            rep = result.get("report")
            print(
                result.get("error")
                or f"fits={rep['fits']} compile {rep['compile_seconds']:.0f} s (wall {result['wall_seconds']:.0f} s)",
                flush=True,
            )
            with open(jsonl, "a") as f:
                f.write(json.dumps(result) + "\n")
            results.append(result)
            write_table(results, md)
    write_table(read_results(jsonl), md)  # also what other runs appended to OUT.jsonl meanwhile
    print(f"results: {jsonl}, table: {md}")


if __name__ == "__main__":
    main()
