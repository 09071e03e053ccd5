"""Where a fine-tuning run's encoder comes from, shared by the GLUE and SQuAD drivers: `resolve_source` (a
pretraining workdir of ours, a Hugging Face directory or a hub id; `random:SRC` for the no-pretraining control)
and `load_encoder` (the weights every seed starts from, or None for the control)."""

from __future__ import annotations

import dataclasses
import glob
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from convbert import hf_io
from convbert.config import ConvBertConfig
from convbert.modeling import ConvBertModel

# The encoder inside a pretraining workdir of ours: the ELECTRA discriminator, or the model of objective 'mlm'.
PRETRAIN_EXPORTS = (os.path.join("export", "discriminator"), os.path.join("export", "mlm"))
PRETRAIN_TOKENIZER = "tokenizer"
# checkpoint and tokenizer


RANDOM_INIT = "random:"  # `random:SRC`: SRC's config and tokenizer, freshly initialised weights (the control)


@dataclasses.dataclass(frozen=True)
class Source:
    model_dir: str  # Hugging Face-format ConvBERT directory
    tokenizer_dir: str
    random_init: bool = False  # the no-pretraining control: only the config of `model_dir` is used


def resolve_source(init_checkpoint: str, tokenizer: str = "") -> Source:
    """A pretraining workdir of ours (`export/discriminator` or `export/mlm`, + `tokenizer/`), a Hugging Face ConvBERT
    directory, or a hub id (downloaded by `hf_io.resolve_pretrained`); `tokenizer` overrides the tokenizer.
    `random:SRC` is SRC with `random_init` set."""
    random_init = init_checkpoint.startswith(RANDOM_INIT)
    init_checkpoint = init_checkpoint.removeprefix(RANDOM_INIT)
    if not init_checkpoint:
        raise ValueError(
            "config.init_checkpoint is empty: pass a pretraining workdir, a Hugging Face ConvBERT "
            "directory or a hub id such as YituTech/conv-bert-base (random:SRC for a freshly "
            "initialised encoder of SRC's config)"
        )
    export = next((e for e in (os.path.join(init_checkpoint, x) for x in PRETRAIN_EXPORTS) if os.path.isdir(e)), None)
    if not export and os.path.isdir(os.path.join(init_checkpoint, "checkpoints")):
        steps = glob.glob(os.path.join(init_checkpoint, "export", "step_*", "discriminator"))
        latest = max(steps, key=lambda p: int(p.split("step_")[-1].split(os.sep)[0]), default=None)
        raise FileNotFoundError(
            f"config.init_checkpoint={init_checkpoint} is a pretraining workdir without "
            f"{' or '.join(os.path.join(init_checkpoint, x) for x in PRETRAIN_EXPORTS)} (deleted, or the run has not "
            "finished: it exports at its last step). Rerun its `python pretrain.py --workdir=...` to finish and export"
            + (f", or pass an intermediate export such as {latest}" if latest else "")
        )
    if export:
        own_tokenizer = os.path.join(init_checkpoint, PRETRAIN_TOKENIZER)
        model_dir, tokenizer_dir = export, own_tokenizer if os.path.isdir(own_tokenizer) else export
    else:
        model_dir = tokenizer_dir = hf_io.resolve_pretrained(init_checkpoint)
    return Source(model_dir, tokenizer or tokenizer_dir, random_init)


def has_hf_head(model_dir: str) -> bool:
    """Whether the checkpoint carries transformers' classification head (`classifier.dense`,
    docs/recipes.md#glue-heads)."""
    _, weights = hf_io.read_weights(model_dir)
    return any(k.startswith("classifier.dense.") for k in weights)


@dataclasses.dataclass
class Encoder:
    """The encoder every seed starts from."""

    config: ConvBertConfig
    params: nnx.State | None  # host (NumPy) copies, placed afresh for every seed (its steps donate them);
    #                           None: the control, every seed initialises its own encoder from its seed
    head: str  # classifier head form: 'original' or 'hf'


def load_encoder(source: Source, config: ml_collections.ConfigDict) -> Encoder:
    head = "hf" if has_hf_head(source.model_dir) else config.get("classifier_head", "original")
    if source.random_init:
        model_config = ConvBertConfig.load(os.path.join(source.model_dir, hf_io.CONFIG_NAME), dtype=config.dtype)
        logging.info(
            "encoder: RANDOM initialisation with the config of %s (%d layers, hidden %d), classifier head %r",
            source.model_dir,
            model_config.num_hidden_layers,
            model_config.hidden_size,
            head,
        )
        return Encoder(model_config, None, head)
    body = ConvBertModel.from_pretrained(source.model_dir, dtype=config.dtype)
    logging.info(
        "encoder from %s (%d layers, hidden %d), classifier head %r",
        source.model_dir,
        body.config.num_hidden_layers,
        body.config.hidden_size,
        head,
    )
    return Encoder(body.config, jax.tree.map(np.asarray, nnx.state(body, nnx.Param)), head)
