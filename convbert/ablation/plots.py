"""A study's figures (matplotlib, PNG) from its results (`convbert.ablation.results`):

* `pretraining_curves.png`: training loss, eval loss, eval generator MLM accuracy and eval discriminator AUC
  against the step, one line per pretrained variant.
* `headline.png`: the headline score and every task's score against the study's knob (or per variant): each
  seed as a dot, the median as a marker with the standard deviation over seeds as its error bar; the
  no-pretraining control as a dashed line with its ±1 std band.
* `score_vs_flops.png`: the headline score against the variant's pretraining FLOPs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from convbert.glue.tasks import DISPLAY_NAMES

CURVES = (
    ("train/loss", "training loss (total)"),
    ("eval/loss", "eval loss (total)"),
    ("eval/gen_accuracy", "eval generator MLM accuracy"),
    ("eval/disc_auc", "eval discriminator AUC"),
)


def _colors(names):
    import matplotlib.pyplot as plt

    cycle = plt.get_cmap("tab10").colors
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _split(result: Mapping) -> tuple[dict, dict]:
    """(pretrained variants, controls) of the results."""
    rows = result["variants"]
    return (
        {n: r for n, r in rows.items() if r["init"] != "random"},
        {n: r for n, r in rows.items() if r["init"] == "random"},
    )


def _knob_axis(ax, result: Mapping, pretrained: Mapping) -> dict[str, float]:
    """x position per pretrained variant: the knob's value when numeric (log2 axis for powers of two), else the
    variant's index labelled with its knob value or name."""
    values = {n: r["knob"] for n, r in pretrained.items()}
    numeric = result["knob"] and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values())
    if numeric:
        if all(v > 0 and math.log2(v).is_integer() for v in values.values()):
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(values.values())))
        ax.set_xticklabels([f"{v:g}" for v in sorted(set(values.values()))])
        ax.minorticks_off()
        return {n: float(v) for n, v in values.items()}
    labels = [str(values[n]) if result["knob"] else n for n in pretrained]
    ax.set_xticks(range(len(pretrained)))
    ax.set_xticklabels(labels, rotation=20 if max(map(len, labels), default=0) > 8 else 0)
    return {n: float(i) for i, n in enumerate(pretrained)}


def _controls(ax, controls: Mapping, key) -> None:
    """Each control's score (key(row) -> (value, spread)) as a dashed line with a ±spread band."""
    for name, row in controls.items():
        value, spread = key(row)
        if value is None:
            continue
        ax.axhline(value, color="0.35", linestyle="--", linewidth=1.2, label=f"{name}: not pretrained")
        if spread:
            ax.axhspan(value - spread, value + spread, color="0.35", alpha=0.12, linewidth=0)


def pretraining_curves(result: Mapping, curves: Mapping[str, Mapping[int, Mapping[str, float]]], path: str) -> None:
    import matplotlib.pyplot as plt

    pretrained, _ = _split(result)
    colors = _colors(result["variants"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, title) in zip(axes.flat, CURVES, strict=True):
        for name in pretrained:
            points = [(s, r[key]) for s, r in curves.get(name, {}).items() if r.get(key) is not None]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(
                    steps,
                    values,
                    marker="o" if key.startswith("eval") else None,
                    markersize=4,
                    color=colors[name],
                    linewidth=2.2 if name == result["reference"] else 1.3,
                    label=name + (" (reference)" if name == result["reference"] else ""),
                )
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=9)
    fig.suptitle(f"Pretraining: {result['study']}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _score_panel(ax, result, pretrained, controls, colors, title, scores) -> None:
    """scores(row) -> (center, spread, per-seed values) or None."""
    xs = _knob_axis(ax, result, pretrained)
    for name, row in pretrained.items():
        score = scores(row)
        if score is None:
            continue
        center, spread, seeds = score
        ax.scatter([xs[name]] * len(seeds), seeds, s=14, color=colors[name], alpha=0.45, linewidth=0)
        ax.errorbar(
            [xs[name]],
            [center],
            yerr=[spread or 0.0],
            fmt="D" if name == result["reference"] else "o",
            markersize=8 if name == result["reference"] else 6,
            color=colors[name],
            capsize=4,
            label=name + (" (reference)" if name == result["reference"] else ""),
        )
    _controls(ax, controls, lambda row: (lambda s: (s[0], s[1]) if s else (None, None))(scores(row)))
    ax.margins(x=0.15)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(result["knob"] or "variant")
    ax.grid(alpha=0.3)


def headline(result: Mapping, path: str) -> None:
    import matplotlib.pyplot as plt

    pretrained, controls = _split(result)
    colors = _colors(result["variants"])
    panels = [
        (
            "headline: mean of " + ", ".join(DISPLAY_NAMES[t] for t in result["headline_tasks"]),
            lambda r: None if r["headline"] is None else (r["headline"], r["headline_std"], r["headline_seeds"]),
        )
    ]
    for task in result["tasks"]:
        panels.append(
            (
                f"{DISPLAY_NAMES[task]} (dev, median ± std over seeds)",
                lambda r, t=task: (
                    None
                    if t not in r["tasks"]
                    else (r["tasks"][t]["median"], r["tasks"][t]["std"], r["tasks"][t]["seeds"])
                ),
            )
        )
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), squeeze=False)
    for ax, (title, scores) in zip(axes.flat, panels, strict=False):
        _score_panel(ax, result, pretrained, controls, colors, title, scores)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes.flat[0].set_ylabel("dev score")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{result['study']}: {result['num_seeds']} seeds per task", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_vs_flops(result: Mapping, path: str) -> None:
    import matplotlib.pyplot as plt

    pretrained, controls = _split(result)
    colors = _colors(result["variants"])
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for name, row in pretrained.items():
        if row["headline"] is None:
            continue
        ax.errorbar(
            [row["pretrain_flops"]],
            [row["headline"]],
            yerr=[row["headline_std"] or 0.0],
            fmt="D" if name == result["reference"] else "o",
            color=colors[name],
            capsize=4,
            markersize=7,
        )
        ax.annotate(
            name,
            (row["pretrain_flops"], row["headline"]),
            textcoords="offset points",
            xytext=(7, 5),
            fontsize=9,
            color=colors[name],
        )
    _controls(ax, controls, lambda row: (row["headline"], row["headline_std"]))
    ax.margins(x=0.2)
    ax.set_xlabel("pretraining FLOPs (ELECTRA accounting, convbert.flops)")
    ax.set_ylabel("headline score (mean ± std over seeds)")
    ax.set_title(f"{result['study']}: score against training compute", fontsize=11)
    ax.grid(alpha=0.3)
    if controls:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(result: Mapping, workdir: str, curves: Mapping[str, Mapping[int, Mapping[str, float]]]) -> list[str]:
    """Writes the three figures into `workdir`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    paths = [os.path.join(workdir, f) for f in ("pretraining_curves.png", "headline.png", "score_vs_flops.png")]
    pretraining_curves(result, curves, paths[0])
    headline(result, paths[1])
    score_vs_flops(result, paths[2])
    return paths
