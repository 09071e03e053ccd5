"""The fine-tuning core shared by the GLUE and SQuAD drivers (`convbert.glue.finetune`, `convbert.squad.finetune`).

`Trainer` configures the training core (`convbert.train_state`, shared with pretraining: split once, sharded
init, jitted train step with the state donated, eval step) for a task's `forward` and per-example loss, with
the original optimizer (AdamW without bias correction, warmup + linear decay, layer-wise lr decay;
google-research/electra `model/optimization.py`). `train_epochs` is the epoch loop both drivers run: a new
data order per epoch from the seed, progress bar, metrics every `config.log_every_steps`, a callback after
each epoch. Seeds train together (`config.parallel_seeds`, `seed_group_size`): the state carries a leading seed
axis and every seed draws what it would alone; a seed whose loss turns non-finite stops (`SeedsDiverged`).

Config keys read: learning_rate, probe_learning_rate, warmup_proportion, layerwise_lr_decay, weight_decay, clip_norm,
freeze_encoder, probe, probe_memory_fraction, parallel_seeds, loss_reduction, grad_accum_steps, sharding_rules,
batch_size, eval_batch_size, log_every_steps.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from convbert import distributed, faults, fileio, optim, resume, sharding
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
    # Seeds trained together as one program (parameters stacked on a leading seed axis, the steps vmapped): 0 =
    # all the run's seeds, or at most this many; fewer where they would not fit device memory (said in the log).
    # Each seed draws exactly what it draws alone. See docs/finetuning.md.
    c.parallel_seeds = 0
    # With freeze_encoder: 'cached' runs the encoder once per example (dropout off) and trains the head on the
    # stored features; 'per_step' runs it (dropout off) in every step; 'per_step_dropout' with dropout on.
    c.probe = "cached"
    c.probe_memory_fraction = 0.25  # of host memory for cached features; beyond it they spill to disk (workdir)
    c.seed = 0  # seeds used: seed, seed + 1, ..., seed + num_seeds - 1
    c.log_every_steps = 10 if size == "tiny" else 100
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # data parallel over all devices
    c.sharding_rules = sharding.DEFAULT_RULES
    c.distributed = distributed.default_config()  # multi-process timeouts (convbert/distributed.py)
    return c


def peak_learning_rate(config) -> float:
    return config.probe_learning_rate if config.freeze_encoder else config.learning_rate


def make_optimizer(config, params, num_layers: int, total_steps: int):
    """(tx, schedule): the original AdamW (no bias correction), warmup then linear decay, layer-wise lr decay
    (google-research/electra `model/optimization.py`). With `config.freeze_encoder` every parameter under
    `convbert` gets multiplier 0 (its update, weight decay included, is exactly zero), so only the head trains, with
    peak lr `config.probe_learning_rate`."""
    peak = peak_learning_rate(config)
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


LENGTH_MULTIPLE = 16  # cut batches are a multiple of this long: few shapes to compile (`row_lengths`)
PROBES = ("cached", "per_step", "per_step_dropout")  # config.probe: how a frozen encoder is run (default_config)
DEVICE_MEMORY_FRACTION = 0.8  # of a device's memory that a group of seeds may fill (`seed_group_size`)


class SeedsDiverged(faults.SeedsDiverged):
    """Seeds stopped by a non-finite loss (their results are not written); the entry points exit 65."""

    def __init__(self, failed: Mapping[str, int], config):
        self.failed = dict(failed)  # '<task> seed <k>' -> the step whose loss was not finite
        key = "probe_learning_rate" if config.freeze_encoder else "learning_rate"
        super().__init__(
            "non-finite loss, no results for "
            + ", ".join(f"{name} (step {step})" for name, step in self.failed.items())
            + f". Lower config.{key} (now {peak_learning_rate(config):g}) and rerun the "
            "same command: finished seeds are kept"
        )


def host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_memory(mesh) -> int:
    """Bytes one device of `mesh` holds: its allocator's limit, else (CPU) the host's memory over its devices."""
    stats = mesh.devices.flat[0].memory_stats() or {}
    return int(stats.get("bytes_limit") or host_memory() // len(jax.local_devices()))


def seed_group_size(config, mesh, model_fn: Callable, seq_length: int, num_seeds: int) -> int:
    """Seeds trained together: `config.parallel_seeds` (0: all `num_seeds`), at most what fits
    `DEVICE_MEMORY_FRACTION` of a device by an estimate per seed: parameters, gradient and two Adam slots
    (16 bytes a parameter, split over fsdp x model) plus float32 activations of one micro-batch, split over
    data x fsdp (~24 x hidden + 4 x heads x length values per token and layer)."""
    requested = min(config.parallel_seeds or num_seeds, num_seeds)
    model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    c = model.config
    tokens = config.batch_size // config.grad_accum_steps * seq_length
    activations = 4 * tokens * c.num_hidden_layers * (24 * c.hidden_size + 4 * c.num_attention_heads * seq_length)
    shape = mesh.shape
    per_seed = 16 * params / (shape["fsdp"] * shape["model"]) + activations / (shape["data"] * shape["fsdp"])
    fits = max(1, int(DEVICE_MEMORY_FRACTION * device_memory(mesh) // per_seed))
    if fits < requested:
        logging.warning(
            "%d seeds together would not fit device memory (about %.1f GiB a seed of %.1f GiB a device): "
            "training them %d at a time",
            requested,
            per_seed / 2**30,
            device_memory(mesh) / 2**30,
            fits,
        )
    return min(requested, fits)


def write_json(path: str, obj, ensure_ascii: bool = True) -> None:
    """`fileio.write_json` on process 0 (every process runs the drivers' loops)."""
    if jax.process_index() == 0:
        fileio.write_json(path, obj, ensure_ascii)


def seed_groups(seeds: Sequence[int], size: int) -> list[list[int]]:
    return [list(seeds[i : i + size]) for i in range(0, len(seeds), size)]


def row_lengths(attention_mask: np.ndarray, reach: int) -> np.ndarray:
    """[N]: how long a batch holding row n must be for its real tokens to get the outputs of the full padded
    length: past its last real token by `reach` (`ConvBertConfig.conv_reach`), rounded up to `LENGTH_MULTIPLE`
    (at least one multiple), at most the padded length."""
    t = attention_mask.shape[1]
    real = np.where(attention_mask.any(axis=1), t - np.argmax(attention_mask[:, ::-1] != 0, axis=1), 0)
    return np.clip(-(-(real + reach) // LENGTH_MULTIPLE) * LENGTH_MULTIPLE, min(LENGTH_MULTIPLE, t), t)


def epoch_batches(
    orders: Sequence[np.ndarray], batch_size: int, epoch: int, lengths: np.ndarray | None = None
) -> list[tuple[list[np.ndarray], int | None]]:
    """One epoch's steps: (each copy's rows, the length to cut the batch to, or None). Without `lengths`,
    consecutive slices of each copy's permutation (the last partial batch dropped). With `lengths`
    (`row_lengths`; `config.group_by_length`), each permutation is stably sorted by length and sliced, so a batch
    holds rows of similar length, random within that length, and is cut to its longest row; the batches then
    run in an order drawn from `epoch` alone. Batch j's length is that of the sorted lengths' j-th slice for
    every seed, so the copies of a group share every step's shape and each seed draws what it draws alone."""
    steps = len(orders[0]) // batch_size
    if lengths is None:
        return [([o[i * batch_size : (i + 1) * batch_size] for o in orders], None) for i in range(steps)]
    orders = [o[np.argsort(lengths[o], kind="stable")] for o in orders]
    ends = np.sort(lengths)[batch_size - 1 :: batch_size]
    return [
        ([o[j * batch_size : (j + 1) * batch_size] for o in orders], int(ends[j]))
        for j in np.random.default_rng(epoch).permutation(steps)
    ]


def feature_array(shape: tuple[int, ...], dtype, config, spill_dir: str) -> np.ndarray:
    """An array for cached encoder features: in memory up to `config.probe_memory_fraction` of the host's memory,
    else a memory map of an unnamed file in `spill_dir` (gone when the array is)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= config.probe_memory_fraction * host_memory():
        return np.empty(shape, dtype)
    os.makedirs(spill_dir, exist_ok=True)
    logging.info("cached features of %.1f GiB spill to disk under %s", nbytes / 2**30, spill_dir)
    return np.memmap(tempfile.TemporaryFile(dir=spill_dir), dtype=dtype, mode="w+", shape=shape)


class Trainer(TrainSteps):
    """`train_state.TrainSteps` of one fine-tuning task on `mesh` for `copies` seeds trained together (a leading
    seed axis on the state, batches and outputs), built once per group size and reused (same shapes and
    shardings, so the steps compile once): the task model, the original optimizer (`make_optimizer`), the
    per-example losses summed over the batch (`loss_reduction='mean'`: divided by the global batch size, so that
    `grad_accum_steps` micro-batches give the batch's gradient too), the encoder frozen with `freeze_encoder`.

    model_fn(rngs) -> task model with the encoder at `.convbert`; forward(model, batch, deterministic=...,
    dropout_rng=...) -> outputs (an array or a dict of arrays [B, ...]); example_losses(outputs, batch) -> [B].
    encode(model, batch) -> {name: [B, ...]}, the encoder's output the head reads (dropout off), and
    head(model, batch with those, deterministic=..., dropout_rng=...) -> outputs as `forward`'s: with
    `freeze_encoder`, `config.probe` 'cached' trains the head on features `cached_features` computed once,
    'per_step' runs `encode` in every step, 'per_step_dropout' runs `forward` (the encoder with dropout).
    inputs: the batch keys `forward` and `encode` read; encoded: the names `encode` returns; head_inputs: other
    keys `head` reads; `input_keys`: what the steps read (with cached features: encoded + head_inputs).
    encoder_params: host copies loaded into every seed's encoder, or None (each seed initialises its own).
    `train_step(state, batch)` -> (state, metrics [copies, ...]: loss [grad_accum_steps] (mean per example of
    each micro-batch), grad_norm, param_norm, learning_rate); `eval_step(params, batch, None)` -> outputs with
    dropout off.
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
        copies: int,
        encode: Callable,
        head: Callable,
        inputs: Sequence[str],
        encoded: Sequence[str],
        head_inputs: Sequence[str] = (),
    ):
        self.config, self.total_steps, self.encoder_params = config, total_steps, encoder_params
        reduction, batch_size = config.loss_reduction, config.batch_size
        probe = config.probe if config.freeze_encoder else None
        self.cached = probe == "cached"
        if probe == "per_step":
            run = lambda model, batch, **kw: head(model, {**batch, **encode(model, batch)}, **kw)
        else:
            run = head if self.cached else forward

        def loss_fn(model, batch, rng, normalizers):
            del normalizers  # per-example losses: the global batch size is the only denominator
            per_example = example_losses(run(model, batch, deterministic=False, dropout_rng=rng), batch)
            total = per_example.sum()
            return (total if reduction == "sum" else total / batch_size), {"loss": per_example.mean()}

        super().__init__(
            model_fn,
            lambda params: make_optimizer(config, params, num_layers, total_steps),
            loss_fn,
            lambda model, batch, rng: run(model, batch, deterministic=True),
            mesh,
            config.sharding_rules,
            grad_accum_steps=config.grad_accum_steps,
            frozen=(ENCODER,) if config.freeze_encoder else (),
            copies=copies,
        )
        self.row_sharding = sharding.batch_sharding(mesh, self.batch_axes)
        self.encode_step = jax.jit(
            self._on_mesh(lambda params, batch: encode(self.model(params), batch)), out_shardings=self.replicated
        )
        self.input_keys = (*encoded, *head_inputs) if self.cached else tuple(inputs)
        self.token_keys = tuple(inputs)  # [.., T] arrays, cut with a batch's length

    def init_keys(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The seed's key for both the head (`nnx.Rngs(key)`) and dropout (`fold_in(key, step)`), the streams of
        every earlier fine-tuning run, so that a seed reproduces its published results."""
        return key, key

    def init_state(self, seeds: Sequence[int]) -> TrainState:
        """Stacked over `seeds` (one per copy): the loaded encoder (without one: an encoder initialised from the
        seed) and a head initialised from the seed."""
        if len(seeds) != self.copies:
            raise ValueError(f"{len(seeds)} seeds for a trainer of {self.copies} copies")
        keys = jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])
        return self.init(keys, None if self.encoder_params is None else {ENCODER: self.encoder_params})

    def batch(
        self,
        features: Sequence[dict[str, np.ndarray]],
        rows: Sequence[np.ndarray],
        keys: Sequence[str],
        length: int | None = None,
    ) -> dict[str, jax.Array]:
        """{key: [copies, B, ...]}: copy c's rows `rows[c]` of `features[c]` (each process makes its own shards),
        the token arrays cut to `length` positions when given (`row_lengths`)."""
        out = {}
        for k in keys:
            stacked = np.stack([f[k][r] for f, r in zip(features, rows, strict=True)])
            if length is not None and k in self.token_keys:
                stacked = stacked[:, :, :length]
            out[k] = jax.make_array_from_callback(stacked.shape, self.batch_sharding, lambda i, x=stacked: x[i])
        return out

    def same_batch(self, features: dict[str, np.ndarray], rows: np.ndarray, keys: Sequence[str]):
        """`batch` with the same rows of the same features for every copy (evaluation)."""
        return self.batch([features] * self.copies, [rows] * self.copies, keys)

    def cached_features(
        self,
        state: TrainState,
        features: dict[str, np.ndarray],
        keys: Sequence[str],
        spill_dir: str,
        lengths: np.ndarray | None = None,
    ) -> list[dict[str, np.ndarray]]:
        """One dict per copy: `features` plus the encoder's outputs for every row (dropout off; `encode`), computed
        once with the loaded encoder for all copies, or per copy for encoders initialised per seed. With `lengths`
        (`row_lengths`; for outputs without a time axis) the rows go in order of length, each batch cut to its
        longest."""
        n, bs = len(features[keys[0]]), self.config.eval_batch_size
        out = []
        for c in range(1 if self.encoder_params is not None else self.copies):
            params, cached = jax.tree.map(lambda x, c=c: x[c], state.params), {}
            for rows, length in eval_batches(n, bs, lengths):
                batch = shard_rows(features, rows, keys, self.mesh, self.row_sharding, length)
                for name, value in jax.device_get(self.encode_step(params, batch)).items():
                    if name not in cached:
                        cached[name] = feature_array((n, *value.shape[1:]), value.dtype, self.config, spill_dir)
                    cached[name][rows] = value  # a repeated row writes the same values again
            out.append({**features, **cached})
        return out * (self.copies // len(out))


def eval_batches(n: int, batch_size: int, lengths: np.ndarray | None = None) -> list[tuple[np.ndarray, int | None]]:
    """Every row of N once, in batches of `batch_size` (the last one filled up with copies of its last row): in
    order, or with `lengths` in order of length, each batch with the length to cut it to (its longest row)."""
    order = np.arange(n) if lengths is None else np.argsort(lengths, kind="stable")
    out = []
    for i in range(0, n, batch_size):
        rows = order[np.minimum(np.arange(i, i + batch_size), n - 1)]
        out.append((rows, None if lengths is None else int(lengths[rows].max())))
    return out


def predict(trainer: Trainer, params, features: Sequence[dict[str, np.ndarray]], lengths: np.ndarray | None = None):
    """`eval_step` outputs [copies, N, ...] (host arrays) for every row of `features[c]` (one dict per copy), in
    batches of `eval_batch_size` (`eval_batches`; `lengths` for outputs without a time axis: batches of similar
    length, cut)."""
    keys, bs = trainer.input_keys, trainer.config.eval_batch_size
    n = len(features[0][keys[0]])
    rows, outs = [], []
    for batch_rows, length in eval_batches(n, bs, lengths):
        batch = trainer.batch(features, [batch_rows] * len(features), keys, length)
        outs.append(jax.device_get(trainer.eval_step(params, batch, None)))
        rows.append(batch_rows)
    rows = np.concatenate(rows)
    first = np.unique(rows, return_index=True)[1]  # each row's first place in the batches
    return jax.tree.map(lambda *x: np.concatenate(x, axis=1)[:, first], *outs)


def local_rows(rows: np.ndarray) -> np.ndarray:
    """This process's part of a global batch of row indices."""
    n = len(rows) // jax.process_count()
    return rows[jax.process_index() * n : (jax.process_index() + 1) * n]


def shard_rows(
    features: dict[str, np.ndarray],
    rows: np.ndarray,
    keys: Sequence[str],
    mesh,
    batch_sharding=None,
    length: int | None = None,
) -> dict[str, jax.Array]:
    """Global batch `features[k][rows]` for `keys`, split over the mesh's batch axes (or `batch_sharding`; each
    process feeds its part), cut to `length` positions when given."""
    rows = local_rows(rows)
    sharding_ = batch_sharding or sharding.batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding_, np.asarray(features[k][rows][..., :length])) for k in keys
    }


def train_epochs(
    trainer: Trainer,
    train: Sequence[dict[str, np.ndarray]],
    keys: Sequence[str],
    seeds: Sequence[int],
    epochs: int,
    writers: Sequence[MetricWriter],
    desc: str,
    on_epoch_end: Callable[[int, int, TrainState, list[bool]], None],
    lengths: np.ndarray | None = None,
):
    """Trains `seeds` together (`train[c]`: copy c's rows [N, ...]; each epoch a permutation per seed from the
    seed, its last partial batch dropped; with `lengths`, batches of similar length cut to it: `epoch_batches`)
    for `epochs` passes; calls on_epoch_end(epoch, step, state, alive) after each. A seed whose loss turns
    non-finite stops there (its copy is frozen) and the others go on; the group stops when none is left.
    Returns (state, train seconds without the first step's compilation, {seed: the step its loss turned
    non-finite})."""
    config, bs, total = trainer.config, trainer.config.batch_size, trainer.total_steps
    n = len(train[0][keys[0]])
    state, rngs = trainer.init_state(seeds), [np.random.default_rng(seed) for seed in seeds]
    step, train_time, diverged = 0, 0.0, {}
    name = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"

    def check(state) -> bool:
        """Records newly diverged seeds; whether any seed goes on."""
        for seed, s in zip(seeds, np.asarray(jax.device_get(state.step)), strict=True):
            if s < 0 and seed not in diverged:
                diverged[seed] = int(-s)
                logging.error(
                    "%s seed %d: non-finite loss at step %d; this seed stops (no result), the others go on. "
                    "Lower config.%s (now %g)",
                    desc,
                    seed,
                    -s,
                    "probe_learning_rate" if config.freeze_encoder else "learning_rate",
                    peak_learning_rate(config),
                )
        return len(diverged) < len(seeds)

    for epoch in range(1, epochs + 1):
        orders, epoch_start = [rng.permutation(n) for rng in rngs], time.time()
        bar = tqdm(
            epoch_batches(orders, bs, epoch, lengths),
            desc=f"{desc} {name} epoch {epoch}/{epochs}",
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        for rows, length in bar:
            state, out = trainer.train_step(state, trainer.batch(train, rows, keys, length))
            step += 1
            if step == 1:  # the throughput leaves out the compilation
                jax.block_until_ready(out)
                epoch_start = time.time()
            if step % config.log_every_steps == 0 or step == total:
                going, out = check(state), jax.device_get(out)
                alive = [c for c, seed in enumerate(seeds) if seed not in diverged]
                for c in alive:  # loss: over micro-batches
                    writers[c].write_scalars(step, {f"train/{k}": float(np.mean(v[c])) for k, v in out.items()})
                bar.set_postfix(loss=f"{float(np.mean(out['loss'][alive])) if alive else float('nan'):.4f}")
                if not going:
                    break
        jax.block_until_ready(state)
        train_time += time.time() - epoch_start
        if not check(state):
            break
        on_epoch_end(epoch, step, state, [seed not in diverged for seed in seeds])
    return state, train_time, diverged


def train_scored(
    trainer: Trainer,
    train: Sequence[dict[str, np.ndarray]],
    keys: Sequence[str],
    seeds: Sequence[int],
    epochs: int,
    workdir: str,
    desc: str,
    score: Callable[[nnx.State], list[tuple[dict[str, float], object]]],
    describe: Callable[[dict[str, float]], str],
    rate_key: str,
    lengths: np.ndarray | None = None,
) -> tuple[TrainState, dict[int, tuple[dict, object]], dict[int, int]]:
    """`train_epochs` of `seeds` with the bookkeeping both drivers share: each seed's log folder
    `workdir/seed_<k>` (an interrupted seed's logs cleared), its metrics writer, and after every epoch
    `score(params)` -> per copy (dev metrics, what else the driver keeps of that evaluation), logged (`describe`)
    and recorded; `lengths`: as `train_epochs`'.
    Returns (state, {finished seed: (result, the last epoch's extra)}, {diverged seed: step}); a result holds the
    seed, its last dev metrics, the per-epoch history, the step count, `rate_key` (rows of every seed of the group
    per second after step 1), the group size and the wall time."""
    start, total, bs = time.time(), trainer.total_steps, trainer.config.batch_size
    logdirs = [os.path.join(workdir, f"seed_{seed}") for seed in seeds]
    for logdir in logdirs:
        resume.clear_interrupted_logs(logdir)  # a seed without result.json starts over
    writers, history, last = [MetricWriter(d) for d in logdirs], [[] for _ in seeds], [None for _ in seeds]

    def on_epoch_end(epoch, step, state, alive):
        for c, (scores, extra) in enumerate(score(state.params)):
            if alive[c]:
                last[c] = scores, extra
                history[c].append({"epoch": epoch, "step": step, **scores})
                writers[c].write_scalars(step, {f"dev/{k}": v for k, v in scores.items()})
                logging.info("%s seed %d epoch %d: %s", desc, seeds[c], epoch, describe(scores))

    state, train_time, diverged = train_epochs(
        trainer, train, keys, seeds, epochs, writers, desc, on_epoch_end, lengths
    )
    for writer in writers:
        writer.close()
    finished = {}
    for c, seed in enumerate(seeds):
        if seed in diverged or last[c] is None:
            continue
        result = {
            "seed": seed,
            "dev": last[c][0],
            "epochs": history[c],
            "train_steps": total,
            rate_key: (total - 1) * bs * len(seeds) / train_time if total > 1 else None,
            "seeds_together": len(seeds),
            "wall_time_s": time.time() - start,
        }
        finished[seed] = result, last[c][1]
    return state, finished, diverged


def median_seed(seeds: list[dict], value: Callable[[dict], float]) -> dict:
    """The seed whose `value` is the median (the lower middle one for an even count; ties keep seed order)."""
    order = np.argsort([value(s) for s in seeds], kind="stable")
    return seeds[int(order[(len(order) - 1) // 2])]
