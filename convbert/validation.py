"""Config checks that run before any work (data preparation, a write to the workdir, compilation).

* `define_config_file`: the entry points' `--config` flag; every `--config.KEY` override is looked up in the
  config file first, so an unknown key is one line naming it and the nearest valid key, not a traceback.
* `check_pretraining` / `check_finetuning`: every numeric hyper-parameter against its range (`Range`), the
  warmup against the run length, and the model and objective dataclasses built from their config sections, with
  their errors named by config key (`config.model.hidden_size`, not `ConvBertConfig.hidden_size`).
* `eval_enabled`: whether the prepared eval split holds one global batch; if not, the run says so before training.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from convbert.config import ConvBertConfig, generator_config
from convbert.data.example_builder import MIN_RANDOM_LENGTH
from convbert.electra import ElectraConfig

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


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    for part in key.split("."):
        config = config[part]
    return config


def check_ranges(config: ml_collections.ConfigDict, ranges: Mapping[str, Range]) -> None:
    """One ValueError listing every key of `ranges` whose value in `config` is outside its range."""
    errors = [
        f"config.{key}={value!r} must be {r}" for key, r in ranges.items() if not r.contains(value := _get(config, key))
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
    """Ranges, warmup and the model / objective of `configs/pretrain.py` (ValueErrors naming the key)."""
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


def eval_enabled(config: ml_collections.ConfigDict, manifest: Mapping[str, Any], data_dir: str) -> bool:
    """Whether the pretraining run can evaluate (`num_eval_steps > 0` and an eval split of at least one global
    batch); when it cannot, a warning says why before training."""
    if config.num_eval_steps <= 0:
        return False
    eval_split = manifest["splits"].get("eval", {})
    examples, documents = eval_split.get("examples", 0), manifest["splits"]["train"].get("documents", 0)
    if examples >= config.batch_size:
        return True
    logging.warning(
        "evaluation is disabled: the eval split of %s has %d examples, fewer than one global batch of "
        "config.batch_size=%d (it holds every round(1 / eval_fraction)-th document, eval_fraction=%s, and the "
        "corpus has %d training document(s): a single file is one document). Use a corpus of more files or a larger "
        "config.data.eval_fraction to evaluate, or set config.num_eval_steps=0 to silence this.",
        data_dir,
        examples,
        config.batch_size,
        manifest.get("eval_fraction"),
        documents,
    )
    return False


# ------------------------------------------------------------------------------------------------
# Command-line overrides


def _flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _flat_keys(value, f"{prefix}{key}.")
    return keys


def unknown_key(config: ml_collections.ConfigDict, key: str) -> str | None:
    """None when the dotted `key` (optionally with [i] indices) names a field of `config`, else a message naming
    it and the nearest valid key."""
    node, parents = config, []
    for part in key.split("."):
        name = re.sub(r"\[.*\]$", "", part)
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            break
        node, parents = node[name], parents + [name]
    else:
        return None
    prefix = ".".join(parents)
    keys = _flat_keys(config)
    siblings = [k for k in keys if prefix and k.startswith(prefix + ".")] or keys
    nearest = difflib.get_close_matches(key, siblings, n=1, cutoff=0.0)
    where = (
        ""
        if not prefix
        else f" (config.{prefix} is a value, not a section)"
        if not isinstance(node, ml_collections.ConfigDict)
        else f" (config.{prefix} has no field {key[len(prefix) + 1 :].split('.')[0]!r})"
    )
    return f"config.{key} is not a key of this config{where}" + (
        f"; the nearest valid key is config.{nearest[0]}" if nearest else ""
    )


def _load_config(spec: str) -> ml_collections.ConfigDict:
    """`path.py:arg` -> `get_config(arg)` of that file, as ml_collections' config flag loads it."""
    path, *arg = spec.split(":", 1)
    module_spec = importlib.util.spec_from_file_location("_checked_config", path)
    if module_spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*arg)


def check_overrides(argv: Sequence[str], default: str, name: str = "config") -> None:
    """Exits with one line (status 1) when the config file of `--<name>` (default `default`) cannot be loaded,
    or a `--<name>.KEY` override names no key of it."""
    spec, overrides = default, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if m := re.match(rf"^--?{name}(?:=(.*))?$", arg):
            spec = m[1] if m[1] is not None else (args[i + 1] if i + 1 < len(args) else spec)
        elif m := re.match(rf"^--?(?:no)?{name}\.([^=]+)", arg):
            overrides.append(m[1])
    if not overrides:
        return
    try:
        config = _load_config(spec)
    except Exception as e:  # noqa: BLE001 - any failure to load is reported as one line
        sys.exit(f"FATAL Flags parsing error: --{name}={spec}: {type(e).__name__}: {e}")
    for key in overrides:
        if (message := unknown_key(config, key)) is not None:
            sys.exit(f"FATAL Flags parsing error: --{name}.{key}: {message} ({spec})")


def define_config_file(default: str, help_string: str, name: str = "config") -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)`, after `check_overrides`
    on the command line (ml_collections raises a long traceback without the key's path for an unknown key)."""
    check_overrides(sys.argv, default, name)
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
