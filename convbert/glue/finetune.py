"""GLUE fine-tuning (spec 6): `run(config, workdir)` fine-tunes every requested task for `num_seeds` seeds.

Each seed draws a new head initialisation, data order and dropout stream; the encoder starts from
`config.init_checkpoint` every time. Training is data parallel over the mesh (functional jit: the model is split
once, merged inside the step, the state donated). Dev sets are evaluated after every epoch; the reported
numbers are those of the final epoch (no model selection, spec 6.1). Workdir layout:

    config.json                          the run's configuration
    <task>/seed_<k>/result.json          one finished seed (+ submission/*.tsv, metrics.jsonl, TensorBoard events)
    <task>/result.json                   the finished task: every seed, the median, the submission seed
    submission/CoLA.tsv ... AX.tsv       test predictions of the median seed, `submission.zip` once complete
    results.json, results.md             all finished tasks, GLUE scores, the paper's numbers beside ours

Every file is written atomically when its seed or task finishes; a rerun skips finished seeds and tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm import tqdm

from convbert import hf_io, optim, sharding
from convbert.config import ConvBertConfig
from convbert.data import text_tokenizer
from convbert.glue import data, metrics, report
from convbert.glue.submission import write_atomic, write_submission, zip_submission
from convbert.glue.tasks import TASK_CHOICES, Task, get_task, task_names
from convbert.metrics import MetricWriter
from convbert.modeling import ConvBertForSequenceClassification, ConvBertModel
from convbert.tokenization import ConvBertTokenizer

PRETRAIN_EXPORT = os.path.join("export", "discriminator")  # inside a pretraining workdir of ours
PRETRAIN_TOKENIZER = "tokenizer"


# ------------------------------------------------------------------------------------------------
# checkpoint and tokenizer


@dataclasses.dataclass(frozen=True)
class Source:
    model_dir: str  # Hugging Face-format ConvBERT directory
    tokenizer_dir: str


def resolve_source(init_checkpoint: str, tokenizer: str = "") -> Source:
    """A pretraining workdir of ours (`export/discriminator` + `tokenizer/`), a Hugging Face ConvBERT
    directory, or a hub id (downloaded by `hf_io.resolve_pretrained`); `tokenizer` overrides the tokenizer."""
    if not init_checkpoint:
        raise ValueError("config.init_checkpoint is empty: pass a pretraining workdir, a Hugging Face ConvBERT "
                         "directory or a hub id such as YituTech/conv-bert-base")
    export = os.path.join(init_checkpoint, PRETRAIN_EXPORT)
    if os.path.isdir(export):
        own_tokenizer = os.path.join(init_checkpoint, PRETRAIN_TOKENIZER)
        source = Source(export, own_tokenizer if os.path.isdir(own_tokenizer) else export)
    else:
        model_dir = hf_io.resolve_pretrained(init_checkpoint)
        source = Source(model_dir, model_dir)
    return dataclasses.replace(source, tokenizer_dir=tokenizer) if tokenizer else source


class PretrainingTokenizer:
    """A pretraining `TextTokenizer` (WordPiece or SentencePiece, our `tokenizer/` folder) behind the
    Hugging Face-style calls `data.featurize` makes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cls_token_id, self.sep_token_id, self.pad_token_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        if add_special_tokens:
            raise ValueError("PretrainingTokenizer only encodes without special tokens (featurize adds them)")
        return {"input_ids": self.tokenizer.encode_batch(texts)}


def load_tokenizer(path: str):
    """Our pretraining `tokenizer/` folder (`text_tokenizer.json`), else `ConvBertTokenizer` from a directory
    with vocab.txt, a hub id or a vocab file."""
    if os.path.isfile(os.path.join(path, text_tokenizer.CONFIG_FILE)):
        return PretrainingTokenizer(text_tokenizer.load_text_tokenizer(path))
    return ConvBertTokenizer(path) if os.path.isfile(path) else ConvBertTokenizer.from_pretrained(path)


def has_hf_head(model_dir: str) -> bool:
    """Whether the checkpoint carries transformers' classification head (`classifier.dense`, spec 6.3)."""
    _, weights = hf_io.read_weights(model_dir)
    return any(k.startswith("classifier.dense.") for k in weights)


@dataclasses.dataclass
class Encoder:
    """The pretrained encoder every seed starts from."""

    config: ConvBertConfig
    params: nnx.State  # host (NumPy) copies: every seed places fresh device arrays, which its steps donate
    head: str  # classifier head form: 'original' or 'hf'


