"""SQuAD v1.1 / v2.0 fine-tuning: `run(config, workdir)` fine-tunes `num_seeds` seeds and scores the dev set with
the official metrics, ELECTRA's recipe (google-research/electra `finetune/qa/qa_tasks.py`, `configure_finetuning.py`:
max length 512, doc stride 128, question up to 64 tokens, 2 epochs, layer-wise lr decay 0.8, the answerability
classifier for v2.0, weight 0.5).

Training runs on `convbert.finetuning` (the core GLUE uses too); the encoder comes from `config.init_checkpoint`
as for GLUE (`convbert.finetuning.resolve_source`, including `random:SRC` and `freeze_encoder`). Seeds train
together (`config.parallel_seeds`) and a probe (`freeze_encoder`) trains the span head on per-token features
computed once (`config.probe`; spilled to disk beyond `probe_memory_fraction` of host memory), as for GLUE; a
seed whose loss turns non-finite stops without results and the run raises `finetuning.SeedsDiverged` at the
end (finetune_squad.py exits 65). Dev is scored after every epoch; the final epoch's numbers are reported.
Workdir layout:

    config.json                      every start's configuration (`convbert.resume.record_start`)
    seed_<k>/result.json             one finished seed (+ predictions.json, null_odds.json, metrics.jsonl, events)
    predictions.json                 {question id: answer text} of the median seed ('' = no answer)
    null_odds.json                   v2.0: {question id: no-answer odds} of the median seed
    results.json, results.md         the median over seeds (top level), every seed, the reported numbers

Every file is written atomically when its seed finishes; a rerun skips finished seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from convbert import config_checks, finetuning, losses, resume, sharding
from convbert.config import ConvBertConfig
from convbert.fileio import read_json, write_atomic
from convbert.finetuning import load_encoder, resolve_source
from convbert.heads import ConvBertForQuestionAnswering
from convbert.modeling import dense
from convbert.squad import data, metrics, postprocess
from convbert.squad.reference import REFERENCES
from convbert.tokenization import load_tokenizer

VERSIONS = ("v1", "v2")
NO_ANSWER_MASK = -1000.0  # added to the start / end logits outside [CLS] and the context (qa_tasks.py)


class SquadModel(ConvBertForQuestionAnswering):
    """ConvBertForQuestionAnswering (dense H -> 2 per token: start and end logits, masked to [CLS] and the context)
    plus, for v2.0, ELECTRA's answerability classifier (qa_tasks.py `answerable_uses_start_logits`): the [CLS]
    state and the start-probability-weighted state -> dense 512, gelu -> dense 1, the logit that the question
    is unanswerable."""

    def __init__(self, config: ConvBertConfig, *, answerable: bool, rngs):
        super().__init__(config.replace(num_labels=2), rngs=rngs)
        self.answerable = answerable
        if answerable:
            self.answerable_hidden = dense(config, 2 * config.hidden_size, 512, ("embed", "mlp"), rngs=rngs)
            self.answerable_output = dense(config, 512, 1, ("mlp", None), rngs=rngs)

    def __call__(
        self, input_ids, attention_mask, token_type_ids, *, deterministic=True, dropout_rng=None
    ) -> dict[str, jax.Array]:
        """{'start_logits', 'end_logits'} [B, T] float32 and, with the classifier, 'null_logits' [B]."""
        out, _ = self.body(input_ids, attention_mask, token_type_ids, None, deterministic, dropout_rng, False)
        return self.head(out.last_hidden_state, attention_mask, token_type_ids)

    def head(self, hidden, attention_mask, token_type_ids) -> dict[str, jax.Array]:
        """The outputs of `__call__` from the encoder's last hidden states [B, T, H] (no dropout)."""
        answer_mask = (attention_mask * token_type_ids).at[:, 0].set(1)
        logits = self.qa_outputs(hidden).astype(jnp.float32) + NO_ANSWER_MASK * (1 - answer_mask)[..., None]
        result = {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}
        if self.answerable:
            start_p = jax.nn.softmax(result["start_logits"], -1).astype(hidden.dtype)
            features = jnp.concatenate([hidden[:, 0], jnp.einsum("bt,bth->bh", start_p, hidden)], -1)
            hidden_null = jax.nn.gelu(self.answerable_hidden(features), approximate=True)
            result["null_logits"] = self.answerable_output(hidden_null)[:, 0].astype(jnp.float32)
        return result


