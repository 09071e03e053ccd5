"""The summary of a fine-tuning workdir: `results.json` and the Markdown table `results.md`
(docs/recipes.md#glue-metrics-and-score, docs/recipes.md#reported-results).

Per task and metric: every seed, the median over seeds, and the reported numbers of the same model size
(`convbert.glue.reference`); then the paper's GLUE score and the leaderboard-style score, per seed and of
the medians.
"""

from __future__ import annotations

import json
import os

import jax

from convbert.fileio import write_atomic
from convbert.glue import metrics
from convbert.glue.reference import REFERENCES
from convbert.glue.tasks import ALL_TASKS, DISPLAY_NAMES, PAPER_TASKS

METRIC_NAMES = {
    "accuracy": "acc",
    "accuracy_m": "acc matched",
    "accuracy_mm": "acc mismatched",
    "f1": "F1",
    "mcc": "MCC",
    "pearson": "Pearson",
    "spearman": "Spearman",
}
SCORES = (
    ("glue_score", metrics.glue_score, "GLUE score (paper: 8 tasks, no WNLI)"),
    ("leaderboard_score", metrics.leaderboard_score, "Leaderboard-style score (9 tasks)"),
)


def format_metrics(values: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.2f}" for k, v in values.items())


def collect(workdir: str) -> dict[str, dict]:
    """{task: its result.json} for every finished task in `workdir`, in GLUE order."""
    out = {}
    for name in ALL_TASKS:
        path = os.path.join(workdir, name, "result.json")
        if os.path.isfile(path):
            with open(path) as f:
                out[name] = json.load(f)
    return out


def summarize(
    task_results: dict[str, dict],
    size: str,
    init_checkpoint: str = "",
    random_init: bool = False,
    freeze_encoder: bool = False,
) -> dict:
    medians = {t: r["median"] for t, r in task_results.items()}
    num_seeds = max((len(r["seeds"]) for r in task_results.values()), default=0)
    per_seed = [
        {t: r["seeds"][i]["dev"] for t, r in task_results.items() if i < len(r["seeds"])} for i in range(num_seeds)
    ]
    summary = {
        "size": size,
        "init_checkpoint": init_checkpoint,
        "init": "random" if random_init else "pretrained",
        "freeze_encoder": freeze_encoder,
        "split": "dev",
        "missing_for_glue_score": metrics.missing_tasks(medians, PAPER_TASKS),
    }
    for key, fn, _ in SCORES:
        summary[key] = fn(medians)
        summary[f"{key}_per_seed"] = [fn(r) for r in per_seed]
    summary["tasks"] = {
        t: {
            "median": r["median"],
            "submission_seed": r["submission_seed"],
            "seeds": [{"seed": s["seed"], **s["dev"]} for s in r["seeds"]],
        }
        for t, r in task_results.items()
    }
    summary["references"] = [
        {"title": ref.title, "results": ref.results, **{key: fn(ref.results) for key, fn, _ in SCORES}}
        for ref in REFERENCES.get(size, [])
    ]
    return summary


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def markdown(summary: dict) -> str:
    num_seeds = len(summary["glue_score_per_seed"])
    refs = summary["references"]
    columns = ["Task", "Metric", *(f"seed #{i + 1}" for i in range(num_seeds)), "Median", *(r["title"] for r in refs)]
    lines = [
        "# GLUE results",
        "",
        f"Fine-tuned from `{summary['init_checkpoint']}` (size `{summary['size']}`"
        + ("; **random initialisation**, the no-pretraining control" if summary.get("init") == "random" else "")
        + ("; **encoder frozen**, only the head trained" if summary.get("freeze_encoder") else "")
        + "). Our numbers are **dev**-set "
        "metrics of the final epoch (no checkpoint selection), one column per seed (each a new head "
        "initialisation, data order and dropout stream) and their median. Reported numbers: the paper's table "
        "(ConvBERT, arXiv 2008.02496, Table 3) and the GLUE leaderboard are **test**-set numbers; the third-party "
        "numbers are dev numbers with best-checkpoint selection (JunnYu/paddle_convbert README). `*` marks the "
        "metric of the paper's GLUE score.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * 2 + "---:|" * (len(columns) - 2),
    ]
    for name, result in summary["tasks"].items():
        task = ALL_TASKS[name]
        for key in task.metric_keys():
            star = "*" if key == task.paper_metric else ""
            row = [
                DISPLAY_NAMES[name],
                METRIC_NAMES[key] + star,
                *(_cell(s[key]) for s in result["seeds"]),
                *[""] * (num_seeds - len(result["seeds"])),
                _cell(result["median"][key]),
                *(_cell(r["results"].get(name, {}).get(key)) for r in refs),
            ]
            lines.append("| " + " | ".join(row) + " |")
    for key, _, title in SCORES:
        row = [
            title,
            "",
            *(_cell(v) for v in summary[f"{key}_per_seed"]),
            _cell(summary[key]),
            *(_cell(r[key]) for r in refs),
        ]
        lines.append("| " + " | ".join(row) + " |")
    if summary["missing_for_glue_score"]:
        lines += [
            "",
            "The GLUE score needs all eight tasks; missing: "
            + ", ".join(DISPLAY_NAMES[t] for t in summary["missing_for_glue_score"])
            + ".",
        ]
    return "\n".join(lines) + "\n"


def write_summary(workdir: str, config, random_init: bool = False) -> dict:
    """Writes `results.json` and `results.md` for every finished task in `workdir`; returns the summary."""
    summary = summarize(collect(workdir), config.size, config.init_checkpoint, random_init, config.freeze_encoder)
    if jax.process_index() == 0:
        write_atomic(os.path.join(workdir, "results.json"), json.dumps(summary, indent=2) + "\n")
        write_atomic(os.path.join(workdir, "results.md"), markdown(summary))
    return summary
