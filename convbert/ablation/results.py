"""A study's results from its finished runs: `DIR/results.json`, `DIR/results.md` and the plots.

Per variant: the discriminator encoder's parameters, ELECTRA-convention training FLOPs per pretraining step
(`convbert.flops.training_flops_per_step`), the measured pretraining throughput (median of the logged
`perf/tokens_per_sec` in the run's `metrics.jsonl`), the pretraining run's last evaluation (generator MLM
accuracy, discriminator accuracy / precision / recall / AUC), every task's dev score per seed (the task's paper
metric, from the fine-tuning driver's `<task>/result.json`) with its median, mean and standard deviation, the
headline score (the mean over the headline tasks of their medians; its spread: the standard deviation over seeds
of the per-seed mean over those tasks) and the differences to the reference variant (per task: the difference of
the means with its standard error, as `convbert.stats.gap`). Every number names the file it comes from.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from convbert import flops, stats
from convbert.ablation import plots
from convbert.ablation import study as study_lib
from convbert.ablation.study import Variant
from convbert.config import ConvBertConfig
from convbert.fileio import read_json, write_atomic
from convbert.glue.tasks import DISPLAY_NAMES, get_task
from convbert.metric_writer import read_jsonl
from convbert.modeling import ConvBertModel, count_params
from convbert.stats import gap

EVAL_KEYS = ("loss", "gen_accuracy", "disc_accuracy", "disc_precision", "disc_recall", "disc_auc")
EVAL_COLUMNS = {
    "gen_accuracy": "Gen MLM acc",
    "disc_accuracy": "Disc acc",
    "disc_precision": "Disc prec",
    "disc_recall": "Disc rec",
    "disc_auc": "Disc AUC",
}
COLUMN_NOTES = (
    "Params: the discriminator encoder's (the model fine-tuned). Train FLOPs / step: ELECTRA's accounting of one "
    "pretraining step (2 x forward of generator and discriminator, `convbert.flops`). Pretrain tokens/s: median over "
    "the logged intervals of the run (wall clock of the machine that ran it). Gen MLM acc ... Disc AUC: the "
    "pretraining run's last evaluation on its held-out split (Disc: replaced-token detection over all real tokens; "
    "AUC of the replaced class). Per-task gaps to the reference (difference of the means ± standard error) are in "
    "results.json."
)


def read_metrics(path: str) -> dict[int, dict[str, float]]:
    """{step: every value logged at that step} from a `metrics.jsonl` (a resumed run's later lines win; a torn
    record is skipped with a warning, `metrics.read_jsonl`)."""
    out: dict[int, dict[str, float]] = {}
    for record in read_jsonl(path):
        out.setdefault(record["step"], {}).update(record)
    return dict(sorted(out.items()))


def encoder_params(config: ConvBertConfig) -> int:
    """Parameters of the encoder a variant fine-tunes (`ConvBertModel`, embeddings included), from shapes only."""
    return count_params(nnx.eval_shape(lambda: ConvBertModel(config, rngs=nnx.Rngs(0))))


def pretraining_summary(stage: study_lib.Stage) -> dict | None:
    path = os.path.join(stage.workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    records = read_metrics(path)
    evals = [s for s, r in records.items() if "eval/loss" in r]
    rates = [r["perf/tokens_per_sec"] for r in records.values() if "perf/tokens_per_sec" in r]
    steps = [r["perf/steps_per_sec"] for r in records.values() if "perf/steps_per_sec" in r]
    return {
        "workdir": stage.workdir,
        "metrics": path,
        "steps": max((s for s, r in records.items() if "train/loss" in r), default=0),
        "tokens_per_sec": float(np.median(rates)) if rates else None,
        "steps_per_sec": float(np.median(steps)) if steps else None,
        "eval_step": evals[-1] if evals else None,
        "eval": {k: records[evals[-1]].get(f"eval/{k}") for k in EVAL_KEYS} if evals else {},
    }


def task_summary(stage: study_lib.Stage) -> dict | None:
    result = read_json(study_lib.finetune_result_path(stage))
    if result is None:
        return None
    metric = get_task(stage.name).paper_metric
    scores = [float(s["dev"][metric]) for s in result["seeds"]]
    return {
        "metric": metric,
        "seeds": scores,
        "seed_ids": [s["seed"] for s in result["seeds"]],
        "median": float(np.median(scores)),
        "mean": float(np.mean(scores)),
        "std": stats.std(scores),
        "source": study_lib.finetune_result_path(stage),
    }


def variant_summary(v: Variant, study: ml_collections.ConfigDict, reference_dir: str) -> dict:
    disc, gen = flops.configs_from(v.pretrain_config)
    c = v.pretrain_config
    per_step = 0.0 if v.random_init else flops.training_flops_per_step(disc, gen, c.batch_size, c.max_seq_length)
    out = {
        "init": study_lib.RANDOM if v.random_init else "pretrained",
        "knob": v.knob,
        "params": encoder_params(disc),
        "flops_per_step": per_step,
        "pretrain_flops": 0.0 if v.random_init else per_step * c.num_train_steps,
        "pretrain": (
            {"init_checkpoint": study_lib.RANDOM_INIT + reference_dir}
            if v.random_init
            else pretraining_summary(v.pretrain)
        ),
        "tasks": {s.name: t for s in v.finetune if (t := task_summary(s)) is not None},
    }
    names = study_lib.headline_tasks(study)
    tasks = [out["tasks"].get(t) for t in names]
    headline = headline_seeds = None
    if all(tasks) and len({len(t["seeds"]) for t in tasks}) == 1:
        headline = float(np.mean([t["median"] for t in tasks]))
        headline_seeds = [float(np.mean(scores)) for scores in zip(*(t["seeds"] for t in tasks), strict=True)]
    out.update(
        headline=headline,
        headline_seeds=headline_seeds,
        headline_std=stats.std(headline_seeds) if headline_seeds and len(headline_seeds) > 1 else None,
    )
    return out


def collect(study: ml_collections.ConfigDict, spec: str, plan: dict[str, Variant], workdir: str) -> dict:
    """results.json's content for every variant of the plan that has a finished stage."""
    reference_dir = os.path.join(workdir, study.reference, study_lib.PRETRAIN)
    rows = {name: variant_summary(v, study, reference_dir) for name, v in plan.items()}
    ran = {n: r for n, r in rows.items() if r["tasks"] or (r["init"] != study_lib.RANDOM and r["pretrain"])}
    ref = ran.get(study.reference)
    for row in ran.values():
        row["delta_vs_reference"] = (
            row["headline"] - ref["headline"]
            if ref and ref["headline"] is not None and row["headline"] is not None
            else None
        )
        for task, t in row["tasks"].items():
            with np.errstate(invalid="ignore"):  # z of two identical seed lists: NaN (null in results.json)
                t["delta_vs_reference"] = (
                    gap(t["seeds"], ref["tasks"][task]["seeds"]) if ref and task in ref["tasks"] else None
                )
    return {
        "study": spec,
        "workdir": workdir,
        "reference": study.reference,
        "knob": study.get("knob") or None,
        "num_seeds": study.num_seeds,
        "tasks": list(study_lib.tasks_of(study)),
        "headline_tasks": list(study_lib.headline_tasks(study)),
        "variants": ran,
        "not_run": [n for n in plan if n not in ran],
    }


