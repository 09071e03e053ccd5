"""The training core of pretraining (`convbert.pretraining.Pretrainer`) and fine-tuning
(`convbert.finetuning.Trainer`): one train state, its sharded init, and the jitted train and eval steps over it.

`TrainState` (step, params, opt_state, rng) is one pytree. `TrainSteps` splits the model once (`nnx.split`:
graphdef, `nnx.Param` state, the rest), derives the parameter and optimizer shardings from the parameters'
logical axes (`convbert.sharding`) and jits, under stable names (what ahead-of-time compilation lowers):

  init(key[, pretrained]) -> TrainState           born sharded (`out_shardings=state_shardings`); the
                                                  parameters' and the train key from `init_keys(key)`
  train_step(state, batch) -> (state, metrics)    state donated; in (state_shardings, batch_sharding),
                                                  out (state_shardings, replicated)
  eval_step(params, batch, rng) -> outputs        in (param_shardings, batch_sharding, replicated)
  abstract_state(), abstract_batch(shapes)        ShapeDtypeStructs carrying the shardings (the inputs of
                                                  `train_step.lower`; the state: a checkpoint's restore target)

With `copies=S` (seeds trained together, `convbert.finetuning`) every array of the state, every batch and every
eval output has a leading axis of S, and the steps are `jax.vmap`s of the one-copy steps: each copy draws what
it would alone (its own init key, dropout `fold_in(rng, step)`, its own rows). The copies axis is split over
the 'data' mesh axis when S is a multiple of its size (each copy's batch then over 'fsdp' only; the rules lose
'data'), else replicated. A copy whose loss or gradient is not finite keeps its pre-step state and its step
becomes -(the failed step's number), after which it never updates; the other copies go on (the loss_fn's
metrics must hold 'loss').

The model is rebuilt with `nnx.merge` inside each step; gradients are taken w.r.t. the `nnx.Param` state only.
The step key is `fold_in(state.rng, state.step)`, so a resumed run draws what the uninterrupted one does.

Objectives: `loss_fn(model, batch, rng, normalizers) -> (loss, metrics)`, `normalizers = normalizers_fn(batch)`
computed once over the WHOLE batch (None without a `normalizers_fn`). With `grad_accum_steps = k` the batch
is cut into k micro-batches (micro-batch j takes rows j, j + k, ...: every device keeps its own rows) scanned
with `lax.scan`, and the k gradients are summed. A loss whose sums are divided by the whole batch's
denominators is each micro-batch's share of the batch's loss, so the sum is the gradient of one batch k times
the size (ELECTRA's ratio of sums over the batch, google-research/electra `run_pretraining.py`), not a mean of
per-micro-batch ratios.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from convbert import sharding

Batch = Mapping[str, jax.Array]
# (model, batch, rng, normalizers) -> (loss, metrics of scalars)
LossFn = Callable[[nnx.Module, Batch, jax.Array, Any], tuple[jax.Array, dict[str, jax.Array]]]


@struct.dataclass
class TrainState:
    """step: int32 []; params: `nnx.State` of float32 `nnx.Param`s; opt_state: optax state; rng: the train key
    (uint32 [2])."""

    step: jax.Array
    params: nnx.State
    opt_state: Any
    rng: jax.Array


class TrainSteps:
    """The jitted init / train / eval steps of one model, optimizer and objective on one mesh.

    model_fn(rngs) -> the model; optimizer_fn(abstract params) -> (optax transformation, learning-rate schedule);
    loss_fn / normalizers_fn: see the module doc; eval_fn(model, batch, rng) -> outputs (dropout off).
    frozen: top-level parameter names that get no gradient (`stop_gradient`, so no backward pass through them).
    train_step's metrics: loss_fn's metrics stacked over micro-batches ([grad_accum_steps] each), and the
    scalars grad_norm, param_norm and learning_rate (of the step taken).
    """

    def __init__(
        self,
        model_fn: Callable[[nnx.Rngs], nnx.Module],
        optimizer_fn: Callable[[nnx.State], tuple[optax.GradientTransformation, optax.Schedule]],
        loss_fn: LossFn,
        eval_fn: Callable[[nnx.Module, Batch, jax.Array | None], Any],
        mesh: jax.sharding.Mesh,
        rules: Sequence[tuple[str, Any]],
        *,
        normalizers_fn: Callable[[Batch], Any] | None = None,
        grad_accum_steps: int = 1,
        frozen: Sequence[str] = (),
        copies: int | None = None,
    ):
        self.model_fn, self.loss_fn, self.eval_fn, self.normalizers_fn = model_fn, loss_fn, eval_fn, normalizers_fn
        self.copies = copies
        self.copies_axis = None if copies is None else sharding.copies_axis(mesh, copies)
        self.batch_axes = tuple(a for a in sharding.BATCH_AXES if a != self.copies_axis)
        self.mesh, self.rules = mesh, sharding.without_axis(rules, self.copies_axis)
        self.grad_accum_steps, self.frozen = grad_accum_steps, tuple(frozen)
        self.graphdef, abstract_params, self.rest = nnx.split(
            nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param, ...
        )
        self.tx, self.schedule = optimizer_fn(abstract_params)

        self.replicated = repl = sharding.replicated(mesh)
        self.param_shardings = sharding.param_shardings(abstract_params, mesh, self.rules)
        self.state_shardings = TrainState(
            step=repl,
            params=self.param_shardings,
            rng=repl,
            opt_state=sharding.optimizer_shardings(
                self.tx, jax.eval_shape(self.tx.init, abstract_params), abstract_params, mesh, self.rules
            ),
        )
        self.batch_sharding = sharding.batch_sharding(mesh, self.batch_axes)
        train, evaluate, init = self._train_step, self._eval_step, self._init
        if copies is not None:  # a leading axis of `copies` over everything but the eval rng
            stack = functools.partial(sharding.stacked, axis=self.copies_axis)
            self.param_shardings, self.state_shardings = stack(self.param_shardings), stack(self.state_shardings)
            self.batch_sharding = stack(self.batch_sharding)
            vmap = functools.partial(jax.vmap, spmd_axis_name=self.copies_axis)
            train = vmap(self._train_step_or_keep)
            evaluate = vmap(self._eval_step, in_axes=(0, 0, None))
            init = jax.vmap(self._init, in_axes=(0, None))
        self.init = jax.jit(init, out_shardings=self.state_shardings)
        self.train_step = jax.jit(
            self._on_mesh(train),
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            self._on_mesh(evaluate),
            in_shardings=(self.param_shardings, self.batch_sharding, repl),
            out_shardings=repl,
        )

    def _on_mesh(self, fn: Callable) -> Callable:
        """`fn` traced under `sharding.activation_sharding(mesh, rules)`: the model's activation constraints
        resolve on this mesh."""

        @functools.wraps(fn)
        def traced(*args):
            with sharding.activation_sharding(self.mesh, self.rules):
                return fn(*args)

        return traced

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs carrying this mesh's shardings (the checkpoint restore target, the AOT input)."""
        key = jax.random.PRNGKey(0)
        return self.init.eval_shape(key if self.copies is None else jnp.stack([key] * self.copies), None)

    def abstract_batch(self, shapes: Mapping[str, tuple[Sequence[int], Any]]) -> dict[str, jax.ShapeDtypeStruct]:
        """{name: (global shape of one copy's batch, dtype)} -> ShapeDtypeStructs split over the batch axes, with
        the leading copies axis when stacked (the AOT input)."""
        lead = () if self.copies is None else (self.copies,)
        return {
            k: jax.ShapeDtypeStruct((*lead, *shape), np.dtype(dtype), sharding=self.batch_sharding)
            for k, (shape, dtype) in shapes.items()
        }

    def model(self, params: nnx.State) -> nnx.Module:
        return nnx.merge(self.graphdef, params, self.rest)

    def init_keys(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`init`'s key -> (the parameters' key, the train key `TrainState.rng`): two halves of a split."""
        k_params, k_train = jax.random.split(key)
        return k_params, k_train

    def _init(self, key: jax.Array, pretrained: Mapping[str, nnx.State] | None = None) -> TrainState:
        """Fresh parameters from `init_keys(key)`; `pretrained` {top-level module name: its parameters} replaces
        those of the named modules (e.g. a loaded encoder)."""
        k_params, k_train = self.init_keys(key)
        model = self.model_fn(nnx.Rngs(k_params))
        for name, params in (pretrained or {}).items():
            nnx.update(getattr(model, name), params)
        params = nnx.state(model, nnx.Param)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params), rng=k_train)

    def _loss(self, params: nnx.State, batch: Batch, rng: jax.Array, normalizers: Any):
        if self.frozen:
            params = nnx.State({k: jax.lax.stop_gradient(v) if k in self.frozen else v for k, v in params.items()})
        return self.loss_fn(self.model(params), batch, rng, normalizers)

    def gradients(self, params: nnx.State, batch: Batch, rng: jax.Array) -> tuple[nnx.State, dict[str, jax.Array]]:
        """(gradient of the whole batch's loss, loss_fn's metrics stacked over the micro-batches). Pure (jit it)."""
        grad_fn = jax.grad(self._loss, has_aux=True)
        normalizers = None if self.normalizers_fn is None else self.normalizers_fn(batch)
        k = self.grad_accum_steps
        if k == 1:
            grads, metrics = grad_fn(params, batch, rng, normalizers)
            return grads, jax.tree.map(lambda x: x[None], metrics)
        micro = jax.tree.map(lambda x: x.reshape(-1, k, *x.shape[1:]).swapaxes(0, 1), batch)
        micro = jax.lax.with_sharding_constraint(micro, sharding.micro_batch_sharding(self.mesh, self.batch_axes))

        def accumulate(total, xs):
            i, micro_batch = xs
            g, m = grad_fn(params, micro_batch, jax.random.fold_in(rng, i), normalizers)
            return jax.tree.map(jnp.add, total, g), m

        return jax.lax.scan(accumulate, jax.tree.map(jnp.zeros_like, params), (jnp.arange(k), micro))

    def _train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        grads, metrics = self.gradients(state.params, batch, jax.random.fold_in(state.rng, state.step))
        grads = sharding.constrain_params(grads, self.mesh, self.rules)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics.update(
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            learning_rate=self.schedule(state.step),
        )
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _train_step_or_keep(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        """`_train_step` of one copy, kept only where the loss and gradient are finite: else the copy keeps its
        state and its step becomes -(number of the failed step), after which it never updates again."""
        new, metrics = self._train_step(state, batch)
        ok = (state.step >= 0) & jnp.isfinite(metrics["loss"]).all() & jnp.isfinite(metrics["grad_norm"])
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        failed = jnp.where(state.step >= 0, -state.step - 1, state.step)
        return new.replace(step=jnp.where(ok, new.step, failed)), metrics

    def _eval_step(self, params: nnx.State, batch: Batch, rng: jax.Array | None):
        return self.eval_fn(self.model(params), batch, rng)
