"""The fine-tuning core shared by the GLUE and SQuAD drivers (`convbert.glue.finetune`, `convbert.squad.finetune`).

`Trainer` configures the training core (`convbert.train_state`, shared with pretraining: split once, sharded
init, jitted train step with the state donated, eval step) for a task's `forward` and per-example loss, with
the original optimizer (AdamW without bias correction, warmup + linear decay, layer-wise lr decay;
google-research/electra `model/optimization.py`). `train_epochs` is the epoch loop both drivers run: a new
data order per epoch from the seed, progress bar, metrics every `config.log_every_steps`, a callback after
each epoch.

Config keys read: learning_rate, probe_learning_rate, warmup_proportion, layerwise_lr_decay, weight_decay, clip_norm,
freeze_encoder, loss_reduction, grad_accum_steps, sharding_rules, batch_size, log_every_steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from convbert import distributed, optim, sharding
from convbert.metric_writer import MetricWriter
from convbert.train_state import TrainState, TrainSteps

ENCODER = "convbert"  # the attribute of every task model (`_HeadModel`) that holds the encoder

# Per size: the peak learning rate of ConvBERT's fine-tuning recipe (yitu-opensource/ConvBert
# `configure_finetuning.py`; large: ELECTRA-large's, google-research/electra `configure_finetuning.py`;
# docs/recipes.md#glue-fine-tuning) and the checkpoint fine-tuned by default (ours for tiny and large, else the
# released weights).
RECIPES = {
    "tiny": dict(learning_rate=5e-4, init_checkpoint="workdirs/pretrain_tiny"),
    "small": dict(learning_rate=3e-4, init_checkpoint="YituTech/conv-bert-small"),
    "medium_small": dict(learning_rate=3e-4, init_checkpoint="YituTech/conv-bert-medium-small"),
    "base": dict(learning_rate=1e-4, init_checkpoint="YituTech/conv-bert-base"),
    "large": dict(learning_rate=5e-5, layerwise_lr_decay=0.9, init_checkpoint="workdirs/pretrain_large"),  # ELECTRA's
}


def default_config(size: str, where: str) -> ml_collections.ConfigDict:
    """The keys every fine-tuning driver reads, with the recipe for `size` (one of `RECIPES`; `where` names
    the config file in the error for another size). Drivers add their own keys and per-task values."""
    if size not in RECIPES:
        raise ValueError(f"{where}: unknown size {size!r}; choose from {', '.join(RECIPES)}")
    c = ml_collections.ConfigDict()
    c.size = size
    # A pretraining workdir, a Hugging Face directory or a hub id; `random:SRC` fine-tunes a freshly initialised
    # encoder with SRC's config and tokenizer (the no-pretraining control; every seed draws its own encoder).
    c.init_checkpoint = RECIPES[size]["init_checkpoint"]
    c.freeze_encoder = False  # True: train only the task head (a probe of the encoder's representation)
    c.tokenizer = ""  # empty: the checkpoint's (our workdir's tokenizer/, or the directory's vocab.txt)
    c.learning_rate = RECIPES[size]["learning_rate"]
    # Peak lr of the head alone when `freeze_encoder` (a linear probe): at `learning_rate` the head of the tiny
    # recipe stays near its initialisation over 3 epochs (docs/transfer.md, "The probe").
    c.probe_learning_rate = 1e-2
    c.layerwise_lr_decay = RECIPES[size].get("layerwise_lr_decay", 0.8)  # embeddings decay^(L+2), layer i ^(L+1-i)
    c.warmup_proportion = 0.1
    c.weight_decay = 0.01  # decoupled, not on LayerNorm / bias
    c.clip_norm = 1.0
    c.loss_reduction = "sum"  # 'sum' over the batch as the original, or 'mean' (changes what the clip sees)
    c.grad_accum_steps = 1  # micro-batches per step (batch_size / grad_accum_steps rows each), same gradient
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters and optimizer state stay float32)
    c.num_seeds = 1  # each seed: new head init, data order and dropout; results report every seed and the median
    c.seed = 0  # seeds used: seed, seed + 1, ..., seed + num_seeds - 1
    c.log_every_steps = 10 if size == "tiny" else 100
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # data parallel over all devices
    c.sharding_rules = sharding.DEFAULT_RULES
    c.distributed = distributed.default_config()  # multi-process timeouts (convbert/distributed.py)
    return c


def make_optimizer(config, params, num_layers: int, total_steps: int):
    """(tx, schedule): the original AdamW (no bias correction), warmup then linear decay, layer-wise lr decay
    (google-research/electra `model/optimization.py`). With `config.freeze_encoder` every parameter under
    `convbert` gets multiplier 0 (its update, weight decay included, is exactly zero), so only the head trains, with
    peak lr `config.probe_learning_rate`."""
    peak = config.probe_learning_rate if config.freeze_encoder else config.learning_rate
    schedule = optim.warmup_linear_decay(peak, total_steps, int(total_steps * config.warmup_proportion))
    multipliers = optim.layerwise_lr_multipliers(params, num_layers, config.layerwise_lr_decay)
    if config.freeze_encoder:
        multipliers = jax.tree_util.tree_map_with_path(
            lambda p, m: 0.0 if optim.path_names(p)[0] == ENCODER else m, multipliers
        )
    tx = optim.electra_adamw(
        schedule,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        params=params,
        lr_multipliers=multipliers,
    )
    return tx, schedule


def local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's part of a global batch of row indices."""
    n = len(rows) // jax.process_count()
    return rows[jax.process_index() * n : (jax.process_index() + 1) * n]


