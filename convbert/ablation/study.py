"""A study config resolved into the commands of the existing drivers, and checked before anything runs.

A study (`configs/ablations/<name>.py`, `get_config(scale)`) is an ml_collections ConfigDict with the keys
  pretrain       config: a pretraining config file (`configs/pretrain.py:tiny`); overrides: a partial config
                 (nested dicts) merged over it for every variant
  variants       name -> a partial pretraining config merged over pretrain.config + overrides, in the study's
                 order (`variants(...)` keeps it; a plain dict is sorted by name); `CONTROL` = {"init": "random"}
                 fine-tunes a freshly initialised encoder of the reference's config and tokenizer instead; a
                 variant's `init_from` (+ `init_generator_from`) starts its pretraining from released weights, whose
                 model and tokenizer it takes (`convbert.init_from`; docs/checkpoints.md#continued-pretraining)
  finetune       config: a fine-tuning config file (`configs/finetune_glue.py:transfer,tiny`); tasks: a tuple of
                 task names; data_dir: their GLUE-layout folder ("": the Hugging Face hub); overrides: a partial
                 fine-tuning config; task_data_dirs: {task: folder} for tasks read from elsewhere
  num_seeds      fine-tuning seeds per task
  reference      the variant every difference is taken against
  knob           the dotted pretraining key the study varies (x axis of the plots); "": compare per variant
  headline_tasks the tasks whose medians the headline score averages (default: all tasks)

Every stage is one driver command run from the repository root: `python pretrain.py --config=<pretrain.config>
--workdir=DIR/<variant>/pretrain --config.<key>=<value> ...` (not for the control) and, per task,
`python finetune_glue.py --config=<finetune.config> --workdir=DIR/<variant>/<task> --config.task=<task>
--config.init_checkpoint=DIR/<variant>/pretrain ...`. The drivers resume and skip finished work themselves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from convbert import config_file
from convbert.config_file import apply_overrides, flatten, lookup
from convbert.fileio import read_json
from convbert.glue.tasks import PAPER_TASKS, TRANSFER_TASKS, check_files

RANDOM = "random"
CONTROL = {"init": RANDOM}  # the no-pretraining control (`--config.init_checkpoint=random:SRC`)
RANDOM_INIT = RANDOM + ":"  # convbert.finetuning.RANDOM_INIT (without importing jax)
SCALES = ("tiny", "small")
PRETRAIN = "pretrain"  # the stage name of a variant's pretraining (its fine-tuning stages are named by task)
PRETRAIN_SCRIPT, FINETUNE_SCRIPT = "pretrain.py", "finetune_glue.py"
# Keys of the fine-tuning config the runner sets per stage (a study sets them through its own keys).
FINETUNE_KEYS = ("task", "init_checkpoint", "data_dir", "num_seeds")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # variant names become folders and --config.variants.NAME flags

# tiny: the CPU demo (configs/pretrain.py:tiny for 600 steps, evaluated every 150; the two transfer tasks on which
# the main job's pretrained model beats its no-pretraining control, docs/transfer.md); small: the paper's
# ConvBERT-small recipe (1M steps on a prepared corpus) scored on GLUE dev (the headline: the 8 tasks of the GLUE
# score, from the hub) and the transfer suite.
TINY_PRETRAIN_STEPS = 600
TINY_TASKS = ("word_order", "replaced_word")
NUM_SEEDS = 3


def variants(**named: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The study's variants in the order given (a dict assigned to a ConfigDict is sorted by key)."""
    return ml_collections.ConfigDict(named, sort_keys=False)


