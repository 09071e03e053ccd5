"""ELECTRA-style ConvBERT pretraining (docs/electra.md): `train_and_evaluate(config, workdir)`.

The train state, its sharded init and the jitted steps are `convbert.train_state`'s (`Pretrainer` configures
them): the state is born sharded on the ('data', 'fsdp', 'model') mesh, the train step is a plain `jax.jit`
of (state, batch) with the state donated, the step key is `fold_in(state.rng, state.step)` (so a resumed run
draws the same masks and dropout), and `grad_accum_steps = k` scans over k micro-batches whose losses are
divided by the whole batch's denominators (the gradient of one batch k times the size) before one optimizer
update. Parameters and optimizer state are float32; `model.dtype` sets the compute dtype (bfloat16 for the
paper sizes).

Workdir layout (everything a run writes):
  config.json            every start's config         checkpoints/<step>/   Orbax (state, data position, meta)
  metrics.jsonl          one JSON line per log/eval   events.out.tfevents.*  TensorBoard
  tokenizer/             the tokenizer files          data/                  prepared corpus (if data_dir empty)
  profile/               jax.profiler trace           export/{discriminator,generator}  Hugging Face format
  export/step_<N>/{discriminator,generator}  every `export_every_steps` (a learning curve's checkpoints)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from convbert import (
    config_file,
    distributed,
    electra,
    faults,
    fileio,
    flops,
    init_from,
    optim,
    pretrain_setup,
    resume,
    sharding,
    workdir_lock,
)
from convbert.checkpoint import Checkpointer
from convbert.config import ConvBertConfig, ElectraConfig
from convbert.data import loader
from convbert.data.example_builder import FIELDS
from convbert.heads import ConvBertForMaskedLM
from convbert.metric_writer import MetricWriter, Throughput, quiet_orbax_logs
from convbert.tokenization import TextTokenizer
from convbert.train_state import TrainSteps

# ------------------------------------------------------------------------------------------------
# Train state and steps


class Pretrainer(TrainSteps):
    """`train_state.TrainSteps` of one pretraining config on one mesh: ELECTRA's generator + discriminator (or the
    MLM control), the original optimizer, `electra.pretraining_loss` (`electra.mlm_loss`) with the whole batch's
    `electra.loss_normalizers`, `config.grad_accum_steps` micro-batches.

    `init(seed_key)` -> sharded `TrainState`; `train_step(state, batch)` -> (state, metrics) with metrics
    stacked over micro-batches ([grad_accum_steps] per `electra.pretraining_loss` metric, plus scalars
    grad_norm, param_norm, learning_rate); `eval_step(params, batch, rng)` -> metrics with dropout off
    (ELECTRA: plus the histograms of `electra.pretraining_eval_loss`, for the AUC).
    Batches: dicts of int32 [global_batch, T] arrays `input_ids`, `input_mask`, `segment_ids` (`batch_shapes`).
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, special_ids: Mapping[str, int]):
        self.model_config = ConvBertConfig(**config.model.to_dict()).resolve_kernels(mesh)  # the mesh's platform
        self.electra_config = cfg = ElectraConfig.from_config(config.electra, special_ids)
        self.objective = config.objective
        self.batch_shapes = {k: ((config.batch_size, config.max_seq_length), np.int32) for k in FIELDS}
        objective = electra.pretraining_loss if self.objective == "electra" else electra.mlm_loss
        eval_objective = electra.pretraining_eval_loss if self.objective == "electra" else electra.mlm_loss
        o = config.optimizer

        def optimizer(params):
            schedule = optim.warmup_linear_decay(
                o.learning_rate, config.num_train_steps, o.warmup_steps, o.lr_decay_power
            )
            return optim.electra_adamw(
                schedule, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip_norm=o.clip_norm, params=params
            ), schedule

        super().__init__(
            self._build,
            optimizer,
            lambda model, batch, rng, norms: objective(model, batch, rng, cfg, deterministic=False, normalizers=norms),
            lambda model, batch, rng: eval_objective(model, batch, rng, cfg, deterministic=True)[1],
            mesh,
            config.sharding_rules,
            normalizers_fn=lambda batch: electra.loss_normalizers(batch, cfg),
            grad_accum_steps=config.grad_accum_steps,
        )

    def _build(self, rngs: nnx.Rngs) -> electra.ElectraModel | ConvBertForMaskedLM:
        """ELECTRA's generator + discriminator, or (objective 'mlm') one MLM model of the discriminator's size."""
        if self.objective == "mlm":
            return ConvBertForMaskedLM(self.model_config, rngs=rngs)
        return electra.build_electra(self.model_config, self.electra_config, rngs=rngs)