def load_encoder(source: Source, config: ml_collections.ConfigDict) -> Encoder:
    body = ConvBertModel.from_pretrained(source.model_dir, dtype=config.dtype)
    head = "hf" if has_hf_head(source.model_dir) else config.classifier_head
    logging.info("encoder from %s (%d layers, hidden %d), classifier head %r", source.model_dir,
                 body.config.num_hidden_layers, body.config.hidden_size, head)
    return Encoder(body.config, jax.tree.map(np.asarray, nnx.state(body, nnx.Param)), head)


# ------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class TaskData:
    train: dict[str, np.ndarray]
    dev: dict[str, dict[str, np.ndarray]]  # metric suffix -> features (with labels)
    test: dict[str, tuple[dict[str, np.ndarray], list[str]]]  # submission file -> (features, index)


def needed_test_files(task: Task, config, require_ax: bool) -> list[str]:
    """The submission files this run writes: all of the task's, AX only where the diagnostic set exists."""
    return [name for name, split in task.test.items()
            if name not in task.optional_test or require_ax or data.split_available(split, config.data_dir)]


def prepare_task(task: Task, config, tokenizer, test_files: list[str]) -> TaskData:
    load = functools.partial(data.load_split, task, data_dir=config.data_dir, hf_dataset=config.hf_dataset)
    feats = functools.partial(data.featurize, tokenizer=tokenizer, max_seq_length=config.max_seq_length, task=task)
    train = load(task.train)
    if task.double_unordered:
        train = train.doubled_unordered()
    test = {name: load(task.test[name]) for name in test_files}
    out = TaskData(feats(train), {s: feats(load(split)) for s, split in task.dev.items()},
                   {name: (feats(ex), ex.index) for name, ex in test.items()})
    logging.info("%s: %d training examples%s, dev %s, test %s", task.name, len(train),
                 " (pairs doubled)" if task.double_unordered else "",
                 {s: len(f["labels"]) for s, f in out.dev.items()}, {n: len(ix) for n, (_, ix) in out.test.items()})
    return out


# ------------------------------------------------------------------------------------------------
# training


def example_losses(logits: jax.Array, labels: jax.Array, regression: bool) -> jax.Array:
    """Per-example loss: squared error on the normalised STS-B score, else softmax cross-entropy (spec 6.3)."""
    if regression:
        return jnp.square(logits[:, 0] - labels.astype(jnp.float32))
    return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels[:, None].astype(jnp.int32), -1)[:, 0]


def make_optimizer(config, params, num_layers: int, total_steps: int):
    """(tx, schedule): the original AdamW (no bias correction), warmup then linear decay, layer-wise lr decay
    (spec 6.1)."""
    schedule = optim.warmup_linear_decay(config.learning_rate, total_steps,
                                         int(total_steps * config.warmup_proportion))
    tx = optim.electra_adamw(
        schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm, params=params,
        lr_multipliers=optim.layerwise_lr_multipliers(params, num_layers, config.layerwise_lr_decay))
    return tx, schedule


def task_epochs(task: Task, config) -> int:
    return config.num_train_epochs if config.num_train_epochs > 0 else task.epochs


def train_steps(task: Task, config, task_data: TaskData) -> int:
    """(training examples // batch size) * epochs: each epoch drops its last partial batch (spec 6.1)."""
    n = len(task_data.train["labels"])
    if n < config.batch_size:
        raise ValueError(f"{task.name}: {n} training examples are fewer than config.batch_size={config.batch_size}")
    return n // config.batch_size * task_epochs(task, config)


def _local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's part of a global batch of row indices."""
    n = len(rows) // jax.process_count()
    return rows[jax.process_index() * n:(jax.process_index() + 1) * n]


def _batch(features: dict[str, np.ndarray], rows: np.ndarray, keys, mesh) -> dict[str, jax.Array]:
    rows = _local_rows(rows)
    return sharding.shard_batch({k: features[k][rows] for k in keys}, mesh)


