"""Continued pretraining from released weights: `--config.init_from=SRC` (and `--config.init_generator_from=SRC`)
(docs/checkpoints.md#continued-pretraining).

SRC is a directory or hub id: a TF1 conversion (`python -m convbert.tf1`) or a pretraining export, i.e. a folder
with `discriminator/` and `generator/`; a Hugging Face ELECTRA discriminator with its generator in
`init_generator_from` (`google/electra-small-discriminator` + `-generator`); or a discriminator alone (the hub's
ConvBERT: a fresh generator of `config.electra.generator_fraction`, with a warning). `apply` runs first in the
pretraining pre-flight, before anything is checked or written:

* SRC's model config wins over the recipe's `model` section (its architecture fields; how the model is computed,
  the `RUNTIME_FIELDS`, stays the recipe's), and with a generator its `generator_fraction`; a command-line override
  that disagrees with SRC is an error;
* the tokenizer is SRC's WordPiece vocabulary (`vocab.txt`): `config.data` tokenises `corpus` with it, and a
  prepared `data_dir` of another vocabulary is refused;
* a workdir holding checkpoints of another run is refused; the run's own (same sources) resume as usual.

`load` then gives the pair's parameters for `TrainSteps.init`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging
from flax import nnx

from convbert import checkpoint, hf_io
from convbert.config import RUNTIME_FIELDS, ConvBertConfig, generator_config
from convbert.electra import ElectraModel
from convbert.tokenization import VOCAB_NAME, ConvBertTokenizer, load_tokenizer, load_vocab

NETWORKS = ("discriminator", "generator")  # the folders of a TF1 conversion or an export


@dataclasses.dataclass(frozen=True)
class Source:
    """Local folders of the discriminator and the generator (None: a fresh one), their configs, the vocabulary."""

    discriminator: str
    generator: str | None
    disc_config: ConvBertConfig
    gen_config: ConvBertConfig | None
    vocab: str
    lowercase: bool


def resolve(init_from: str, init_generator_from: str = "") -> Source:
    """The `Source` of `init_from` (+ `init_generator_from`); FileNotFoundError / ValueError say what is missing."""
    root = hf_io.resolve_pretrained(init_from)
    if all(os.path.isdir(os.path.join(root, n)) for n in NETWORKS):
        disc, gen = (os.path.join(root, n) for n in NETWORKS)
    else:
        disc, gen = root, None
    if init_generator_from:
        gen = hf_io.resolve_pretrained(init_generator_from)
    vocab = os.path.join(disc, VOCAB_NAME)
    if not os.path.isfile(vocab):
        raise FileNotFoundError(
            f"config.init_from={init_from}: no {VOCAB_NAME} in {disc}; the run tokenises with the source's vocabulary"
        )
    return Source(
        disc,
        gen,
        ConvBertConfig.load(disc),
        None if gen is None else ConvBertConfig.load(gen),
        vocab,
        ConvBertTokenizer.from_pretrained(disc).do_lower_case,
    )


def _architecture(config: ml_collections.ConfigDict) -> list[str]:
    """The model fields SRC decides: those of `config.model` but the runtime ones."""
    return [k for k in config.model if k not in RUNTIME_FIELDS]


def apply(config: ml_collections.ConfigDict, workdir: str, overrides: Mapping[str, Any] | None = None) -> Source | None:
    """Sets `config`'s model, generator fraction and tokenizer from `config.init_from` (see the module doc); None
    without one. `overrides`: the command line's `--config.KEY` values (a model override that disagrees with SRC is
    an error). Raises ValueError before anything is written."""
    if not config.init_from:
        if config.init_generator_from:
            raise ValueError("config.init_generator_from needs config.init_from (the discriminator)")
        return None
    if config.objective != "electra":
        raise ValueError(f"config.init_from continues ELECTRA pretraining; config.objective={config.objective!r}")
    source = resolve(config.init_from, config.init_generator_from)
    disc = source.disc_config
    wanted = {f"model.{k}": getattr(disc, k) for k in _architecture(config)}
    if source.gen_config is not None:
        fraction = source.gen_config.hidden_size / disc.hidden_size
        gen = generator_config(disc, fraction)
        differ = [k for k in _architecture(config) if getattr(gen, k) != getattr(source.gen_config, k)]
        if differ:
            raise ValueError(
                f"the generator {source.generator} is not the one this code builds for its discriminator (hidden "
                f"{source.gen_config.hidden_size}: generator_fraction {fraction:g}); it differs in {', '.join(differ)}"
            )
        wanted["electra.generator_fraction"] = fraction
    wanted.update({"data.tokenizer": "wordpiece", "data.vocab": source.vocab})
    conflicts = [
        f"--config.{k}={v!r} (the source has {wanted[k]!r})"
        for k, v in (overrides or {}).items()
        if k in wanted and v != wanted[k] and not (k == "data.vocab" and _same_vocab(v, source.vocab))
    ]
    if conflicts:
        raise ValueError(
            f"config.init_from={config.init_from} sets the model and tokenizer; these overrides disagree with it: "
            + "; ".join(conflicts)
        )
    for key, value in wanted.items():
        section, name = key.split(".")
        if config[section][name] != value:
            logging.info("config.%s: %r -> %r (from %s)", key, config[section][name], value, config.init_from)
            config[section][name] = value
    _check_workdir(config, workdir)
    _check_data(config, source)
    return source


def _same_vocab(a: str, b: str) -> bool:
    return load_vocab(a) == load_vocab(b)


def _check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """ValueError when `workdir` holds checkpoints of a run that did not start from these sources."""
    found = checkpoint.latest_meta(os.path.join(workdir, "checkpoints"))
    if found is None:
        return
    step, meta = found
    recorded = meta.get("config", {})
    if (recorded.get("init_from"), recorded.get("init_generator_from")) != (
        config.init_from,
        config.init_generator_from,
    ):
        raise ValueError(
            f"config.init_from starts a new run, but {workdir} already holds checkpoints (step {step}) of a run "
            "that did not start from it: use an empty --workdir"
        )


def _check_data(config: ml_collections.ConfigDict, source: Source) -> None:
    """ValueError when the prepared `config.data.data_dir` was tokenised with another vocabulary than the source's,
    or when the corpus would be (a cased source: prepare it with --lowercase=false)."""
    if not config.data.data_dir:
        if not source.lowercase:
            raise ValueError(
                f"{source.discriminator} is cased: prepare the corpus with `python -m convbert.data.prepare "
                f"--vocab={source.vocab} --lowercase=false` and set config.data.data_dir"
            )
        return
    tokenizer = load_tokenizer(config.data.data_dir)
    same = (
        isinstance(tokenizer, ConvBertTokenizer)
        and tokenizer.tokens == load_vocab(source.vocab)
        and tokenizer.do_lower_case == source.lowercase
    )
    if not same:
        raise ValueError(
            f"config.data.data_dir={config.data.data_dir} was prepared with another vocabulary ({tokenizer.kind}, "
            f"{tokenizer.vocab_size} entries) than config.init_from's {source.vocab}: prepare it with "
            f"`python -m convbert.data.prepare --vocab={source.vocab}` or leave data_dir empty to prepare "
            "config.data.corpus with it"
        )


def load(source: Source, config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
    """{top-level module of `ElectraModel`: its parameters} of the source (`TrainSteps.init`'s `pretrained`); a
    missing generator is fresh (from `config.seed`, with a warning)."""
    model = ElectraModel.from_pretrained(
        source.discriminator,
        source.generator,
        generator_fraction=config.electra.generator_fraction,
        rngs=nnx.Rngs(config.seed),
        scan_layers=config.model.scan_layers,
    )
    logging.info("initialised from %s%s", source.discriminator, f" and {source.generator}" if source.generator else "")
    return {name: nnx.state(getattr(model, name), nnx.Param) for name in vars(model) if _is_module(model, name)}


def _is_module(model: nnx.Module, name: str) -> bool:
    return isinstance(getattr(model, name), nnx.Module)