def encode(model, batch) -> dict[str, jax.Array]:
    """The encoder's last hidden states [B, T, H], dropout off: what the span head reads."""
    out, _ = model.body(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], None, True, None, False)
    return {"hidden": out.last_hidden_state}


def head(model, batch, *, deterministic=True, dropout_rng=None) -> dict[str, jax.Array]:
    del deterministic, dropout_rng  # the span head has no dropout
    return model.head(batch["hidden"], batch["attention_mask"], batch["token_type_ids"])


def example_losses(outputs: dict[str, jax.Array], batch: dict[str, jax.Array], answerable_weight: float) -> jax.Array:
    """[B]: mean of the start and end cross-entropies, + weight x the answerability sigmoid cross-entropy."""
    loss = (
        losses.softmax_cross_entropy(outputs["start_logits"], batch["start_positions"])
        + losses.softmax_cross_entropy(outputs["end_logits"], batch["end_positions"])
    ) / 2
    if "null_logits" in outputs:
        loss += answerable_weight * losses.sigmoid_binary_cross_entropy(outputs["null_logits"], batch["is_impossible"])
    return loss


# ------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class SquadData:
    train: dict[str, np.ndarray]  # training windows with labels
    dev_examples: list[data.Example]
    dev: dict[str, np.ndarray]  # dev windows with offsets
    answer_mismatches: dict[str, int]  # split -> answers whose text is not the context at their offset


def check_files(config) -> None:
    """Fails before any training when a file of the run is missing from `config.data_dir`."""
    if config.data_dir:
        missing = [
            p
            for p in (os.path.join(config.data_dir, f) for f in data.FILES[config.version].values())
            if not os.path.isfile(p)
        ]
        if missing:
            raise FileNotFoundError(
                "SQuAD files not found (expected the official JSON files in config.data_dir): " + ", ".join(missing)
            )


def prepare_data(config, tokenizer) -> SquadData:
    feats = functools.partial(
        data.featurize,
        tokenizer=tokenizer,
        max_seq_length=config.max_seq_length,
        doc_stride=config.doc_stride,
        max_query_length=config.max_query_length,
    )
    train_examples = data.load_split(config.version, "train", config.data_dir)
    dev_examples = data.load_split(config.version, "dev", config.data_dir)
    data.check_answers(train_examples, f"SQuAD {config.version} train")
    dev_mismatches = len(data.check_answers(dev_examples, f"SQuAD {config.version} dev"))
    train, counts = feats(train_examples, training=True)
    dev, _ = feats(dev_examples, training=False)
    logging.info(
        "SQuAD %s: %d training questions -> %d windows (%d dropped: answer not at its offset; %d windows "
        "without the answer), %d dev questions -> %d windows",
        config.version,
        len(train_examples),
        len(train["input_ids"]),
        counts["answer_mismatch"],
        counts["windows_without_answer"],
        len(dev_examples),
        len(dev["input_ids"]),
    )
    return SquadData(train, dev_examples, dev, {"train": counts["answer_mismatch"], "dev": dev_mismatches})


def gold_answers(examples: list[data.Example]) -> dict[str, list[str]]:
    return {ex.qid: [text for text, _ in ex.answers] for ex in examples}


# ------------------------------------------------------------------------------------------------
# training


def squad_model_fn(encoder, config) -> Callable[[nnx.Rngs], SquadModel]:
    model_config, v2 = encoder.config.replace(dtype=config.dtype), config.version == "v2"
    return lambda rngs: SquadModel(model_config, answerable=v2, rngs=rngs)


