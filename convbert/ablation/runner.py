"""Runs a study (`ablate.py`): every unfinished stage as the driver command `--dry_run` prints, one subprocess
after another, then the results and plots.

Resuming: a stage is finished when its record `DIR/<variant>/logs/pretrain.json` says the pretraining driver
exited cleanly (a preempted one exits with `faults.Preempted.exit_code`: unfinished, and the runner stops with that
code), or when the fine-tuning driver's `<task>/result.json` holds every seed; everything else runs again, and the
drivers resume it (pretraining from its newest checkpoint, fine-tuning from its finished seeds).
Each stage's output goes to the console and to `DIR/<variant>/logs/<stage>.log`.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import ml_collections

from convbert import faults, flops
from convbert.ablation import results
from convbert.ablation import study as study_lib
from convbert.ablation.study import Stage, StudyError, Variant
from convbert.fileio import write_atomic


class StageFailed(RuntimeError):
    """A driver command exited with an error."""


def run_stage(workdir: str, stage: Stage) -> None:
    """Runs the stage's command (with this interpreter), its output teed to its log; writes its record."""
    log, record = study_lib.log_path(workdir, stage, ".log"), study_lib.log_path(workdir, stage, ".json")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"ablate: {stage.variant}/{stage.name}: {stage.command}", flush=True)
    started = time.time()
    with open(log, "ab") as out:
        out.write(f"\n$ {stage.command}    # {datetime.datetime.now().isoformat(timespec='seconds')}\n".encode())
        proc = subprocess.Popen(
            [sys.executable, *stage.argv[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # a killed runner leaves no driver writing its workdir (pretraining saves a checkpoint on SIGTERM and stops)
            preexec_fn=functools.partial(faults.die_with_parent, signal.SIGTERM) if sys.platform == "linux" else None,
        )
        try:
            for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                out.write(chunk)
        except BaseException:  # the runner stops (SIGTERM: `faults.Preempted`): the driver saves and stops too
            proc.send_signal(signal.SIGTERM)
            raise
        finally:
            returncode = proc.wait()
            write_atomic(
                record,
                json.dumps(
                    {
                        "variant": stage.variant,
                        "stage": stage.name,
                        "command": stage.command,
                        "returncode": returncode,
                        "started": started,
                        "wall_time_s": time.time() - started,
                    },
                    indent=2,
                )
                + "\n",
            )
    if returncode == faults.Preempted.exit_code:
        raise faults.Preempted(
            f"{stage.variant}/{stage.name} was preempted before its last step (exit code {returncode}); its output "
            f"is in {log}. Run the same command again to resume it."
        )
    if returncode:
        raise StageFailed(
            f"{stage.variant}/{stage.name} failed (exit code {returncode}); its output is in {log}. "
            "Finished stages are kept: fix the cause and run the same command again."
        )


# ------------------------------------------------------------------------------------------------
# scripts for running the stages elsewhere


def _cost_lines(plan: dict[str, Variant]) -> list[str]:
    """Per variant: its pretraining's training FLOPs in ELECTRA's accounting (the paper's column) and the matmul
    FLOPs it executes (`flops.model_flops_per_step`, what time on a device follows)."""
    lines = []
    for name, v in plan.items():
        c = v.pretrain_config
        if v.random_init:
            lines.append(f"#   {name}: not pretrained")
            continue
        disc, gen = flops.configs_from(c)
        executed = c.num_train_steps * flops.model_flops_per_step(
            disc, gen, c.batch_size, c.max_seq_length, c.electra.max_predictions_per_seq
        )
        lines.append(
            f"#   {name}: {flops.total_training_flops(c):.3g} training FLOPs, {executed:.3g} executed "
            f"({c.num_train_steps:,} steps)"
        )
    return lines


def write_scripts(workdir: str, spec: str, plan: dict[str, Variant], report: Sequence[str]) -> None:
    """DIR/commands.sh (every command, in the order the runner runs them) and DIR/slurm.sh (an array job of the
    pretraining commands, one of the fine-tuning commands after it, then the report)."""
    pretrain = [v.pretrain.command for v in plan.values() if v.pretrain]
    finetune = [s.command for v in plan.values() for s in v.finetune]
    report_line = shlex.join(report)
    header = [
        f"# Study {spec}, workdir {workdir}: written by ablate.py. Run from the repository root.",
        "# Every command resumes or skips finished work when run again; the last one writes results.md.",
        "# Pretraining cost per variant (convbert.flops; ELECTRA's accounting, and the matmul FLOPs executed):",
        *_cost_lines(plan),
        "# AOT estimate on a TPU topology: `python -m convbert.aot` (not available yet).",
    ]
    write_atomic(
        os.path.join(workdir, "commands.sh"),
        "\n".join(
            [
                "#!/usr/bin/env bash",
                *header,
                "set -euo pipefail",
                *(s.command for v in plan.values() for s in v.stages),
                report_line,
            ]
        )
        + "\n",
    )

    def array(name, commands):
        return [f"{name}=(", *(f"  {shlex.quote(c)}" for c in commands), ")"]

    submit = ['self=$(realpath "$0")']
    if pretrain:
        submit.append(
            'P=$(sbatch --parsable "$@" --array=0-$((${#PRETRAIN[@]} - 1)) --export=ALL,ABLATE_STAGE=pretrain "$self")'
        )
    after_pretrain = "--dependency=afterok:$P " if pretrain else ""
    submit += [
        f'F=$(sbatch --parsable "$@" {after_pretrain}--array=0-$((${{#FINETUNE[@]}} - 1)) '
        '--export=ALL,ABLATE_STAGE=finetune "$self")',
        'sbatch "$@" --dependency=afterok:$F --wrap="$REPORT"',
    ]
    write_atomic(
        os.path.join(workdir, "slurm.sh"),
        "\n".join(
            [
                "#!/usr/bin/env bash",
                *header,
                "# SLURM: one array task per pretraining run, then one per fine-tuning run (after all pretraining),",
                "# then the report. Submit from the repository root (the jobs start there): bash DIR/slurm.sh",
                "# [sbatch options, e.g. --gres=gpu:1 --time=24:00:00 --requeue]. Requeued tasks resume.",
                "set -euo pipefail",
                *array("PRETRAIN", pretrain),
                *array("FINETUNE", finetune),
                f"REPORT={shlex.quote(report_line)}",
                'if [[ -n "${ABLATE_STAGE:-}" ]]; then  # inside an array task: run its command',
                '  if [[ $ABLATE_STAGE == pretrain ]]; then eval "${PRETRAIN[$SLURM_ARRAY_TASK_ID]}"; '
                'else eval "${FINETUNE[$SLURM_ARRAY_TASK_ID]}"; fi',
                "  exit",
                "fi",
                *submit,
            ]
        )
        + "\n",
    )
    os.chmod(os.path.join(workdir, "commands.sh"), 0o755)
    os.chmod(os.path.join(workdir, "slurm.sh"), 0o755)


# ------------------------------------------------------------------------------------------------
# the run


def report_command(spec: str, workdir: str, overrides: Sequence[str], only: Sequence[str]) -> list[str]:
    """The runner's own command without --dry_run: run after the stages, it finds them finished and reports."""
    return [
        "python",
        "ablate.py",
        f"--config={spec}",
        f"--workdir={workdir}",
        *overrides,
        *([f"--only={','.join(only)}"] if only else []),
    ]


def run(
    study: ml_collections.ConfigDict,
    spec: str,
    workdir: str,
    *,
    only: Sequence[str] = (),
    dry_run: bool = False,
    overrides: Sequence[str] = (),
) -> dict | None:
    """Checks the whole study, writes DIR/commands.sh and DIR/slurm.sh, then prints the commands (`dry_run`) or
    runs every unfinished stage of the variants in `only` (all when empty) and writes the results; returns them.
    `spec` (file:scale) and `overrides` (--config.KEY=VALUE flags) are how the study was given, for the scripts."""
    if not all(os.path.isfile(s) for s in (study_lib.PRETRAIN_SCRIPT, study_lib.FINETUNE_SCRIPT)):
        raise StudyError(
            f"run ablate.py from the repository root (the commands it runs use "
            f"{study_lib.PRETRAIN_SCRIPT} and {study_lib.FINETUNE_SCRIPT} from there)"
        )
    plan = study_lib.resolve(study, workdir)
    selected = study_lib.select(plan, only)
    study_lib.check_workdir(workdir, plan, selected, study.reference)
    report = report_command(spec, workdir, overrides, only)
    write_scripts(workdir, spec, selected, report)
    if dry_run:
        for v in selected.values():
            for stage in v.stages:
                print(stage.command)
        print(shlex.join(report), flush=True)
        return None
    for v in selected.values():
        for stage in v.stages:
            if study_lib.is_done(workdir, stage):
                print(f"ablate: {stage.variant}/{stage.name}: finished before ({stage.workdir}), skipped", flush=True)
            else:
                run_stage(workdir, stage)
    return results.write(study, spec, plan, workdir)
