"""Does pretraining help? Fine-tunes (and probes, encoder frozen) each checkpoint and the no-pretraining control
on the transfer suite and the SST-2 sample, then prints one table of medians and gaps (docs/transfer.md).

  python -m convbert.glue.compare --checkpoint=workdirs/pretrain_tiny --workdir=workdirs/transfer_tiny
  python -m convbert.glue.compare --checkpoint=electra=workdirs/pretrain_tiny \
      --checkpoint=mlm=workdirs/pretrain_tiny_mlm --workdir=workdirs/transfer_tiny
  python -m convbert.glue.compare --checkpoint=workdirs/pretrain_tiny_2000 --workdir=workdirs/transfer_fast \
      --finetune=num_train_epochs=2       # a configs/finetune_glue.py key for every run

Every (checkpoint, mode) pair is one `finetune.run` in `WORKDIR/<name>/<mode>/<suite>` (its seeds trained
together, reruns skip finished seeds); the control is `random:` + the first checkpoint (its config and tokenizer,
fresh weights). `--modes=finetune,probe,probe_dropout` adds the earlier probe (dropout on in the frozen encoder)
beside the cached-feature one. Gaps are taken against the control: the difference of the means over seeds, with
its standard error sqrt(s_a^2 / n_a + s_b^2 / n_b); `z` = gap / standard error ("more than two standard errors"
= z > 2).
`WORKDIR/comparison.json` and `comparison.md` hold the table.
"""

from __future__ import annotations

import ast
import json
import os

import numpy as np
from absl import app, flags, logging

from convbert import compile_cache, config_file, faults, finetuning, host_malloc
from convbert.fileio import write_atomic
from convbert.glue import finetune
from convbert.glue.tasks import DISPLAY_NAMES, get_task
from convbert.stats import gap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTROL = "random"
# mode -> config overrides: fine-tune; probe = encoder frozen, head trained on [CLS] features computed once;
# probe_dropout = the earlier probe, the frozen encoder run in every step with dropout on (not in the default modes)
MODES = {
    "finetune": dict(freeze_encoder=False),
    "probe": dict(freeze_encoder=True, probe="cached"),
    "probe_dropout": dict(freeze_encoder=True, probe="per_step_dropout"),
}
DEFAULT_MODES = ("finetune", "probe")
# suite -> (configs/finetune_glue.py task argument, data_dir relative to the repository)
SUITES = {"transfer": ("transfer", "data/transfer"), "sst2_sample": ("sst2", "data/glue_sample")}


def glue_config(task: str, size: str):
    """configs/finetune_glue.py's `get_config("TASK,SIZE")`, the config users run."""
    return config_file.load(f"{os.path.join(ROOT, 'configs', 'finetune_glue.py')}:{task},{size}")


def parse_checkpoints(values: list[str]) -> dict[str, str]:
    """['name=path' or 'path', ...] -> {name: path}; an unnamed first checkpoint is 'pretrained'."""
    out = {}
    for i, value in enumerate(values):
        name, sep, path = value.partition("=")
        name, path = (name, path) if sep else ("pretrained" if i == 0 else f"checkpoint{i}", value)
        if name == CONTROL or name in out:
            raise ValueError(f"--checkpoint={value}: the name {name!r} is {'reserved' if name == CONTROL else 'taken'}")
        out[name] = path
    return out


def parse_overrides(values: list[str]) -> dict:
    """['num_train_epochs=2', ...] -> {'num_train_epochs': 2} (values read as Python literals, else strings)."""
    out = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise app.UsageError(f"--finetune={value}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def run_all(
    checkpoints: dict[str, str],
    workdir: str,
    *,
    size: str = "tiny",
    num_seeds: int = 5,
    suites: tuple[str, ...] = tuple(SUITES),
    modes: tuple[str, ...] = DEFAULT_MODES,
    overrides: dict | None = None,
) -> dict:
    """{init: {mode: {task: [dev accuracy (%) per seed]}}} for every checkpoint and the control."""
    inits = {**checkpoints, CONTROL: finetuning.RANDOM_INIT + next(iter(checkpoints.values()))}
    scores = {}
    for init, source in inits.items():
        for mode in modes:
            for suite in suites:
                task, data_dir = SUITES[suite]
                c = glue_config(task, size)
                c.update(
                    init_checkpoint=source, data_dir=os.path.join(ROOT, data_dir), num_seeds=num_seeds, **MODES[mode]
                )
                errors = config_file.apply_overrides(c, overrides or {}, "--finetune")
                if errors:
                    raise ValueError("; ".join(errors))
                logging.info("compare: %s / %s / %s", init, mode, suite)
                summary = finetune.run(c, os.path.join(workdir, init, mode, suite))
                for name, result in summary["tasks"].items():
                    metric = get_task(name).paper_metric
                    scores.setdefault(init, {}).setdefault(mode, {})[name] = [s[metric] for s in result["seeds"]]
    return scores


