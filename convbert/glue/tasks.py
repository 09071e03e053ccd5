"""GLUE task specifications: files of the original GLUE download, Hugging Face `nyu-mll/glue` names, label
sets, metrics and submission files (docs/recipes.md#glue-inputs, docs/recipes.md#glue-metrics-and-score).

Label lists are in the order of the Hugging Face label ids, so an HF integer label is an index into
`Task.labels`; the strings are those of the GLUE TSVs and of the submission server.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where a GLUE TSV keeps each field: header names, or column numbers for header-less files."""

    text_a: str | int
    text_b: str | int | None = None
    label: str | int | None = None  # None: an unlabelled (test) file
    index: str | int | None = None  # None: the row number is the index
    num_columns: int | None = None  # header-less files only


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: its file relative to `data_dir` and its (config, split) in `nyu-mll/glue`."""

    name: str
    file: str
    columns: Columns
    hf: tuple[str, str]

    def available(self, data_dir: str) -> bool:
        """Whether the file is in `data_dir` ("": the hub, always available)."""
        return not data_dir or os.path.isfile(os.path.join(data_dir, self.file))


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    labels: tuple[str, ...] | None  # None: regression (STS-B)
    metrics: tuple[str, ...]  # computed on every dev split
    paper_metric: str  # the number the paper's table and GLUE score use (docs/recipes.md#glue-metrics-and-score)
    leaderboard_metrics: tuple[str, ...]  # averaged into the leaderboard score (docs/recipes.md#glue-metrics-and-score)
    hf_text: tuple[str, str | None]  # text columns in `nyu-mll/glue`
    train: Split
    dev: dict[str, Split]  # metric suffix ('' or 'm' / 'mm' for MNLI) -> split
    test: dict[str, Split]  # submission file name -> split
    optional_test: tuple[str, ...] = ()  # submission files written only when the split is available (AX)
    epochs: int = 3
    double_unordered: bool = False  # training pairs again with the sentences swapped (docs/recipes.md#glue-inputs)

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_pair(self) -> bool:
        return self.hf_text[1] is not None

    def metric_keys(self) -> list[str]:
        return [f"{m}_{s}" if s else m for s in self.dev for m in self.metrics]


def _task(
    name,
    folder,
    hf_config,
    labels,
    metrics,
    paper_metric,
    leaderboard_metrics,
    hf_text,
    train_cols,
    test_cols,
    submission,
    dev_files=None,
    test_files=None,
    extra_test=None,
    **kw,
) -> Task:
    """Builds a task whose train/dev files share `train_cols` and whose test files use `test_cols`;
    `dev_files` / `test_files` map a metric suffix / submission file to (file stem, HF split)."""
    dev_files = dev_files or {"": ("dev", "validation")}
    test_files = test_files or {submission: ("test", "test")}

    def split(stem, cols, hf_split):
        return Split(stem, f"{folder}/{stem}.tsv", cols, (hf_config, hf_split))

    return Task(
        name=name,
        labels=labels,
        metrics=metrics,
        paper_metric=paper_metric,
        leaderboard_metrics=leaderboard_metrics,
        hf_text=hf_text,
        train=split("train", train_cols, "train"),
        dev={suffix: split(f, train_cols, hf) for suffix, (f, hf) in dev_files.items()},
        test={**{sub: split(f, test_cols, hf) for sub, (f, hf) in test_files.items()}, **(extra_test or {})},
        **kw,
    )


BINARY = ("0", "1")
NLI = ("entailment", "neutral", "contradiction")
ENTAIL = ("entailment", "not_entailment")


def unlabelled(a, b=None, index="index") -> Columns:
    """An unlabelled test file with an index column."""
    return Columns(a, b, None, index)


# diagnostic/diagnostic.tsv: the AX set, predicted by the MNLI model.
DIAGNOSTIC = Split("diagnostic", "diagnostic/diagnostic.tsv", unlabelled("sentence1", "sentence2"), ("ax", "test"))

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _task(
            "cola",
            "CoLA",
            "cola",
            BINARY,
            ("mcc",),
            "mcc",
            ("mcc",),
            ("sentence", None),
            Columns(3, None, 1, num_columns=4),
            unlabelled("sentence"),
            "CoLA.tsv",
        ),
        _task(
            "sst2",
            "SST-2",
            "sst2",
            BINARY,
            ("accuracy",),
            "accuracy",
            ("accuracy",),
            ("sentence", None),
            Columns("sentence", None, "label"),
            unlabelled("sentence"),
            "SST-2.tsv",
        ),
        _task(
            "mrpc",
            "MRPC",
            "mrpc",
            BINARY,
            ("accuracy", "f1"),
            "accuracy",
            ("f1", "accuracy"),
            ("sentence1", "sentence2"),
            Columns("#1 String", "#2 String", "Quality"),
            unlabelled("#1 String", "#2 String"),
            "MRPC.tsv",
            double_unordered=True,
        ),
        _task(
            "stsb",
            "STS-B",
            "stsb",
            None,
            ("pearson", "spearman"),
            "spearman",
            ("pearson", "spearman"),
            ("sentence1", "sentence2"),
            Columns("sentence1", "sentence2", "score"),
            unlabelled("sentence1", "sentence2"),
            "STS-B.tsv",
            epochs=10,
            double_unordered=True,
        ),
        _task(
            "qqp",
            "QQP",
            "qqp",
            BINARY,
            ("accuracy", "f1"),
            "accuracy",
            ("f1", "accuracy"),
            ("question1", "question2"),
            Columns("question1", "question2", "is_duplicate"),
            unlabelled("question1", "question2", index="id"),
            "QQP.tsv",
        ),
        _task(
            "mnli",
            "MNLI",
            "mnli",
            NLI,
            ("accuracy",),
            "accuracy_m",
            ("accuracy_m", "accuracy_mm"),
            ("premise", "hypothesis"),
            Columns("sentence1", "sentence2", "gold_label"),
            unlabelled("sentence1", "sentence2"),
            "MNLI-m.tsv",
            dev_files={"m": ("dev_matched", "validation_matched"), "mm": ("dev_mismatched", "validation_mismatched")},
            test_files={
                "MNLI-m.tsv": ("test_matched", "test_matched"),
                "MNLI-mm.tsv": ("test_mismatched", "test_mismatched"),
            },
            extra_test={"AX.tsv": DIAGNOSTIC},
            optional_test=("AX.tsv",),
        ),
        _task(
            "qnli",
            "QNLI",
            "qnli",
            ENTAIL,
            ("accuracy",),
            "accuracy",
            ("accuracy",),
            ("question", "sentence"),
            Columns("question", "sentence", "label"),
            unlabelled("question", "sentence"),
            "QNLI.tsv",
        ),
        _task(
            "rte",
            "RTE",
            "rte",
            ENTAIL,
            ("accuracy",),
            "accuracy",
            ("accuracy",),
            ("sentence1", "sentence2"),
            Columns("sentence1", "sentence2", "label"),
            unlabelled("sentence1", "sentence2"),
            "RTE.tsv",
            epochs=10,
        ),
        # WNLI: HF id 0 = not_entailment, 1 = entailment, as the TSV's 0/1.
        _task(
            "wnli",
            "WNLI",
            "wnli",
            BINARY,
            ("accuracy",),
            "accuracy",
            ("accuracy",),
            ("sentence1", "sentence2"),
            Columns("sentence1", "sentence2", "label"),
            unlabelled("sentence1", "sentence2"),
            "WNLI.tsv",
        ),
    ]
}


# The transfer suite (`python -m convbert.data.transfer`, docs/transfer.md): tasks built from held-out English text
# in the GLUE layout, read from `data_dir` only (there is no hub copy). Label 1 = as written (single sentences);
# FillBlank: 0 = the first candidate fills the blank, 1 = the second.
def _transfer_task(name: str, display: str, pair: bool) -> Task:
    """A binary transfer-suite task (accuracy) on one sentence or a pair, read from `<display>/<split>.tsv`."""
    text = ("sentence1", "sentence2") if pair else ("sentence", None)
    return _task(
        name,
        display,
        None,
        BINARY,
        ("accuracy",),
        "accuracy",
        ("accuracy",),
        text,
        Columns(*text, "label"),
        unlabelled(*text),
        f"{display}.tsv",
    )


TRANSFER_TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        _transfer_task("replaced_word", "ReplacedWord", pair=False),
        _transfer_task("word_order", "WordOrder", pair=False),
        _transfer_task("fill_blank", "FillBlank", pair=True),
        _transfer_task("deleted_word", "DeletedWord", pair=False),
        _transfer_task("inserted_word", "InsertedWord", pair=False),
    ]
}

# Tasks of the paper's GLUE score (WNLI excluded) and of the leaderboard score (docs/recipes.md#glue-metrics-and-score).
PAPER_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
LEADERBOARD_TASKS = PAPER_TASKS + ("wnli",)
# `TASK` values of configs/finetune_glue.py: every task, `ax` (= MNLI, whose model also predicts the
# diagnostic set, which must then exist), `all` (GLUE) and `transfer` (the transfer suite).
ALL_TASKS: dict[str, Task] = {**TASKS, **TRANSFER_TASKS}
TASK_CHOICES = (*ALL_TASKS, "ax", "all", "transfer")
DISPLAY_NAMES = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
    "replaced_word": "ReplacedWord",
    "word_order": "WordOrder",
    "fill_blank": "FillBlank",
    "deleted_word": "DeletedWord",
    "inserted_word": "InsertedWord",
}


def get_task(name: str) -> Task:
    if name not in ALL_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid tasks: {', '.join(TASK_CHOICES)}")
    return ALL_TASKS[name]


def task_names(choice: str) -> list[str]:
    """The tasks a `TASK` value runs: all nine GLUE tasks for 'all', the transfer suite for 'transfer', MNLI
    for 'ax'."""
    if choice == "all":
        return list(TASKS)
    if choice == "transfer":
        return list(TRANSFER_TASKS)
    if choice == "ax":
        return ["mnli"]
    return [get_task(choice).name]


def needed_test_files(task: Task, config, require_ax: bool) -> list[str]:
    """The submission files this run writes: all of the task's, AX only where the diagnostic set exists."""
    return [
        name
        for name, split in task.test.items()
        if name not in task.optional_test or require_ax or split.available(config.data_dir)
    ]


def check_files(names: list[str], config, require_ax: bool) -> None:
    """Fails before any training when a split file of the run is missing from `config.data_dir`."""
    if not config.data_dir:
        local = [name for name in names if name in TRANSFER_TASKS]
        if local:
            raise ValueError(
                f"{', '.join(local)}: transfer-suite tasks are read from config.data_dir only; set "
                "--config.data_dir=data/transfer (built by python -m convbert.data.transfer)"
            )
        return
    missing = []
    for name in names:
        task = get_task(name)
        tests = [task.test[f] for f in needed_test_files(task, config, require_ax)]
        missing += [
            os.path.join(config.data_dir, s.file)
            for s in (task.train, *task.dev.values(), *tests)
            if not s.available(config.data_dir)
        ]
    if missing:
        raise FileNotFoundError(
            "GLUE files not found (expected the original GLUE layout under config.data_dir): " + ", ".join(missing)
        )
