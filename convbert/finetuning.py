"""The fine-tuning core shared by the GLUE and SQuAD drivers (`convbert.glue.finetune`, `convbert.squad.finetune`).

`Trainer` splits a task model once, builds the original optimizer (AdamW without bias correction, warmup + linear
decay, layer-wise lr decay; google-research/electra `model/optimization.py`), places parameters and optimizer
state on the mesh, and jits a train step (state donated) and an eval step around a task's `forward` and
per-example loss. `train_epochs` is the epoch loop both drivers run: a new data order per epoch from the seed,
progress bar, metrics every `config.log_every_steps`, a callback after each epoch.

Config keys read: learning_rate, warmup_proportion, layerwise_lr_decay, weight_decay, clip_norm, freeze_encoder,
loss_reduction, sharding_rules, batch_size, log_every_steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from convbert import optim, sharding
from convbert.metrics import MetricWriter

ENCODER = "convbert"  # the attribute of every task model (`_HeadModel`) that holds the encoder

# Per size: the peak learning rate of ELECTRA's fine-tuning recipe (paper appendix; google-research/electra
# `configure_finetuning.py`) and the checkpoint fine-tuned by default (ours for tiny and large, else the released
# weights).
RECIPES = {
    "tiny": dict(learning_rate=5e-4, init_checkpoint="workdirs/pretrain_tiny"),
    "small": dict(learning_rate=3e-4, init_checkpoint="YituTech/conv-bert-small"),
    "medium_small": dict(learning_rate=3e-4, init_checkpoint="YituTech/conv-bert-medium-small"),
    "base": dict(learning_rate=1e-4, init_checkpoint="YituTech/conv-bert-base"),
    "large": dict(learning_rate=5e-5, layerwise_lr_decay=0.9, init_checkpoint="workdirs/pretrain_large"),  # ELECTRA's
}


def default_config(size: str, where: str) -> ml_collections.ConfigDict:
    """The keys every fine-tuning driver reads, with ELECTRA's recipe for `size` (one of `RECIPES`; `where` names
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
    c.layerwise_lr_decay = RECIPES[size].get("layerwise_lr_decay", 0.8)  # embeddings decay^(L+2), layer i ^(L+1-i)
    c.warmup_proportion = 0.1
    c.weight_decay = 0.01  # decoupled, not on LayerNorm / bias
    c.clip_norm = 1.0
    c.loss_reduction = "sum"  # 'sum' over the batch as the original, or 'mean' (changes what the clip sees)
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (parameters and optimizer state stay float32)
    c.num_seeds = 1  # each seed: new head init, data order and dropout; results report every seed and the median
    c.seed = 0  # seeds used: seed, seed + 1, ..., seed + num_seeds - 1
    c.log_every_steps = 10 if size == "tiny" else 100
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # data parallel over all devices
    c.sharding_rules = sharding.DEFAULT_RULES
    return c


def make_optimizer(config, params, num_layers: int, total_steps: int):
    """(tx, schedule): the original AdamW (no bias correction), warmup then linear decay, layer-wise lr decay
    (google-research/electra `model/optimization.py`). With `config.freeze_encoder` every parameter under
    `convbert` gets multiplier 0 (its update, weight decay included, is exactly zero), so only the head trains."""
    schedule = optim.warmup_linear_decay(config.learning_rate, total_steps,
                                         int(total_steps * config.warmup_proportion))
    multipliers = optim.layerwise_lr_multipliers(params, num_layers, config.layerwise_lr_decay)
    if config.freeze_encoder:
        multipliers = jax.tree_util.tree_map_with_path(
            lambda p, m: 0.0 if optim.path_names(p)[0] == ENCODER else m, multipliers)
    tx = optim.electra_adamw(schedule, weight_decay=config.weight_decay, clip_norm=config.clip_norm,
                             params=params, lr_multipliers=multipliers)
    return tx, schedule


def local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's part of a global batch of row indices."""
    n = len(rows) // jax.process_count()
    return rows[jax.process_index() * n:(jax.process_index() + 1) * n]


def shard_rows(features: dict[str, np.ndarray], rows: np.ndarray, keys: Sequence[str], mesh) -> dict[str, jax.Array]:
    """Global batch `features[k][rows]` for `keys`, split over the mesh's batch axes (each process feeds its part)."""
    rows = local_rows(rows)
    return sharding.shard_batch({k: features[k][rows] for k in keys}, mesh)