def base_study(scale: str, where: str) -> ml_collections.ConfigDict:
    """The keys every shipped study shares at `scale` ('tiny' or 'small'; `where` names the study file in the
    error for another): pretraining recipe and length, fine-tuning suite, seeds."""
    if scale not in SCALES:
        raise ValueError(f"{where}: unknown scale {scale!r}; choose from {', '.join(SCALES)}")
    c = ml_collections.ConfigDict()
    if scale == "tiny":
        c.pretrain = ml_collections.ConfigDict(
            dict(
                config="configs/pretrain.py:tiny",
                overrides=dict(
                    num_train_steps=TINY_PRETRAIN_STEPS,
                    checkpoint_every_steps=150,
                    eval_every_steps=150,
                    export_every_steps=0,
                ),
            )
        )
        c.finetune = ml_collections.ConfigDict(
            dict(
                config="configs/finetune_glue.py:transfer,tiny",
                tasks=TINY_TASKS,
                data_dir="data/transfer",
                overrides={},
                task_data_dirs={},
            )
        )
    else:
        # data.data_dir: a corpus prepared by `python -m convbert.data.prepare` (set it on the command line).
        c.pretrain = ml_collections.ConfigDict(
            dict(config="configs/pretrain.py:small", overrides=dict(num_train_steps=1_000_000, data=dict(data_dir="")))
        )
        c.finetune = ml_collections.ConfigDict(
            dict(
                config="configs/finetune_glue.py:all,small",
                tasks=(*PAPER_TASKS, *TRANSFER_TASKS),
                data_dir="",
                overrides={},
                task_data_dirs={t: "data/transfer" for t in TRANSFER_TASKS},
            )
        )
        c.headline_tasks = PAPER_TASKS  # the paper's GLUE score, on dev
    c.num_seeds = NUM_SEEDS
    c.knob = ""
    return c


class StudyError(ValueError):
    """Everything wrong with a study, one problem per line, found before anything runs."""


# ------------------------------------------------------------------------------------------------
# configs


# ------------------------------------------------------------------------------------------------
# the plan: variants and stages


@dataclasses.dataclass(frozen=True)
class Stage:
    """One driver run: `argv` from the repository root ('python', script, flags...), writing `workdir`, with the
    config the driver resolves from those flags."""

    variant: str
    name: str  # PRETRAIN or a task
    workdir: str
    argv: tuple[str, ...]
    config: ml_collections.ConfigDict

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


@dataclasses.dataclass
class Variant:
    name: str
    random_init: bool  # the control: no pretraining, a fresh encoder of `pretrain_config`
    pretrain_config: ml_collections.ConfigDict  # the control: the reference's
    stages: list[Stage]  # its pretraining (none for the control), then one fine-tuning stage per task
    knob: Any = None  # the value of the study's knob (None for the control or without a knob)

    @property
    def pretrain(self) -> Stage | None:
        return next((s for s in self.stages if s.name == PRETRAIN), None)

    @property
    def finetune(self) -> list[Stage]:
        return [s for s in self.stages if s.name != PRETRAIN]


def tasks_of(study: ml_collections.ConfigDict) -> tuple[str, ...]:
    tasks = study.finetune.tasks
    return (tasks,) if isinstance(tasks, str) else tuple(tasks)


def headline_tasks(study: ml_collections.ConfigDict) -> tuple[str, ...]:
    chosen = study.get("headline_tasks") or tasks_of(study)
    return (chosen,) if isinstance(chosen, str) else tuple(chosen)


def _check_study_keys(study: ml_collections.ConfigDict) -> list[str]:
    from convbert.glue.tasks import get_task

    errors = []
    for key in ("pretrain", "variants", "finetune", "num_seeds", "reference"):
        if key not in study:
            errors.append(f"the study has no {key!r} key")
    if errors:
        return errors
    tasks = tasks_of(study)
    for task in tasks:
        try:
            get_task(task)
        except ValueError as e:
            errors.append(f"finetune.tasks: {e}")
    if not tasks or len(set(tasks)) != len(tasks):
        errors.append(f"finetune.tasks must name each task once, got {tasks!r}")
    if not set(headline_tasks(study)) <= set(tasks):
        errors.append(f"headline_tasks {headline_tasks(study)!r} must be among finetune.tasks {tasks!r}")
    extra = set(study.finetune.get("task_data_dirs") or {}) - set(tasks)
    if extra:
        errors.append(f"finetune.task_data_dirs names tasks the study does not run: {', '.join(sorted(extra))}")
    if not isinstance(study.num_seeds, int) or study.num_seeds < 1:
        errors.append(f"num_seeds must be a positive integer, got {study.num_seeds!r}")
    variant_flats = {name: flatten(partial) for name, partial in study.variants.items()}
    if study.reference not in study.variants:
        errors.append(f"reference {study.reference!r} is not a variant; variants: {', '.join(study.variants)}")
    elif variant_flats[study.reference].get("init") == RANDOM:
        errors.append(f"reference {study.reference!r} is the no-pretraining control; choose a pretrained variant")
    set_by_runner = sorted(set(flatten(study.finetune.get("overrides"))) & set(FINETUNE_KEYS))
    if set_by_runner:
        errors.append(
            f"finetune.overrides sets {', '.join(set_by_runner)}, which the study sets per stage "
            "(finetune.tasks, the variant's checkpoint, finetune.data_dir, num_seeds)"
        )
    return errors


