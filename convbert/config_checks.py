"""Config checks that run before any work (data preparation, a write to the workdir, compilation).

* `check_pretraining` / `check_finetuning`: every numeric hyper-parameter against its range (`Range`), the
  warmup against the run length, and the model and objective dataclasses built from their config sections, with
  their errors named by config key (`config.model.hidden_size`, not `ConvBertConfig.hidden_size`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from convbert import distributed
from convbert.config import OBJECTIVES, ConvBertConfig, ElectraConfig, generator_config
from convbert.config_file import lookup, unknown_key
from convbert.data.example_builder import MIN_RANDOM_LENGTH

# ------------------------------------------------------------------------------------------------
# Ranges


@dataclasses.dataclass(frozen=True)
class Range:
    """A number's valid range: `low` <= x (< with `low_open`), x <= `high` (< with `high_open`); `integer`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        return (self.low is None or (value > self.low if self.low_open else value >= self.low)) and (
            self.high is None or (value < self.high if self.high_open else value <= self.high)
        )

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.high is None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE_INT, COUNT, POSITIVE = Range(1, integer=True), Range(0, integer=True), Range(0, low_open=True)
# config.distributed (convbert/distributed.py): seconds
DISTRIBUTED = {f"distributed.{k}": POSITIVE_INT for k in distributed.DEFAULTS}
PROBABILITY_OPEN_LOW = Range(0, 1, low_open=True)
DECAY = Range(0, 1, high_open=True)

# configs/pretrain.py. The model's fields are checked by `ConvBertConfig`, the objective's by `ElectraConfig`.
PRETRAINING: dict[str, Range] = {
    "seed": COUNT,
    "batch_size": POSITIVE_INT,
    "max_seq_length": Range(MIN_RANDOM_LENGTH, integer=True),
    "num_train_steps": POSITIVE_INT,
    "log_every_steps": POSITIVE_INT,
    "checkpoint_every_steps": POSITIVE_INT,
    "eval_every_steps": COUNT,
    "num_eval_steps": COUNT,
    "grad_accum_steps": POSITIVE_INT,
    "export_every_steps": COUNT,
    "optimizer.learning_rate": POSITIVE,
    "optimizer.warmup_steps": COUNT,
    "optimizer.weight_decay": Range(0),
    "optimizer.b1": DECAY,
    "optimizer.b2": DECAY,
    "optimizer.eps": POSITIVE,
    "optimizer.clip_norm": POSITIVE,
    "optimizer.lr_decay_power": POSITIVE,
    "electra.generator_fraction": PROBABILITY_OPEN_LOW,
    "electra.gen_weight": Range(0),
    "electra.disc_weight": Range(0),
    "data.eval_fraction": Range(0, 0.5),
    "data.sp_vocab_size": POSITIVE_INT,
    "data.num_workers": COUNT,
    "checkpoint.max_to_keep": POSITIVE_INT,
    "profile.num_steps": POSITIVE_INT,
    **DISTRIBUTED,
}
# convbert.finetuning.default_config (GLUE and SQuAD).
FINETUNING: dict[str, Range] = {
    "learning_rate": POSITIVE,
    "probe_learning_rate": POSITIVE,
    "layerwise_lr_decay": Range(0, 1, low_open=True),
    "warmup_proportion": Range(0, 1),
    "weight_decay": Range(0),
    "clip_norm": POSITIVE,
    "num_seeds": POSITIVE_INT,
    "parallel_seeds": COUNT,
    "probe_memory_fraction": Range(0, 1),
    "seed": COUNT,
    "log_every_steps": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "max_seq_length": Range(4, integer=True),  # [CLS] a [SEP] b [SEP] with one token
    **DISTRIBUTED,
}
SQUAD: dict[str, Range] = {
    **FINETUNING,
    "num_train_epochs": POSITIVE_INT,
    "doc_stride": POSITIVE_INT,
    "max_query_length": POSITIVE_INT,
    "n_best_size": POSITIVE_INT,
    "max_answer_length": POSITIVE_INT,
    "answerable_weight": Range(0),
}
WARMUP_WARNING_FRACTION = 0.5  # a warmup longer than this part of the run gets a warning