def table(scores: dict) -> tuple[dict, str]:
    """(rows for comparison.json, the Markdown table): one row per (mode, task), a median per init, and each
    checkpoint's gap to the control."""
    names = [n for n in scores if n != CONTROL]
    rows, lines = [], []
    header = [
        "Task",
        "Mode",
        *(f"{n} median" for n in names),
        f"{CONTROL} median",
        *(f"{n} gap (mean ± s.e.)" for n in names),
        *(f"{n} z" for n in names),
    ]
    lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for mode in scores[CONTROL]:
        for task, control in scores[CONTROL][mode].items():
            row = {
                "task": task,
                "mode": mode,
                "seeds": len(control),
                "median": {n: float(np.median(scores[n][mode][task])) for n in (*names, CONTROL)},
                "scores": {n: scores[n][mode][task] for n in (*names, CONTROL)},
                "gap": {n: gap(scores[n][mode][task], control) for n in names},
            }
            rows.append(row)
            cells = [
                DISPLAY_NAMES[task] + (" (sample)" if task == "sst2" else ""),
                mode,
                *(f"{row['median'][n]:.1f}" for n in (*names, CONTROL)),
                *(f"{row['gap'][n]['gap']:+.1f} ± {row['gap'][n]['se']:.1f}" for n in names),
                *(f"{row['gap'][n]['z']:.1f}" for n in names),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return {"rows": rows}, "\n".join(lines) + "\n"


def compare(checkpoints: dict[str, str], workdir: str, **kw) -> dict:
    scores = run_all(checkpoints, workdir, **kw)
    result, md = table(scores)
    result["checkpoints"] = checkpoints
    write_atomic(os.path.join(workdir, "comparison.json"), json.dumps(result, indent=2) + "\n")
    intro = (
        f"Dev accuracy (%) over {result['rows'][0]['seeds']} seeds; `{CONTROL}` = the same config and tokenizer "
        "with freshly initialised weights; probe = encoder frozen, only the head trained (on [CLS] features computed "
        "once, dropout off); probe_dropout = the frozen encoder run with dropout on in every step.\n\n"
    )
    write_atomic(os.path.join(workdir, "comparison.md"), intro + md)
    print("\n" + intro + md, flush=True)
    return result


def _define_flags():
    flags.DEFINE_multi_string(
        "checkpoint",
        None,
        "name=SRC or SRC (a pretraining workdir, Hugging Face directory or hub id); repeat to compare several.",
        required=True,
    )
    flags.DEFINE_string("workdir", None, "Where the fine-tuning runs and comparison.{json,md} go.", required=True)
    flags.DEFINE_string("size", "tiny", "The fine-tuning recipe of configs/finetune_glue.py.")
    flags.DEFINE_integer("num_seeds", 5, "Fine-tuning seeds per task, mode and checkpoint.")
    flags.DEFINE_list("suites", list(SUITES), f"Which of {', '.join(SUITES)}.")
    flags.DEFINE_list("modes", list(DEFAULT_MODES), f"Which of {', '.join(MODES)}.")
    flags.DEFINE_multi_string(
        "finetune",
        [],
        "KEY=VALUE: a configs/finetune_glue.py key set for every run (repeat), e.g. num_train_epochs=2.",
    )
    compile_cache.define_flag()


def main(argv):
    del argv
    host_malloc.tune()
    f = flags.FLAGS
    for name, choices in (("suites", SUITES), ("modes", MODES)):
        bad = [v for v in getattr(f, name) if v not in choices]
        if bad:
            raise app.UsageError(f"--{name}: unknown {', '.join(bad)}; choose from {', '.join(choices)}")
    overrides = parse_overrides(f.finetune)
    compile_cache.enable_from_flags()
    compare(
        parse_checkpoints(f.checkpoint),
        f.workdir,
        size=f.size,
        num_seeds=f.num_seeds,
        suites=tuple(f.suites),
        modes=tuple(f.modes),
        overrides=overrides,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(faults.exits_on_fault(main))