def resolve(study: ml_collections.ConfigDict, workdir: str) -> dict[str, Variant]:
    """Every variant of `study` with its resolved pretraining config and its stages under `workdir`. Raises
    `StudyError` listing every problem (unknown keys, invalid models, missing fine-tuning data), each naming its
    variant, before anything runs."""
    errors = _check_study_keys(study)
    if errors:
        raise StudyError("\n".join(errors))
    overrides = flatten(study.pretrain.get("overrides"))
    errors += apply_overrides(config_file.load(study.pretrain.config), overrides, "pretrain.overrides")
    if errors:
        raise StudyError("\n".join(errors))
    flats, configs = {}, {}
    for name, partial in study.variants.items():
        where = f"variant {name!r}"
        flat = flatten(partial)
        if not _NAME.fullmatch(name):
            errors.append(f"{where}: names are letters, digits and '_', starting with a letter")
        if "init" in flat:
            if flat != CONTROL:
                errors.append(f"{where}: 'init' only takes {RANDOM!r} and stands alone ({CONTROL}), got {flat}")
            flats[name] = flat
            continue
        config = config_file.load(study.pretrain.config)  # as the driver builds it: the file, then the flags in order
        apply_overrides(config, overrides, "pretrain.overrides")  # checked above
        problems = apply_overrides(config, flat, where)
        if not problems:
            try:
                from convbert import config_checks, init_from  # imports jax: only when a variant is checked

                # a variant's `init_from`: its source's model and tokenizer, as the driver resolves them
                init_from.apply(config, os.path.join(workdir, name, PRETRAIN), {**overrides, **flat})
                config_checks.check_pretraining(config)
            except (ValueError, OSError) as e:
                problems.append(f"{where}: {e}")
        if not problems and study.get("knob"):
            try:
                lookup(config, study.knob)
            except (KeyError, AttributeError):
                problems.append(f"knob {study.knob!r} is not a key of the pretraining config")
        errors += problems
        flats[name], configs[name] = flat, config
    if errors:
        raise StudyError("\n".join(dict.fromkeys(errors)))

    ft_overrides, task_dirs = flatten(study.finetune.get("overrides")), dict(study.finetune.get("task_data_dirs") or {})
    reference_dir = os.path.join(workdir, study.reference, PRETRAIN)
    plan = {}
    for name, flat in flats.items():
        random_init = flat == CONTROL
        stages = []
        if not random_init:
            wd = os.path.join(workdir, name, PRETRAIN)
            argv = (
                "python",
                PRETRAIN_SCRIPT,
                f"--config={study.pretrain.config}",
                f"--workdir={wd}",
                *config_file.as_flags({**overrides, **flat}),
            )
            stages.append(Stage(name, PRETRAIN, wd, argv, configs[name]))
        source = RANDOM_INIT + reference_dir if random_init else os.path.join(workdir, name, PRETRAIN)
        for task in tasks_of(study):
            wd = os.path.join(workdir, name, task)
            data_dir = task_dirs.get(task, study.finetune.data_dir)
            flat_ft = {
                "task": task,
                "init_checkpoint": source,
                "data_dir": data_dir,
                "num_seeds": study.num_seeds,
                **ft_overrides,
            }
            config = config_file.load(study.finetune.config)
            problems = apply_overrides(config, flat_ft, "finetune")
            if not problems:
                try:
                    check_files([task], config, require_ax=False)
                except (ValueError, FileNotFoundError) as e:
                    problems.append(f"finetune {task}: {e}")
            errors += problems
            argv = (
                "python",
                FINETUNE_SCRIPT,
                f"--config={study.finetune.config}",
                f"--workdir={wd}",
                *config_file.as_flags(flat_ft),
            )
            stages.append(Stage(name, task, wd, argv, config))
        pretrain_config = configs[study.reference] if random_init else configs[name]
        knob = None if random_init or not study.get("knob") else lookup(pretrain_config, study.knob)
        plan[name] = Variant(name, random_init, pretrain_config, stages, knob)
    if errors:
        raise StudyError("\n".join(dict.fromkeys(errors)))  # fine-tuning problems repeat per variant
    return plan