class Trainer:
    """Model, optimizer and jitted steps on `mesh`, built once and reused by every seed (same shapes and
    shardings, so the steps compile once). The train state (params, optimizer state) is donated to each step.

    model_fn(rngs) -> task model with the encoder at `.convbert`; forward(model, batch, deterministic=...,
    dropout_rng=...) -> outputs (an array or a dict of arrays [B, ...]); example_losses(outputs, batch) -> [B].
    encoder_params: host copies loaded into every seed's encoder, or None (each seed initialises its own).
    """

    def __init__(self, model_fn: Callable[[nnx.Rngs], nnx.Module], forward: Callable, example_losses: Callable,
                 config, mesh, total_steps: int, num_layers: int, encoder_params: nnx.State | None):
        self.model_fn, self.config, self.mesh, self.total_steps = model_fn, config, mesh, total_steps
        self.encoder_params = encoder_params
        graphdef, params, rest = nnx.split(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param, ...)
        tx, self.schedule = make_optimizer(config, params, num_layers, total_steps)
        rules = tuple(tuple(r) for r in config.sharding_rules)
        self.param_sharding = p_sh = sharding.param_shardings(params, mesh, rules)
        o_sh = sharding.optimizer_shardings(tx, jax.eval_shape(tx.init, params), params, mesh, rules)
        self.init_opt = jax.jit(tx.init, out_shardings=o_sh)
        b_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
        reduction, freeze = config.loss_reduction, config.freeze_encoder

        def apply(params, batch, **kw):
            if freeze:  # no gradient (and no backward pass) through the frozen encoder
                params = nnx.State({**params, ENCODER: jax.lax.stop_gradient(params[ENCODER])})
            return forward(nnx.merge(graphdef, params, rest), batch, **kw)

        def loss_fn(params, batch, key):
            per_example = example_losses(apply(params, batch, deterministic=False, dropout_rng=key), batch)
            return (per_example.sum() if reduction == "sum" else per_example.mean()), per_example.mean()

        def train_step(state, batch, key, step):
            params, opt_state = state
            (_, loss), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, jax.random.fold_in(key, step))
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics_ = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
            return (optax.apply_updates(params, updates), opt_state), metrics_

        self.train_step = jax.jit(train_step, in_shardings=((p_sh, o_sh), b_sh, repl, repl),
                                  out_shardings=((p_sh, o_sh), repl), donate_argnums=0)
        self.eval_step = jax.jit(lambda params, batch: apply(params, batch, deterministic=True),
                                 in_shardings=(p_sh, b_sh), out_shardings=repl)

    def init_state(self, seed: int):
        """(params, optimizer state): the loaded encoder (without one: an encoder initialised from `seed`) and a
        head initialised from `seed`."""
        model = self.model_fn(nnx.Rngs(seed))
        if self.encoder_params is not None:
            nnx.update(getattr(model, ENCODER), self.encoder_params)
        params = jax.device_put(nnx.state(model, nnx.Param), self.param_sharding)
        return params, self.init_opt(params)

    def batch(self, features: dict[str, np.ndarray], rows: np.ndarray, keys: Sequence[str]) -> dict[str, jax.Array]:
        return shard_rows(features, rows, keys, self.mesh)


def train_epochs(trainer: Trainer, train: dict[str, np.ndarray], keys: Sequence[str], seed: int, epochs: int,
                 writer: MetricWriter, desc: str, on_epoch_end: Callable[[int, int, tuple], None]):
    """Trains `epochs` passes over `train` (rows [N, ...]; each epoch a permutation from `seed`, its last partial
    batch dropped); calls on_epoch_end(epoch, step, state) after each. Returns (state, train seconds without the
    first step's compilation)."""
    config, bs, total = trainer.config, trainer.config.batch_size, trainer.total_steps
    n = len(train[keys[0]])
    state, key, rng = trainer.init_state(seed), jax.random.key(seed), np.random.default_rng(seed)
    step, train_time = 0, 0.0
    for epoch in range(1, epochs + 1):
        order, epoch_start = rng.permutation(n), time.time()
        bar = tqdm(range(n // bs), desc=f"{desc} seed {seed} epoch {epoch}/{epochs}",
                   disable=jax.process_index() != 0, dynamic_ncols=True)
        for i in bar:
            state, out = trainer.train_step(state, trainer.batch(train, order[i * bs:(i + 1) * bs], keys), key,
                                            np.int32(step))
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
        on_epoch_end(epoch, step, state)
    return state, train_time


def median_seed(seeds: list[dict], value: Callable[[dict], float]) -> dict:
    """The seed whose `value` is the median (the lower middle one for an even count; ties keep seed order)."""
    order = np.argsort([value(s) for s in seeds], kind="stable")
    return seeds[int(order[(len(order) - 1) // 2])]