class SquadTrainer(finetuning.Trainer):
    """`finetuning.Trainer` for SQuAD and `copies` seeds: `SquadModel`, the span (+ answerability) loss, dev
    decoding and scoring."""

    def __init__(self, encoder, config, mesh, num_train_windows: int, copies: int):
        if num_train_windows < config.batch_size:
            raise ValueError(
                f"SQuAD: {num_train_windows} training windows are fewer than config.batch_size={config.batch_size}"
            )
        if config.max_seq_length > encoder.config.max_position_embeddings:
            raise ValueError(
                f"config.max_seq_length={config.max_seq_length} exceeds the checkpoint's "
                f"max_position_embeddings={encoder.config.max_position_embeddings}"
            )
        self.v2 = config.version == "v2"

        def forward(model, batch, **kw):
            return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw)

        super().__init__(
            squad_model_fn(encoder, config),
            forward,
            functools.partial(example_losses, answerable_weight=config.answerable_weight),
            config,
            mesh,
            num_train_windows // config.batch_size * config.num_train_epochs,
            encoder.config.num_hidden_layers,
            encoder.params,
            copies,
            encode,
            head,
            data.FEATURES,
            ("hidden",),
            ("attention_mask", "token_type_ids"),
        )

    def evaluate(
        self, params, squad: SquadData, dev: list[dict[str, np.ndarray]]
    ) -> list[tuple[dict[str, float], dict[str, str], dict[str, float] | None]]:
        """Per copy: (metrics, predictions with '' above the no-answer threshold, null odds or None) on the dev
        set (`dev[c]`: copy c's dev windows)."""
        outs, gold, out = finetuning.predict(self, params, dev), gold_answers(squad.dev_examples), []
        for c in range(self.copies):
            preds, odds = postprocess.decode(
                squad.dev_examples,
                squad.dev,
                outs["start_logits"][c],
                outs["end_logits"][c],
                outs["null_logits"][c] if self.v2 else None,
                self.config.n_best_size,
                self.config.max_answer_length,
            )
            if not self.v2:
                out.append((metrics.evaluate_v1(gold, preds), preds, None))
            else:
                scores = metrics.evaluate_v2(gold, preds, odds, self.config.null_threshold)
                out.append((scores, postprocess.apply_threshold(preds, odds, self.config.null_threshold), odds))
        return out


def train_group(
    trainer: SquadTrainer, squad: SquadData, seeds: list[int], workdir: str
) -> tuple[dict[int, tuple[dict, dict[str, str], dict[str, float] | None]], dict[int, int]]:
    """Fine-tunes `seeds` together, scoring dev after every epoch (`finetuning.train_scored`); returns ({finished
    seed: (result, predictions, null odds)}, {diverged seed: step})."""
    config = trainer.config
    if trainer.cached:
        cache = functools.partial(
            trainer.cached_features, trainer.init_state(seeds), keys=data.FEATURES, spill_dir=workdir
        )
        train, dev = cache(squad.train), cache(squad.dev)
    else:
        train, dev = [squad.train] * len(seeds), [squad.dev] * len(seeds)
    _, finished, diverged = finetuning.train_scored(
        trainer,
        train,
        (*trainer.input_keys, *data.LABELS),
        seeds,
        config.num_train_epochs,
        workdir,
        f"SQuAD {config.version}",
        lambda params: [(scores, (p, odds)) for scores, p, odds in trainer.evaluate(params, squad, dev)],
        _format,
        "train_windows_per_sec",
    )
    return {seed: (result, *extra) for seed, (result, extra) in finished.items()}, diverged


# ------------------------------------------------------------------------------------------------
# the run and its summary


def _format(scores: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.2f}" for k, v in scores.items() if not k.endswith("total"))


TABLE_METRICS = {
    "v1": (("exact_match", "EM"), ("f1", "F1")),
    "v2": (
        ("exact_match", "EM"),
        ("f1", "F1"),
        ("best_exact", "best EM"),
        ("best_f1", "best F1"),
        ("HasAns_f1", "HasAns F1"),
        ("NoAns_f1", "NoAns F1"),
    ),
}