def summarize(step_metrics: Sequence[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Host-side means over logged steps: ELECTRA metrics weighted by their counts over all micro-batches
    (`electra.aggregate_metrics`), grad/param norms averaged, the last learning rate."""
    keys = (electra.METRIC_COUNTS.keys() | set(electra.METRIC_COUNTS.values()) | {"loss"}) & set(step_metrics[0])
    micro = [{k: m[k][i] for k in keys} for m in step_metrics for i in range(len(m["loss"]))]
    out = {k: v for k, v in electra.aggregate_metrics(micro).items() if k in electra.METRIC_COUNTS or k == "loss"}
    out.update(
        grad_norm=float(np.mean([m["grad_norm"] for m in step_metrics])),
        param_norm=float(np.mean([m["param_norm"] for m in step_metrics])),
        learning_rate=float(step_metrics[-1]["learning_rate"]),
    )
    return {"loss": out.pop("loss"), **out}


# ------------------------------------------------------------------------------------------------
# Evaluation and export


def evaluate(
    trainer: Pretrainer, params: nnx.State, data_dir: str, config: ml_collections.ConfigDict, rng: jax.Array
) -> dict[str, float]:
    """Metrics over the first `num_eval_steps` global batches of the `eval` split (fixed masks, no dropout);
    ELECTRA also `disc_auc`, the discriminator's ROC AUC over all real tokens of those batches."""
    it = loader.make_iterator(data_dir, "eval", global_batch_size=config.batch_size, seed=config.seed, shuffle=False)
    metrics = [
        jax.device_get(
            trainer.eval_step(params, sharding.shard_batch(next(it), trainer.mesh), jax.random.fold_in(rng, i))
        )
        for i in range(config.num_eval_steps)
    ]
    summary = electra.aggregate_metrics(metrics)
    return {f"eval/{k}": summary[k] for k in ("loss", *electra.METRIC_COUNTS, "disc_auc") if k in summary}


def export(trainer: Pretrainer, params: nnx.State, tokenizer: TextTokenizer, directory: str) -> None:
    """`directory/discriminator` (transformers loads it as ConvBertModel) and `directory/generator`
    (ConvBertForMaskedLM where transformers can compute it, else our safetensors + README.txt); for the MLM
    objective `directory/mlm` (ConvBertForMaskedLM)."""
    params = sharding.fully_replicated(params, trainer.mesh)  # every process takes part
    if jax.process_index() != 0:
        return
    model = trainer.model(params)
    parts = (
        (("mlm", model),)
        if trainer.objective == "mlm"
        else (("discriminator", model.discriminator_model()), ("generator", model.generator_model()))
    )
    for name, part in parts:
        path = os.path.join(directory, name)

        def write(local: str, part=part, name=name, path=path):
            part.save_pretrained(local)
            tokenizer.save(local)  # WordPiece: also vocab.txt + tokenizer_config.json for transformers
            if not part.config.hf_compatible:
                with open(os.path.join(local, "README.txt"), "w") as f:
                    f.write(
                        f"This {name} is saved in convbert-jax's own format (convbert_jax.safetensors): "
                        "transformers' ConvBERT cannot compute it because "
                        f"{'; '.join(part.config.hf_incompatibilities)}.\nLoad it with "
                        f"convbert.{type(part).__name__}.from_pretrained('{path}').\n"
                    )

        fileio.write_dir(path, write)
        logging.info("exported the %s to %s", name, path)


# ------------------------------------------------------------------------------------------------
# Training loop


def _check_finite(step: int, metrics: Mapping[str, jax.Array], checkpoints: Checkpointer) -> dict:
    """Host copy of a step's metrics; FloatingPointError (nothing saved) on a non-finite loss or parameters."""
    metrics = jax.device_get(metrics)
    loss, norm = float(np.mean(metrics["loss"])), float(metrics["param_norm"])
    if not (np.isfinite(loss) and np.isfinite(norm)):
        last = checkpoints.latest_step()
        raise FloatingPointError(
            f"non-finite loss {loss} (parameter norm {norm}) at step {step}: stopping without saving this state; "
            f"the last good checkpoint is {'none' if last is None else checkpoints.directory / str(last)}. "
            "Lower config.optimizer.learning_rate or raise config.optimizer.warmup_steps, then restart."
        )
    return metrics


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Pretrains (or resumes) in `workdir`; returns the last logged train and eval metrics. Raises
    `faults.Preempted` when SIGTERM stopped it before its last step (after saving a checkpoint).

    `devices` (default: all) is the device set of the mesh; a subset is for experiments in one process.
    `overrides`: the command line's `--config.KEY` values (`init_from.apply` refuses those that disagree with
    `config.init_from`).
    """
    with workdir_lock.hold_run(workdir, config.distributed.barrier_timeout_s):  # first: one run per workdir
        return _train_and_evaluate(config, workdir, devices, overrides)


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None,
    overrides: Mapping[str, Any] | None,
) -> dict[str, float]:
    # ---- setup: every check before anything is compiled (`convbert.pretrain_setup`) ----
    quiet_orbax_logs()
    distributed.log_topology()
    run = pretrain_setup.setup(config, workdir, devices, overrides)
    workdir, mesh, data_dir, manifest, tokenizer = run.workdir, run.mesh, run.data_dir, run.manifest, run.tokenizer

    trainer = Pretrainer(config, mesh, tokenizer.special_ids)
    writer = MetricWriter(workdir)
    writer.write_hparams(config.to_dict())
    checkpoints = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save,
        barrier_timeout_s=config.distributed.barrier_timeout_s,
    )
    root_key = jax.random.PRNGKey(config.seed)
    eval_key = jax.random.fold_in(root_key, 1)  # fixed eval masks; `init` splits root_key for params and steps
    meta = dict(
        config=config_file.to_json(config),
        mesh=dict(mesh.shape),
        process_count=jax.process_count(),
        device_count=jax.device_count(),
    )

    # ---- state and data position: resume or initialise ----
    restored = checkpoints.restore(trainer.abstract_state())
    if restored is None:
        state = trainer.init(root_key, None if run.source is None else init_from.load(run.source, config))
        position = resume.DataPosition(0, 0, config.batch_size)
        logging.info("initialised %.2fM parameters", sum(x.size for x in jax.tree.leaves(state.params)) / 1e6)
    else:
        step, state, saved = restored
        position = resume.DataPosition.restored(step, saved, config.batch_size)
        logging.info(
            "resumed from %s (saved on mesh %s, now %s)",
            checkpoints.directory / str(step),
            (saved or {}).get("mesh"),
            dict(mesh.shape),
        )
    start_step = int(state.step)
    train_iter = loader.make_iterator(
        data_dir,
        "train",
        global_batch_size=config.batch_size,
        seed=config.seed,
        num_workers=config.data.num_workers,
        example_offset=position.offset,
    )
    if jax.process_index() == 0:
        resume.record_start(
            os.path.join(workdir, "config.json"),
            meta["config"],
            step=start_step,
            mesh=meta["mesh"],
            process_count=meta["process_count"],
        )

    # ---- loop ----
    t, n = config.max_seq_length, config.num_train_steps
    throughput = Throughput(
        tokens_per_step=config.batch_size * t,
        num_train_steps=n,
        flops_per_step=flops.model_flops_per_step(
            *flops.configs_from(config), config.batch_size, t, config.electra.max_predictions_per_seq
        ),
    )
    profile = config.profile
    profiling = False
    pending, history, result = None, [], {}
    try:
        for step in range(start_step + 1, n + 1):
            if step == profile.start_step:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
                profiling = True
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                batch = sharding.shard_batch(next(train_iter), mesh)
                state, metrics = trainer.train_step(state, batch)
            if pending is not None:  # check the previous step while this one runs
                history.append(_check_finite(*pending, checkpoints))
            pending = (step, metrics)
            if step == start_step + 1:  # rates exclude compilation
                jax.block_until_ready(metrics)
                throughput.restart(step)
            if profiling and step == profile.start_step + profile.num_steps - 1:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                profiling = False

            preempted = checkpoints.reached_preemption(step)
            save = step % config.checkpoint_every_steps == 0 or step == n or preempted
            log = step % config.log_every_steps == 0 or step == n or preempted
            run_eval = run.eval_on and (
                step == n or (config.eval_every_steps > 0 and step % config.eval_every_steps == 0)
            )
            if save or log or run_eval:
                history.append(_check_finite(*pending, checkpoints))
                pending = None
            if log:
                result = {f"train/{k}": v for k, v in summarize(history).items()}
                writer.write_scalars(step, {**result, **throughput(step)})
                history = []
            if save:
                checkpoints.save(
                    step, state, data=train_iter, meta={"step": step, **meta, "data": position.meta(step, manifest)}
                )
            if config.export_every_steps > 0 and step % config.export_every_steps == 0 and step < n:
                export(trainer, state.params, tokenizer, os.path.join(workdir, "export", f"step_{step}"))
            if run_eval:
                eval_metrics = evaluate(trainer, state.params, data_dir, config, eval_key)
                writer.write_scalars(step, eval_metrics)
                result.update(eval_metrics)
                throughput.restart(step)
            writer.flush()
            if preempted:
                logging.warning("stopped for preemption at step %d after saving a checkpoint", step)
                break
        else:
            if config.export_hf:
                export(trainer, state.params, tokenizer, os.path.join(workdir, "export"))
    finally:
        if profiling:
            jax.profiler.stop_trace()
        checkpoints.close()
        writer.close()
    exported = config.export_hf and int(state.step) == n
    logging.info(
        "stopped at step %d of %d. checkpoints: %s | metrics: %s | TensorBoard: tensorboard --logdir %s%s",
        int(state.step),
        n,
        checkpoints.directory,
        os.path.join(workdir, "metrics.jsonl"),
        workdir,
        f" | Hugging Face export: {os.path.join(workdir, 'export')}" if exported else "",
    )
    if int(state.step) < n:
        raise faults.Preempted(
            f"stopped for preemption at step {int(state.step)} of {n} after saving checkpoint "
            f"{checkpoints.directory / str(int(state.step))}: run the same command again to resume"
        )
    return result
