"""The original ELECTRA/ConvBERT optimiser in optax (google-research/electra `model/optimization.py`;
docs/electra.md#optimizer, docs/recipes.md#layer-wise-learning-rate-decay).

AdamWeightDecayOptimizer: beta1 0.9, beta2 0.999, eps 1e-6, NO bias correction (update = m / (sqrt(v) + eps)),
decoupled weight decay added to the update and skipped for LayerNorm and bias parameters, global-norm clip
1.0 before the update, learning rate = linear decay from the peak to 0 over the run, multiplied by
min(1, step / warmup) (the warmup multiplies the already-decaying value), optional layer-wise multipliers
(fine-tuning: decay ** (L + 2 - depth)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def warmup_linear_decay(
    peak_lr: float, total_steps: int, warmup_steps: int, power: float = 1.0
) -> Callable[[jax.Array], jax.Array]:
    """lr(step) = peak * (1 - min(step, total) / total) ** power * min(1, step / warmup)
    (docs/electra.md#optimizer)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        lr = peak_lr * (1.0 - jnp.minimum(step, total_steps) / total_steps) ** power
        if warmup_steps > 0:
            lr = lr * jnp.minimum(1.0, step / warmup_steps)
        return lr

    return schedule


class AdamNoBiasState(NamedTuple):
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6
) -> optax.GradientTransformation:
    """m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2; update = m / (sqrt(v) + eps), float32 moments."""

    def init(params):
        zeros = lambda p: jnp.zeros(p.shape, jnp.float32)
        return AdamNoBiasState(mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        return updates, AdamNoBiasState(mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def path_names(path) -> tuple[str, ...]:
    """Key path of a pytree leaf as strings: ('encoder', 'layer', '3', 'attention', ...)."""
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(str(getattr(k, attr)))
                break
    return tuple(out)


def decays_weight(names: tuple[str, ...]) -> bool:
    """Weight decay applies to kernels and embeddings, not to LayerNorm or bias parameters
    (docs/electra.md#optimizer)."""
    return not any("LayerNorm" in n or "layer_norm" in n or n == "bias" for n in names)


def weight_decay_mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: decays_weight(path_names(p)), params)


def layer_depth(names: tuple[str, ...], num_layers: int) -> int | np.ndarray:
    """0 for embeddings (and their projection), i + 1 for encoder layer i, num_layers + 2 for heads, as
    upstream `_get_layer_lrs` (docs/recipes.md#layer-wise-learning-rate-decay); for the stacked layers of a
    `scan_layers` model (no layer index in the path) the depths 1 ... L, [L]."""
    if "embeddings" in names or "embeddings_project" in names:
        return 0
    if "layer" in names:
        index = names[names.index("layer") + 1]
        return int(index) + 1 if index.isdigit() else np.arange(1, num_layers + 1)
    return num_layers + 2


def layerwise_lr_multipliers(params, num_layers: int, decay: float):
    """decay ** (num_layers + 2 - depth): embeddings 0.8^14, layer 0 0.8^13 ... layer 11 0.8^2, heads 1.0. A
    stacked layer parameter [L, ...] gets its L multipliers as an array [L, 1, ...] that broadcasts over it."""

    def multiplier(path, leaf):
        depth = layer_depth(path_names(path), num_layers)
        if isinstance(depth, np.ndarray):
            return (decay ** (num_layers + 2 - depth)).astype(np.float32).reshape((-1,) + (1,) * (len(leaf.shape) - 1))
        return float(decay ** (num_layers + 2 - depth))

    return jax.tree_util.tree_map_with_path(multiplier, params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by a fixed per-parameter factor (a pytree of floats like the params)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def electra_adamw(
    learning_rate: float | Callable,
    *,
    weight_decay: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    clip_norm: float | None = 1.0,
    params=None,
    lr_multipliers=None,
) -> optax.GradientTransformation:
    """clip(global norm) -> Adam without bias correction -> + wd * param (masked) -> * -lr (* multipliers).

    `params` (any pytree shaped like the parameters) builds the weight-decay mask by name.
    """
    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    parts.append(scale_by_adam_no_bias_correction(b1, b2, eps))
    if weight_decay:
        mask = None if params is None else weight_decay_mask(params)
        parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
    if lr_multipliers is not None:
        parts.append(scale_by_tree(lr_multipliers))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