# ------------------------------------------------------------------------------------------------
# Markdown


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, fmt)


def _sci(x: float) -> str:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def task_cell(t: dict | None) -> str:
    return "–" if t is None else f"{t['median']:.1f} ({t['mean']:.1f} ± {t['std']:.1f})"


def markdown(result: dict) -> str:
    ref, knob, tasks = result["reference"], result["knob"], result["tasks"]
    metric_names = {t: get_task(t).paper_metric for t in tasks}
    header = [
        "Variant",
        *([knob] if knob else []),
        "Params",
        "Train FLOPs / step",
        "Pretrain tokens/s",
        *EVAL_COLUMNS.values(),
        *(f"{DISPLAY_NAMES[t]} median (mean ± std)" for t in tasks),
        "Headline",
        f"Δ vs {ref}",
    ]
    lines = [
        f"# Ablation study `{result['study']}`",
        "",
        f"Workdir `{result['workdir']}`. Reference variant `{ref}`; {result['num_seeds']} fine-tuning seeds per "
        f"task. Task scores: dev {', '.join(sorted(set(metric_names.values())))} (x 100). Headline = mean over "
        f"{', '.join(DISPLAY_NAMES[t] for t in result['headline_tasks'])} of each task's median; ± = standard "
        "deviation over seeds of the per-seed mean over those tasks; Δ = headline minus the reference's.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for name, row in result["variants"].items():
        pre = row["pretrain"] or {}
        random_init = row["init"] == study_lib.RANDOM
        evals = pre.get("eval", {})
        knob_cell = [] if not knob else ["–" if row["knob"] is None else str(row["knob"])]
        cells = [
            f"**{name}**" if name == ref else name,
            *knob_cell,
            f"{row['params'] / 1e6:.2f}M",
            "0 (not pretrained)" if random_init else _sci(row["flops_per_step"]),
            _num(pre.get("tokens_per_sec"), ",.0f"),
            *(_num(evals.get(k), ".3f") for k in EVAL_COLUMNS),
            *(task_cell(row["tasks"].get(t)) for t in tasks),
            "–" if row["headline"] is None else f"{row['headline']:.1f} ± {_num(row['headline_std'], '.1f')}",
            _num(row["delta_vs_reference"], "+.1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", COLUMN_NOTES, "", "## Sources", ""]
    for name, row in result["variants"].items():
        pre = row["pretrain"] or {}
        if row["init"] == study_lib.RANDOM:
            source = (
                f"not pretrained: fine-tunes `{pre['init_checkpoint']}` (the reference's config and tokenizer, "
                "fresh weights)"
            )
        else:
            source = (
                f"pretraining `{pre['workdir']}` (`config.json`; `metrics.jsonl`, last evaluation at step "
                f"{pre.get('eval_step')})"
            )
        parts = [source, *(f"{DISPLAY_NAMES[t]} `{s['source']}`" for t, s in row["tasks"].items())]
        lines.append(f"* {name}: " + "; ".join(parts))
    if result["not_run"]:
        lines += ["", "Not run yet: " + ", ".join(result["not_run"]) + "."]
    if result.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"[{os.path.basename(p)}]({os.path.basename(p)})" for p in result["plots"])]
    return "\n".join(lines) + "\n"


def _json_safe(x: Any) -> Any:
    """NaN / inf (an undefined z or AUC) as null, so results.json is strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write(study: ml_collections.ConfigDict, spec: str, plan: dict[str, Variant], workdir: str) -> dict:
    """Writes DIR/results.json, DIR/results.md and the plots; prints the table; returns results.json's content."""
    result = _json_safe(collect(study, spec, plan, workdir))
    curves = {
        n: read_metrics(r["pretrain"]["metrics"])
        for n, r in result["variants"].items()
        if r["init"] != study_lib.RANDOM and r["pretrain"]
    }
    result["plots"] = plots.write_all(result, workdir, curves)
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    write_atomic(os.path.join(workdir, "results.md"), md)
    print("\n" + md, flush=True)
    return result