def shard_rows(features: dict[str, np.ndarray], rows: np.ndarray, keys: Sequence[str], mesh) -> dict[str, jax.Array]:
    """Global batch `features[k][rows]` for `keys`, split over the mesh's batch axes (each process feeds its part)."""
    rows = local_rows(rows)
    return sharding.shard_batch({k: features[k][rows] for k in keys}, mesh)


class Trainer(TrainSteps):
    """`train_state.TrainSteps` of one fine-tuning task on `mesh`, built once and reused by every seed (same shapes
    and shardings, so the steps compile once): the task model, the original optimizer (`make_optimizer`), the
    per-example losses summed over the batch (`loss_reduction='mean'`: divided by the global batch size, so that
    `grad_accum_steps` micro-batches give the batch's gradient too), the encoder frozen with `freeze_encoder`.

    model_fn(rngs) -> task model with the encoder at `.convbert`; forward(model, batch, deterministic=...,
    dropout_rng=...) -> outputs (an array or a dict of arrays [B, ...]); example_losses(outputs, batch) -> [B].
    encoder_params: host copies loaded into every seed's encoder, or None (each seed initialises its own).
    `train_step(state, batch)` -> (state, metrics: loss [grad_accum_steps] (mean per example of each micro-batch),
    grad_norm, param_norm, learning_rate); `eval_step(params, batch, None)` -> outputs with dropout off.
    """

    def __init__(
        self,
        model_fn: Callable[[nnx.Rngs], nnx.Module],
        forward: Callable,
        example_losses: Callable,
        config,
        mesh,
        total_steps: int,
        num_layers: int,
        encoder_params: nnx.State | None,
    ):
        self.config, self.total_steps, self.encoder_params = config, total_steps, encoder_params
        reduction, batch_size = config.loss_reduction, config.batch_size

        def loss_fn(model, batch, rng, normalizers):
            del normalizers  # per-example losses: the global batch size is the only denominator
            per_example = example_losses(forward(model, batch, deterministic=False, dropout_rng=rng), batch)
            total = per_example.sum()
            return (total if reduction == "sum" else total / batch_size), {"loss": per_example.mean()}

        super().__init__(
            model_fn,
            lambda params: make_optimizer(config, params, num_layers, total_steps),
            loss_fn,
            lambda model, batch, rng: forward(model, batch, deterministic=True),
            mesh,
            config.sharding_rules,
            grad_accum_steps=config.grad_accum_steps,
            frozen=(ENCODER,) if config.freeze_encoder else (),
        )

    def init_keys(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The seed's key for both the head (`nnx.Rngs(key)`) and dropout (`fold_in(key, step)`), the streams of
        every earlier fine-tuning run, so that a seed reproduces its published results."""
        return key, key

    def init_state(self, seed: int) -> TrainState:
        """The loaded encoder (without one: an encoder initialised from `seed`) and a head initialised from `seed`."""
        key = jax.random.PRNGKey(seed)
        return self.init(key) if self.encoder_params is None else self.init(key, {ENCODER: self.encoder_params})

    def batch(self, features: dict[str, np.ndarray], rows: np.ndarray, keys: Sequence[str]) -> dict[str, jax.Array]:
        return shard_rows(features, rows, keys, self.mesh)


def train_epochs(
    trainer: Trainer,
    train: dict[str, np.ndarray],
    keys: Sequence[str],
    seed: int,
    epochs: int,
    writer: MetricWriter,
    desc: str,
    on_epoch_end: Callable[[int, int, TrainState], None],
):
    """Trains `epochs` passes over `train` (rows [N, ...]; each epoch a permutation from `seed`, its last partial
    batch dropped); calls on_epoch_end(epoch, step, state) after each. Returns (state, train seconds without the
    first step's compilation)."""
    config, bs, total = trainer.config, trainer.config.batch_size, trainer.total_steps
    n = len(train[keys[0]])
    state, rng = trainer.init_state(seed), np.random.default_rng(seed)
    step, train_time = 0, 0.0
    for epoch in range(1, epochs + 1):
        order, epoch_start = rng.permutation(n), time.time()
        bar = tqdm(
            range(n // bs),
            desc=f"{desc} seed {seed} epoch {epoch}/{epochs}",
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        for i in bar:
            state, out = trainer.train_step(state, trainer.batch(train, order[i * bs : (i + 1) * bs], keys))
            step += 1
            if step == 1:  # the throughput leaves out the compilation
                jax.block_until_ready(out)
                epoch_start = time.time()
            if step % config.log_every_steps == 0 or step == total:
                scalars = {f"train/{k}": float(np.mean(v)) for k, v in out.items()}  # loss: over micro-batches
                bar.set_postfix(loss=f"{scalars['train/loss']:.4f}")
                writer.write_scalars(step, scalars)
        jax.block_until_ready(state)
        train_time += time.time() - epoch_start
        on_epoch_end(epoch, step, state)
    return state, train_time


def median_seed(seeds: list[dict], value: Callable[[dict], float]) -> dict:
    """The seed whose `value` is the median (the lower middle one for an even count; ties keep seed order)."""
    order = np.argsort([value(s) for s in seeds], kind="stable")
    return seeds[int(order[(len(order) - 1) // 2])]
