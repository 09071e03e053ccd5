"""The README's main job, timed stage by stage (everything after the package install):

  python -m benchmarks.main_job --out=benchmarks/results/main_job            # one timed run, cold compile cache
  python -m benchmarks.main_job --out=benchmarks/results/main_job --warm     # again, the compile cache kept

Stages, each a subprocess from the repository root, as the README runs them: `transfer_suite` (`python -m
convbert.data.transfer`), `pretrain` (`python pretrain.py`, a fresh workdir under --scratch) and `compare` (`python
-m convbert.glue.compare` on that checkpoint). A cold run gives the stages a fresh compilation cache directory
(CONVBERT_JAX_COMPILATION_CACHE); `--warm` reuses the cache of the previous run in --scratch. Appends one JSON line
per run to OUT/runs.jsonl (stage seconds, total, the machine, the 1-minute load at the start) and copies the
comparison's comparison.json to OUT/comparison.json. Timings count only on quiet cores: start with the load below 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

from benchmarks.common import ROOT, loadavg, machine

CORPUS, TRANSFER = "data/pretrain_corpus", "data/transfer"


def stages(scratch: str) -> list[tuple[str, list[str]]]:
    pretrain_dir, compare_dir = os.path.join(scratch, "pretrain_tiny"), os.path.join(scratch, "transfer_tiny")
    py = sys.executable
    return [
        ("transfer_suite", [py, "-m", "convbert.data.transfer", f"--output_dir={TRANSFER}", f"--corpus_dir={CORPUS}"]),
        ("pretrain", [py, "pretrain.py", f"--workdir={pretrain_dir}"]),
        ("compare", [py, "-m", "convbert.glue.compare", f"--checkpoint={pretrain_dir}", f"--workdir={compare_dir}"]),
    ]


def recipe() -> dict:
    """What the timed commands run: the tiny pretraining steps, the transfer suite's fine-tuning epochs and
    whether its training batches are grouped by length (the configs' defaults), and the commit."""
    from convbert import config_file

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # uncommitted changes to the code, not to the results this benchmark writes between runs
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
        cwd=ROOT,
        capture_output=True,
    )
    transfer = config_file.load(os.path.join(ROOT, "configs", "finetune_glue.py:transfer,tiny"))
    return {
        "commit": commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else ""),
        "pretrain_steps": config_file.load(os.path.join(ROOT, "configs", "pretrain.py:tiny")).num_train_steps,
        "transfer_epochs": transfer.num_train_epochs,
        "group_by_length": transfer.group_by_length,
    }


def run(out: str, scratch: str, warm: bool) -> dict:
    cache = os.path.join(scratch, "xla_cache")
    for name in ("pretrain_tiny", "transfer_tiny", *(() if warm else ("xla_cache",))):
        shutil.rmtree(os.path.join(scratch, name), ignore_errors=True)
    env = {**os.environ, "CONVBERT_JAX_COMPILATION_CACHE": cache, "PYTHONUNBUFFERED": "1"}
    row = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "load_at_start": float(loadavg().split()[0]),
        "compile_cache": "warm" if warm else "cold",
        **recipe(),
        "stages": {},
    }
    os.makedirs(out, exist_ok=True)
    os.makedirs(scratch, exist_ok=True)
    for name, argv in stages(scratch):
        start = time.perf_counter()
        with open(os.path.join(scratch, f"{name}.log"), "w") as log:
            subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        row["stages"][name] = round(time.perf_counter() - start, 1)
        print(f"{name}: {row['stages'][name]:.0f} s", flush=True)
    row["total_seconds"] = round(sum(row["stages"].values()), 1)
    shutil.copy(os.path.join(scratch, "transfer_tiny", "comparison.json"), os.path.join(out, "comparison.json"))
    with open(os.path.join(out, "runs.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/main_job")
    p.add_argument("--scratch", default="workdirs/main_job_bench", help="the runs' workdirs and compile cache")
    p.add_argument("--warm", action="store_true", help="keep the previous run's compilation cache")
    args = p.parse_args()
    row = run(os.path.abspath(args.out), os.path.abspath(args.scratch), args.warm)
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