def select(plan: dict[str, Variant], only: Sequence[str]) -> dict[str, Variant]:
    """The variants named in `only` (all when empty), in the study's order."""
    unknown = [n for n in only if n not in plan]
    if unknown:
        raise StudyError(f"--only: unknown variant(s) {', '.join(unknown)}; the study has {', '.join(plan)}")
    return {n: v for n, v in plan.items() if not only or n in only}


# ------------------------------------------------------------------------------------------------
# stage state on disk


def log_path(workdir: str, stage: Stage, suffix: str) -> str:
    """DIR/<variant>/logs/<stage>.log (the driver's output) or .json (the stage's record)."""
    return os.path.join(workdir, stage.variant, "logs", f"{stage.name}{suffix}")


def finetune_result_path(stage: Stage) -> str:
    return os.path.join(stage.workdir, stage.name, "result.json")  # written by the driver when the task is done


def is_done(workdir: str, stage: Stage) -> bool:
    """Pretraining: its record says the driver exited cleanly (after the final export). Fine-tuning: the driver's
    `<task>/result.json` holds every seed."""
    if stage.name == PRETRAIN:
        record = read_json(log_path(workdir, stage, ".json"))
        return bool(record) and record.get("returncode") == 0
    result = read_json(finetune_result_path(stage))
    seeds = range(stage.config.seed, stage.config.seed + stage.config.num_seeds)
    return bool(result) and [s["seed"] for s in result["seeds"]] == list(seeds)


def _same(saved: Any, wanted: Any) -> bool:
    """Equal values; paths equal when they name the same place (the workdir may be given relative or absolute)."""
    if saved == wanted:
        return True
    if not (isinstance(saved, str) and isinstance(wanted, str) and saved and wanted):
        return False
    random_saved, random_wanted = saved.startswith(RANDOM_INIT), wanted.startswith(RANDOM_INIT)
    return random_saved == random_wanted and (
        os.path.realpath(saved.removeprefix(RANDOM_INIT)) == os.path.realpath(wanted.removeprefix(RANDOM_INIT))
    )


def config_mismatch(stage: Stage) -> str | None:
    """A message when `stage.workdir` holds a run (its `config.json`) of another configuration, else None."""
    from convbert import resume

    saved = resume.latest_config(os.path.join(stage.workdir, "config.json"))
    if saved is None:
        return None
    saved, wanted = flatten(saved), flatten(json.loads(stage.config.to_json_best_effort()))
    # a key on one side only belongs to another code version (as the resume contract, `convbert.resume`)
    keys = [k for k in sorted(saved.keys() & wanted.keys()) if not _same(saved[k], wanted[k])]
    if not keys:
        return None
    shown = "; ".join(f"{k}: {saved.get(k)!r} there, {wanted.get(k)!r} now" for k in keys[:4])
    return (
        f"variant {stage.variant!r}: {stage.workdir} holds a {stage.name} run of another configuration ({shown}"
        f"{'; ...' if len(keys) > 4 else ''}); use another --workdir or delete that folder"
    )


def check_workdir(workdir: str, plan: dict[str, Variant], selected: dict[str, Variant], reference: str) -> None:
    """StudyError when a selected stage's folder holds a run of another configuration, or when the control is
    selected without the reference, whose pretraining it needs, being pretrained or selected."""
    errors = [m for v in selected.values() for s in v.stages if (m := config_mismatch(s))]
    ref = plan[reference]
    if (
        any(v.random_init for v in selected.values())
        and reference not in selected
        and not is_done(workdir, ref.pretrain)
    ):
        control = next(n for n, v in selected.items() if v.random_init)
        errors.append(
            f"variant {control!r} fine-tunes a fresh encoder of the reference's config and tokenizer, read "
            f"from {ref.pretrain.workdir}, which is not pretrained yet: add {reference!r} to --only"
        )
    if errors:
        raise StudyError("\n".join(errors))