class TaskTrainer:
    """Model, optimizer and jitted steps for one task on `mesh`, built once and reused by every seed (same
    shapes and shardings, so the steps compile once per task). The train state is donated to each step."""

    def __init__(self, task: Task, encoder: Encoder, config, mesh, task_data: TaskData):
        self.task, self.encoder, self.config, self.mesh = task, encoder, config, mesh
        self.total_steps = total_steps = train_steps(task, config, task_data)
        self.model_config = encoder.config.replace(num_labels=task.num_labels, classifier_head=encoder.head,
                                                   dtype=config.dtype)
        graphdef, params, rest = nnx.split(
            nnx.eval_shape(lambda: ConvBertForSequenceClassification(self.model_config, rngs=nnx.Rngs(0))),
            nnx.Param, ...)
        tx, self.schedule = make_optimizer(config, params, self.model_config.num_hidden_layers, total_steps)
        rules = tuple(tuple(r) for r in config.sharding_rules)
        self.param_sharding = p_sh = sharding.param_shardings(params, mesh, rules)
        o_sh = sharding.optimizer_shardings(tx, jax.eval_shape(tx.init, params), params, mesh, rules)
        self.init_opt = jax.jit(tx.init, out_shardings=o_sh)
        b_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        regression, reduction = task.labels is None, config.loss_reduction

        def logits_fn(params, batch, **kw):
            model = nnx.merge(graphdef, params, rest)
            return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw).logits

        def loss_fn(params, batch, key):
            logits = logits_fn(params, batch, deterministic=False, dropout_rng=key)
            per_example = example_losses(logits, batch["labels"], regression)
            return (per_example.sum() if reduction == "sum" else per_example.mean()), per_example.mean()

        def train_step(state, batch, key, step):
            params, opt_state = state
            (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.fold_in(key, step))
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics_ = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
            return (optax.apply_updates(params, updates), opt_state), metrics_

        self.train_step = jax.jit(train_step, in_shardings=((p_sh, o_sh), b_sh, repl, repl),
                                  out_shardings=((p_sh, o_sh), repl), donate_argnums=0)
        self.eval_step = jax.jit(lambda params, batch: logits_fn(params, batch, deterministic=True),
                                 in_shardings=(p_sh, b_sh), out_shardings=repl)

    def init_state(self, seed: int):
        """(params, optimizer state): the pretrained encoder and a head initialised from `seed`."""
        model = ConvBertForSequenceClassification(self.model_config, rngs=nnx.Rngs(seed))
        nnx.update(model.convbert, self.encoder.params)
        params = jax.device_put(nnx.state(model, nnx.Param), self.param_sharding)
        return params, self.init_opt(params)

    def predict(self, params, features: dict[str, np.ndarray]) -> np.ndarray:
        """Label ids (or normalised STS-B scores) for every row; the eval set is padded with ignored dummy rows
        to a multiple of the eval batch size (spec 6.2)."""
        n, bs = len(features["input_ids"]), self.config.eval_batch_size
        padded = data.pad_to_multiple(features, bs)
        logits = np.concatenate([
            np.asarray(self.eval_step(params, _batch(padded, np.arange(i, i + bs), data.FEATURES, self.mesh)))
            for i in range(0, len(padded["input_ids"]), bs)])[:n]
        return logits[:, 0] if self.task.labels is None else logits.argmax(-1)

    def evaluate(self, params, dev: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
        out = {}
        for suffix, features in dev.items():
            out.update(metrics.task_metrics(self.task, features["labels"], self.predict(params, features), suffix))
        return out


def train_seed(trainer: TaskTrainer, task_data: TaskData, seed: int, logdir: str
               ) -> tuple[dict, dict[str, np.ndarray]]:
    """Fine-tunes one seed; returns (result, {submission file: test predictions})."""
    task, config, train = trainer.task, trainer.config, task_data.train
    n, bs, epochs, total = len(train["labels"]), config.batch_size, task_epochs(task, config), trainer.total_steps
    steps_per_epoch = n // bs
    state, key = trainer.init_state(seed), jax.random.key(seed)
    writer = MetricWriter(logdir)
    rng = np.random.default_rng(seed)
    keys = (*data.FEATURES, "labels")
    step, history, start, train_time = 0, [], time.time(), 0.0
    for epoch in range(1, epochs + 1):
        order, epoch_start = rng.permutation(n), time.time()
        bar = tqdm(range(steps_per_epoch), desc=f"{task.name} seed {seed} epoch {epoch}/{epochs}",
                   disable=jax.process_index() != 0, dynamic_ncols=True)
        for i in bar:
            batch = _batch(train, order[i * bs:(i + 1) * bs], keys, trainer.mesh)
            state, out = trainer.train_step(state, batch, key, np.int32(step))
            step += 1
            if step == 1:  # the throughput leaves out the compilation
                jax.block_until_ready(out)
                epoch_start = time.time()
            if step % config.log_every_steps == 0 or step == total:
                scalars = {f"train/{k}": float(v) for k, v in out.items()}
                scalars["train/learning_rate"] = float(trainer.schedule(step - 1))  # of this step
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}")
                writer.write_scalars(step, scalars)
        jax.block_until_ready(state)
        train_time += time.time() - epoch_start
        dev = trainer.evaluate(state[0], task_data.dev)
        history.append({"epoch": epoch, "step": step, **dev})
        writer.write_scalars(step, {f"dev/{k}": v for k, v in dev.items()})
        logging.info("%s seed %d epoch %d: %s", task.name, seed, epoch, report.format_metrics(dev))
    predictions = {name: trainer.predict(state[0], features) for name, (features, _) in task_data.test.items()}
    writer.close()
    result = {"seed": seed, "dev": dev, "epochs": history, "train_steps": total,
              "train_examples_per_sec": (total - 1) * bs / train_time if total > 1 else None,  # after step 1
              "wall_time_s": time.time() - start}
    return result, predictions