def check_ranges(config: ml_collections.ConfigDict, ranges: Mapping[str, Range]) -> None:
    """One ValueError listing every key of `ranges` whose value in `config` is outside its range."""
    errors = [
        f"config.{key}={value!r} must be {r}"
        for key, r in ranges.items()
        if not r.contains(value := lookup(config, key))
    ]
    if errors:
        raise ValueError("; ".join(errors))


def _warn_long_warmup(warmup: float, total: float, what: str) -> None:
    if warmup > WARMUP_WARNING_FRACTION * total:
        logging.warning(
            "%s: the learning rate warms up over %.0f%% of training and decays over the rest; the "
            "paper's recipes warm up over 1%% (pretraining) or 10%% (fine-tuning)",
            what,
            100 * warmup / total,
        )


# ------------------------------------------------------------------------------------------------
# Dataclasses built from config sections


def build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    """`cls(**values)`, its ValueErrors naming `config.<section>.<field>` rather than `<cls>.<field>` (the one
    place that translates them); a field `cls` does not know is a ValueError naming it too."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"config.{section}: unknown key(s) {', '.join(unknown)}")
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(str(e).replace(f"{cls.__name__}.", f"config.{section}.")) from None


def check_pretraining(config: ml_collections.ConfigDict) -> None:
    """The objective, ranges, warmup, sequence lengths and the model / objective dataclasses of
    `configs/pretrain.py`, each checked once (ValueErrors naming the key); `convbert.pretrain_setup` checks the
    config against the prepared data."""
    if config.objective not in OBJECTIVES:
        raise ValueError(f"config.objective={config.objective!r}: choose from {', '.join(OBJECTIVES)}")
    check_ranges(config, PRETRAINING)
    o = config.optimizer
    if o.warmup_steps > config.num_train_steps:
        raise ValueError(
            f"config.optimizer.warmup_steps={o.warmup_steps} exceeds config.num_train_steps="
            f"{config.num_train_steps}: the learning rate would never reach its peak; set "
            f"--config.optimizer.warmup_steps to at most {config.num_train_steps}"
        )
    _warn_long_warmup(
        o.warmup_steps,
        config.num_train_steps,
        f"config.optimizer.warmup_steps={o.warmup_steps} of config.num_train_steps={config.num_train_steps}",
    )
    allowed_changes(config)
    model = build(ConvBertConfig, "model", config.model.to_dict())
    build(ElectraConfig, "electra", config.electra.to_dict())
    if config.max_seq_length > config.model.max_position_embeddings:
        raise ValueError(
            f"config.max_seq_length={config.max_seq_length} exceeds config.model."
            f"max_position_embeddings={config.model.max_position_embeddings}"
        )
    if config.electra.max_predictions_per_seq > config.max_seq_length:
        raise ValueError(
            f"config.electra.max_predictions_per_seq={config.electra.max_predictions_per_seq} must be in "
            f"[1, config.max_seq_length={config.max_seq_length}] (default: int((mask_prob + 0.005) * "
            "max_seq_length), as google-research/electra configure_pretraining.py)"
        )
    if config.objective == "electra":
        try:
            generator_config(model, config.electra.generator_fraction)
        except ValueError as e:
            raise ValueError(f"config.electra.generator_fraction: {e}") from None


def check_finetuning(config: ml_collections.ConfigDict, ranges: Mapping[str, Range] = FINETUNING) -> None:
    """Ranges, probe mode and warmup of a fine-tuning config (`FINETUNING`, or `SQUAD`)."""
    check_ranges(config, ranges)
    from convbert.finetuning import PROBES

    if config.probe not in PROBES:
        raise ValueError(f"config.probe={config.probe!r} must be one of {', '.join(PROBES)}")
    _warn_long_warmup(config.warmup_proportion, 1.0, f"config.warmup_proportion={config.warmup_proportion}")


def allowed_changes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`config.resume.allow_changes` (comma-separated) as keys, each a key or section of `config`."""
    keys = tuple(k.strip() for k in config.resume.allow_changes.split(",") if k.strip())
    for key in keys:
        if (message := unknown_key(config, key)) is not None:
            raise ValueError(f"config.resume.allow_changes={config.resume.allow_changes!r}: {message}")
    return keys