def markdown(summary: dict) -> str:
    """Ours (every seed and the median) beside the reported numbers of the size, one row each."""
    version = summary["version"]
    keys = TABLE_METRICS[version]
    name = {"v1": "SQuAD v1.1", "v2": "SQuAD v2.0"}[version]
    lines = [
        f"# {name} dev results",
        "",
        f"Fine-tuned from `{summary['init_checkpoint']}` (size `{summary['size']}`): the official evaluation "
        "script's numbers on the dev set after the final epoch"
        + (
            f"; EM / F1 answer '' when the no-answer odds exceed {summary['null_threshold']:g}, best EM / F1 "
            "with the threshold chosen on dev"
            if version == "v2"
            else ""
        )
        + ".",
        "",
        "| run | " + " | ".join(title for _, title in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]

    def row(title, values):
        return f"| {title} | " + " | ".join("" if values.get(k) is None else f"{values[k]:.1f}" for k, _ in keys) + " |"

    lines += [row(f"ours, seed {s['seed']}", s["dev"]) for s in summary["seeds"]]
    lines.append(row(f"ours, median of {len(summary['seeds'])}", summary["median"]))
    lines += [row(r["title"], r["results"]) for r in summary["references"]]
    if any(summary["answer_mismatches"].values()):
        lines += [
            "",
            "Answers whose text is not the context at their offset: "
            + ", ".join(f"{k} {v}" for k, v in summary["answer_mismatches"].items())
            + " (training drops those questions).",
        ]
    return "\n".join(lines) + "\n"


def run(config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None) -> dict:
    """Fine-tunes SQuAD `config.version` for `config.num_seeds` seeds; writes the seeds, the median seed's
    predictions and the summary to `workdir`; returns the summary. The mesh (`config.mesh`) spans `devices`
    (default: all)."""
    if config.version not in VERSIONS:
        raise ValueError(f"config.version must be one of {', '.join(VERSIONS)}, got {config.version!r}")
    if config.loss_reduction not in ("sum", "mean"):
        raise ValueError(f"config.loss_reduction must be 'sum' or 'mean', got {config.loss_reduction!r}")
    config_checks.check_finetuning(config, config_checks.SQUAD)
    check_files(config)
    mesh = sharding.create_mesh(config.mesh.to_dict(), devices)
    sharding.check_batch_size(config.batch_size, mesh, "batch_size", grad_accum_steps=config.grad_accum_steps)
    sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    if jax.process_index() == 0:
        resume.record_finetuning_start(workdir, config)
    source = resolve_source(config.init_checkpoint, config.tokenizer)
    results, todo, diverged = {}, [], {}
    for seed in range(config.seed, config.seed + config.num_seeds):
        seed_dir = os.path.join(workdir, f"seed_{seed}")
        result = read_json(os.path.join(seed_dir, "result.json"))
        if result:
            logging.info("SQuAD seed %d: finished before, read from %s", seed, seed_dir)
            results[seed] = result
        else:
            todo.append(seed)
    if todo:
        squad, encoder = prepare_data(config, load_tokenizer(source.tokenizer_dir)), load_encoder(source, config)
        windows = len(squad.train["input_ids"])
        size = finetuning.seed_group_size(
            config, mesh, squad_model_fn(encoder, config), config.max_seq_length, len(todo)
        )
        logging.info("SQuAD: seeds %s, %d at a time", todo, size)
        trainers = {}
        for group in finetuning.seed_groups(todo, size):
            if len(group) not in trainers:
                trainers[len(group)] = SquadTrainer(encoder, config, mesh, windows, len(group))
            finished, failed = train_group(trainers[len(group)], squad, group, workdir)
            diverged.update(failed)
            for seed, (result, predictions, null_odds) in finished.items():
                result["answer_mismatches"] = squad.answer_mismatches
                files = {"predictions.json": predictions, "null_odds.json": null_odds, "result.json": result}
                for name, obj in files.items():  # result.json last: it marks the seed finished
                    if obj is not None:
                        finetuning.write_json(os.path.join(workdir, f"seed_{seed}", name), obj, ensure_ascii=False)
                results[seed] = result
    failed = finetuning.SeedsDiverged({f"SQuAD seed {k}": v for k, v in diverged.items()}, config)
    if not results:
        raise failed
    seeds = [results[s] for s in sorted(results)]
    mismatches = seeds[-1]["answer_mismatches"]
    chosen = finetuning.median_seed(seeds, lambda s: s["dev"]["f1"])
    for name in ("predictions.json", "null_odds.json"):
        path = os.path.join(workdir, f"seed_{chosen['seed']}", name)
        if jax.process_index() == 0 and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                write_atomic(os.path.join(workdir, name), f.read())
    median = {k: float(np.median([s["dev"][k] for s in seeds])) for k in seeds[0]["dev"]}
    summary = {
        **median,
        "version": config.version,
        "size": config.size,
        "init_checkpoint": config.init_checkpoint,
        "split": "dev",
        "null_threshold": config.null_threshold if config.version == "v2" else None,
        "median": median,
        "prediction_seed": chosen["seed"],
        "answer_mismatches": mismatches,
        "seeds": [{"seed": s["seed"], "dev": s["dev"]} for s in seeds],
        "diverged": {str(k): v for k, v in diverged.items()},  # seed -> step; a rerun trains these again
        "references": [
            {"title": r.title, "results": r.results[config.version]} for r in REFERENCES.get(config.size, [])
        ],
    }
    finetuning.write_json(os.path.join(workdir, "results.json"), summary, ensure_ascii=False)
    if jax.process_index() == 0:
        write_atomic(os.path.join(workdir, "results.md"), markdown(summary))
    logging.info("SQuAD %s: median over %d seeds %s", config.version, len(seeds), _format(median))
    if diverged:
        raise failed
    return summary