# ------------------------------------------------------------------------------------------------
# tasks, seeds and the run


def read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        write_atomic(path, json.dumps(obj, indent=2) + "\n")


def check_files(names: list[str], config, require_ax: bool) -> None:
    """Fails before any training when a split file of the run is missing from `config.data_dir`."""
    if not config.data_dir:
        return
    missing = []
    for name in names:
        task = get_task(name)
        tests = [task.test[f] for f in needed_test_files(task, config, require_ax)]
        missing += [os.path.join(config.data_dir, s.file) for s in (task.train, *task.dev.values(), *tests)
                    if not data.split_available(s, config.data_dir)]
    if missing:
        raise FileNotFoundError("GLUE files not found (expected the original GLUE layout under config.data_dir): "
                                + ", ".join(missing))


def run_task(task: Task, config, workdir: str, encoder_fn, tokenizer_fn, mesh, test_files: list[str]) -> dict:
    """All seeds of one task (finished seeds are read back), then the median and the submission files of the
    median seed; writes `<task>/result.json` last."""
    task_dir = os.path.join(workdir, task.name)
    task_data, trainer, seeds = None, None, []
    for seed in range(config.seed, config.seed + config.num_seeds):
        seed_dir = os.path.join(task_dir, f"seed_{seed}")
        result = read_json(os.path.join(seed_dir, "result.json"))
        if result and set(test_files) <= set(result["test_predictions"]):
            logging.info("%s seed %d: finished before, read from %s", task.name, seed, seed_dir)
        else:
            if trainer is None:
                task_data = prepare_task(task, config, tokenizer_fn(), test_files)
                trainer = TaskTrainer(task, encoder_fn(), config, mesh, task_data)
            result, predictions = train_seed(trainer, task_data, seed, seed_dir)
            if jax.process_index() == 0:
                for name, preds in predictions.items():
                    write_submission(os.path.join(seed_dir, "submission"), name, task, task_data.test[name][1], preds)
            result["test_predictions"] = list(predictions)
            write_json(os.path.join(seed_dir, "result.json"), result)
        seeds.append(result)
    median = {k: float(np.median([s["dev"][k] for s in seeds])) for k in task.metric_keys()}
    order = np.argsort([s["dev"][task.paper_metric] for s in seeds], kind="stable")
    chosen = seeds[int(order[(len(order) - 1) // 2])]
    if jax.process_index() == 0:
        for name in test_files:
            with open(os.path.join(task_dir, f"seed_{chosen['seed']}", "submission", name)) as f:
                write_atomic(os.path.join(workdir, "submission", name), f.read())
    result = {"task": task.name, "median": median, "seeds": seeds, "submission_seed": chosen["seed"],
              "submission_files": test_files}
    write_json(os.path.join(task_dir, "result.json"), result)
    logging.info("%s: median over %d seeds %s", task.name, len(seeds), report.format_metrics(median))
    return result


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Fine-tunes `config.task` (a task, 'ax' or 'all') and writes the results and summary to `workdir`."""
    if config.task not in TASK_CHOICES:
        raise ValueError(f"unknown GLUE task {config.task!r}; valid tasks: {', '.join(TASK_CHOICES)}")
    if config.loss_reduction not in ("sum", "mean"):
        raise ValueError(f"config.loss_reduction must be 'sum' or 'mean', got {config.loss_reduction!r}")
    names, require_ax = task_names(config.task), config.task == "ax"
    check_files(names, config, require_ax)
    mesh = sharding.create_mesh(config.mesh.to_dict())
    sharding.check_batch_size(config.batch_size, mesh, "batch_size")
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    source = resolve_source(config.init_checkpoint, config.tokenizer)
    encoder_fn = functools.cache(lambda: load_encoder(source, config))  # loaded once, when a seed needs it
    tokenizer_fn = functools.cache(lambda: load_tokenizer(source.tokenizer_dir))
    for name in names:
        task = get_task(name)
        test_files = needed_test_files(task, config, require_ax)
        done = read_json(os.path.join(workdir, name, "result.json"))
        if done and set(test_files) <= set(done["submission_files"]):
            logging.info("%s: finished before (%s), skipped; delete that folder to rerun it", name,
                         os.path.join(workdir, name))
            continue
        run_task(task, config, workdir, encoder_fn, tokenizer_fn, mesh, test_files)
    if jax.process_index() == 0:
        zip_submission(os.path.join(workdir, "submission"))
    return report.write_summary(workdir, config)
