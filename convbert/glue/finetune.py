"""GLUE fine-tuning (docs/recipes.md#glue-fine-tuning): `run(config, workdir)` fine-tunes every requested task for
`num_seeds` seeds.

Each seed draws a new head initialisation, data order and dropout stream; the encoder starts from
`config.init_checkpoint` every time. The seeds of a task train together (`config.parallel_seeds`, a leading seed
axis on the state; each seed draws what it would alone), data parallel over the mesh (`convbert.finetuning`,
shared with SQuAD: the model is split once, merged inside the jitted step, the state donated). A probe
(`freeze_encoder`) trains the head on [CLS] features computed once (`config.probe`). A seed whose loss turns
non-finite stops and gets no result; the others finish, and the run raises `finetuning.SeedsDiverged` at the
end (finetune_glue.py exits 65). Dev sets are evaluated after
every epoch; the reported numbers are those of the final epoch (no model selection, as google-research/electra
`run_finetuning.py`). Workdir layout:

    config.json                          every start's configuration (`convbert.resume.record_start`)
    <task>/seed_<k>/result.json          one finished seed (+ submission/*.tsv, metrics.jsonl, TensorBoard events)
    <task>/result.json                   the finished task: every finished seed, the median, the submission
                                         seed, the diverged seeds (a rerun trains those again)
    submission/CoLA.tsv ... AX.tsv       test predictions of the median seed, `submission.zip` once complete
    results.json, results.md             all finished tasks, GLUE scores, the paper's numbers beside ours

Every file is written atomically when its seed or task finishes; a rerun skips finished seeds and tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from convbert import config_checks, fileio, finetuning, losses, resume, sharding
from convbert.config import ConvBertConfig
from convbert.fileio import read_json
from convbert.finetuning import Encoder, load_encoder, resolve_source, write_json
from convbert.glue import data, metrics, report
from convbert.glue.submission import write_submission, zip_submission
from convbert.glue.tasks import TASK_CHOICES, Task, check_files, get_task, needed_test_files, task_names
from convbert.heads import ConvBertForSequenceClassification
from convbert.kernels import KeyChain
from convbert.tokenization import load_tokenizer

# ------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class TaskData:
    train: dict[str, np.ndarray]
    dev: dict[str, dict[str, np.ndarray]]  # metric suffix -> features (with labels)
    test: dict[str, tuple[dict[str, np.ndarray], list[str]]]  # submission file -> (features, index)


def prepare_task(task: Task, config, tokenizer, test_files: list[str]) -> TaskData:
    load = functools.partial(
        data.load_split, task, data_dir=config.data_dir, hf_dataset=config.hf_dataset, strict=config.strict_tsv
    )
    feats = functools.partial(data.featurize, tokenizer=tokenizer, max_seq_length=config.max_seq_length, task=task)
    train = load(task.train)
    if task.double_unordered:
        train = train.doubled_unordered()
    test = {name: load(task.test[name]) for name in test_files}
    out = TaskData(
        feats(train),
        {s: feats(load(split)) for s, split in task.dev.items()},
        {name: (feats(ex), ex.index) for name, ex in test.items()},
    )
    logging.info(
        "%s: %d training examples%s, dev %s, test %s",
        task.name,
        len(train),
        " (pairs doubled)" if task.double_unordered else "",
        {s: len(f["labels"]) for s, f in out.dev.items()},
        {n: len(ix) for n, (_, ix) in out.test.items()},
    )
    return out


# ------------------------------------------------------------------------------------------------
# training


def example_losses(logits: jax.Array, labels: jax.Array, regression: bool) -> jax.Array:
    """Per-example loss: squared error on the normalised STS-B score, else softmax cross-entropy
    (docs/recipes.md#glue-heads)."""
    if regression:
        return losses.squared_error(logits[:, 0], labels)
    return losses.softmax_cross_entropy(logits, labels)


def task_epochs(task: Task, config) -> int:
    return config.num_train_epochs if config.num_train_epochs > 0 else task.epochs


def train_steps(task: Task, config, task_data: TaskData) -> int:
    """(training examples // batch size) * epochs: each epoch drops its last partial batch
    (docs/recipes.md#glue-fine-tuning)."""
    n = len(task_data.train["labels"])
    if n < config.batch_size:
        raise ValueError(f"{task.name}: {n} training examples are fewer than config.batch_size={config.batch_size}")
    return n // config.batch_size * task_epochs(task, config)


def classifier_config(task: Task, encoder: Encoder, config) -> ConvBertConfig:
    return encoder.config.replace(num_labels=task.num_labels, classifier_head=encoder.head, dtype=config.dtype)


def encode(model, batch) -> dict[str, jax.Array]:
    """The [CLS] state [B, 1, H] of the encoder, dropout off: what the classification head reads."""
    out, _ = model.body(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], None, True, None, False)
    return {"cls": out.last_hidden_state[:, :1]}


def head(model, batch, *, deterministic=True, dropout_rng=None) -> jax.Array:
    """The classification head on `batch['cls']`, with the dropout keys it gets inside the whole model."""
    keys = KeyChain(None if deterministic else dropout_rng)
    keys.next()  # the encoder's
    return model.classifier(batch["cls"], keys)


class TaskTrainer(finetuning.Trainer):
    """`finetuning.Trainer` for one GLUE task and `copies` seeds: ConvBertForSequenceClassification, the task's
    loss; built once per group size and reused by every group (the steps compile once)."""

    def __init__(self, task: Task, encoder: Encoder, config, mesh, task_data: TaskData, copies: int):
        self.task, self.encoder = task, encoder
        self.model_config = model_config = classifier_config(task, encoder, config)
        regression = task.labels is None

        def forward(model, batch, **kw):
            return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw).logits

        super().__init__(
            lambda rngs: ConvBertForSequenceClassification(model_config, rngs=rngs),
            forward,
            lambda logits, batch: example_losses(logits, batch["labels"], regression),
            config,
            mesh,
            train_steps(task, config, task_data),
            model_config.num_hidden_layers,
            encoder.params,
            copies,
            encode,
            head,
            data.FEATURES,
            ("cls",),
        )

    def lengths(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """`finetuning.row_lengths` of `features`: the batches cut to them give the logits of the padded ones."""
        return finetuning.row_lengths(features["attention_mask"], self.model_config.conv_reach)

    def predict(self, params, features: list[dict[str, np.ndarray]]) -> np.ndarray:
        """[copies, N]: label ids (or normalised STS-B scores) for every row of `features[c]` (same-length
        batches, cut, unless they are cached features)."""
        lengths = None if self.cached else self.lengths(features[0])
        logits = finetuning.predict(self, params, features, lengths)
        return logits[..., 0] if self.task.labels is None else logits.argmax(-1)

    def evaluate(self, params, dev: dict[str, list[dict[str, np.ndarray]]]) -> list[dict[str, float]]:
        """Per copy, the task's metrics on every dev split."""
        out = [{} for _ in range(self.copies)]
        for suffix, features in dev.items():
            for c, preds in enumerate(self.predict(params, features)):
                out[c].update(metrics.task_metrics(self.task, features[c]["labels"], preds, suffix))
        return out


def group_size(task: Task, encoder: Encoder, config, mesh, num_seeds: int) -> int:
    """How many seeds of `task` train together (`finetuning.seed_group_size`)."""
    model_config = classifier_config(task, encoder, config)
    return finetuning.seed_group_size(
        config,
        mesh,
        lambda rngs: ConvBertForSequenceClassification(model_config, rngs=rngs),
        config.max_seq_length,
        num_seeds,
    )


def train_group(
    trainer: TaskTrainer, task_data: TaskData, seeds: list[int], task_dir: str
) -> tuple[dict[int, tuple[dict, dict[str, np.ndarray]]], dict[int, int]]:
    """Fine-tunes `seeds` together, scoring the dev sets after every epoch (`finetuning.train_scored`); returns
    ({finished seed: (result, {submission file: test predictions})}, {diverged seed: step}). With
    `config.group_by_length` the training batches hold rows of similar length, cut to it."""
    task, config = trainer.task, trainer.config
    train, evaluate, test = [task_data.train] * len(seeds), task_data.dev, task_data.test
    same = lambda features: [features] * len(seeds)
    lengths = trainer.lengths(task_data.train) if config.group_by_length and not trainer.cached else None
    if trainer.cached:
        state = trainer.init_state(seeds)
        cache = lambda f: trainer.cached_features(state, f, data.FEATURES, task_dir, trainer.lengths(f))
        train = cache(task_data.train)
        evaluate = {s: cache(f) for s, f in task_data.dev.items()}
        test = {name: (cache(f), ix) for name, (f, ix) in task_data.test.items()}
    else:
        evaluate = {s: same(f) for s, f in task_data.dev.items()}
        test = {name: (same(f), ix) for name, (f, ix) in task_data.test.items()}
    state, finished, diverged = finetuning.train_scored(
        trainer,
        train,
        (*trainer.input_keys, "labels"),
        seeds,
        task_epochs(task, config),
        task_dir,
        task.name,
        lambda params: [(scores, None) for scores in trainer.evaluate(params, evaluate)],
        report.format_metrics,
        "train_examples_per_sec",
        lengths,
    )
    predictions = {name: trainer.predict(state.params, features) for name, (features, _) in test.items()}
    index = {seed: c for c, seed in enumerate(seeds)}
    return {
        seed: (result, {name: p[index[seed]] for name, p in predictions.items()})
        for seed, (result, _) in finished.items()
    }, diverged


# ------------------------------------------------------------------------------------------------
# tasks, seeds and the run


def run_task(task: Task, config, workdir: str, encoder_fn, tokenizer_fn, mesh, test_files: list[str]) -> dict:
    """All seeds of one task, trained together in groups (`finetuning.seed_group_size`; finished seeds are read
    back, an interrupted group starts over), then the median and the submission files of the median seed over
    the finished seeds; writes `<task>/result.json` last. Returns it, with 'diverged': {seed: step} (only that
    when every seed diverged)."""
    task_dir = os.path.join(workdir, task.name)
    results, todo, diverged = {}, [], {}
    for seed in range(config.seed, config.seed + config.num_seeds):
        seed_dir = os.path.join(task_dir, f"seed_{seed}")
        result = read_json(os.path.join(seed_dir, "result.json"))
        if result and set(test_files) <= set(result["test_predictions"]):
            logging.info("%s seed %d: finished before, read from %s", task.name, seed, seed_dir)
            results[seed] = result
        else:
            todo.append(seed)
    if todo:
        task_data, encoder = prepare_task(task, config, tokenizer_fn(), test_files), encoder_fn()
        size = group_size(task, encoder, config, mesh, len(todo))
        logging.info("%s: seeds %s, %d at a time", task.name, todo, size)
        trainers = {}
        for group in finetuning.seed_groups(todo, size):
            if len(group) not in trainers:
                trainers[len(group)] = TaskTrainer(task, encoder, config, mesh, task_data, len(group))
            finished, failed = train_group(trainers[len(group)], task_data, group, task_dir)
            diverged.update(failed)
            for seed, (result, predictions) in finished.items():
                seed_dir = os.path.join(task_dir, f"seed_{seed}")
                if jax.process_index() == 0:
                    for name, preds in predictions.items():
                        write_submission(
                            os.path.join(seed_dir, "submission"), name, task, task_data.test[name][1], preds
                        )
                result["test_predictions"] = list(predictions)
                write_json(os.path.join(seed_dir, "result.json"), result)
                results[seed] = result
    if not results:
        return {"task": task.name, "diverged": diverged}
    seeds = [results[s] for s in sorted(results)]
    median = {k: float(np.median([s["dev"][k] for s in seeds])) for k in task.metric_keys()}
    chosen = finetuning.median_seed(seeds, lambda s: s["dev"][task.paper_metric])
    if jax.process_index() == 0:
        for name in test_files:
            with open(os.path.join(task_dir, f"seed_{chosen['seed']}", "submission", name)) as f:
                fileio.write_atomic(os.path.join(workdir, "submission", name), f.read())
    result = {
        "task": task.name,
        "median": median,
        "seeds": seeds,
        "submission_seed": chosen["seed"],
        "submission_files": test_files,
        "diverged": diverged,  # a rerun trains these seeds again
    }
    write_json(os.path.join(task_dir, "result.json"), result)
    logging.info("%s: median over %d seeds %s", task.name, len(seeds), report.format_metrics(median))
    return result


def run(config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None) -> dict:
    """Fine-tunes `config.task` (a task, 'ax' or 'all') and writes the results and summary to `workdir`; the mesh
    (`config.mesh`) spans `devices` (default: all)."""
    if config.task not in TASK_CHOICES:
        raise ValueError(f"unknown GLUE task {config.task!r}; valid tasks: {', '.join(TASK_CHOICES)}")
    if config.loss_reduction not in ("sum", "mean"):
        raise ValueError(f"config.loss_reduction must be 'sum' or 'mean', got {config.loss_reduction!r}")
    config_checks.check_finetuning(config)
    names, require_ax = task_names(config.task), config.task == "ax"
    check_files(names, config, require_ax)
    mesh = sharding.create_mesh(config.mesh.to_dict(), devices)
    sharding.check_batch_size(config.batch_size, mesh, "batch_size", grad_accum_steps=config.grad_accum_steps)
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    if jax.process_index() == 0:
        resume.record_finetuning_start(workdir, config)
    source = resolve_source(config.init_checkpoint, config.tokenizer)
    encoder_fn = functools.cache(lambda: load_encoder(source, config))  # loaded once, when a seed needs it
    tokenizer_fn = functools.cache(lambda: load_tokenizer(source.tokenizer_dir))
    diverged = {}  # '<task> seed <k>' -> step
    for name in names:
        task = get_task(name)
        test_files = needed_test_files(task, config, require_ax)
        done = read_json(os.path.join(workdir, name, "result.json"))
        if done and set(test_files) <= set(done["submission_files"]) and not done.get("diverged"):
            logging.info(
                "%s: finished before (%s), skipped; delete that folder to rerun it", name, os.path.join(workdir, name)
            )
            continue
        result = run_task(task, config, workdir, encoder_fn, tokenizer_fn, mesh, test_files)
        diverged.update({f"{name} seed {k}": v for k, v in result["diverged"].items()})
    if jax.process_index() == 0:
        zip_submission(os.path.join(workdir, "submission"))
    summary = report.write_summary(workdir, config, source.random_init)
    if diverged:
        raise finetuning.SeedsDiverged(diverged, config)
    return summary
