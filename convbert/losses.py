"""Loss primitives of every objective: softmax cross-entropy (MLM, classification, span starts and ends), sigmoid
binary cross-entropy (replaced-token detection, answerability) and squared error (regression).

Each primitive returns float32 values per example or per token, never a mean, so that a caller reduces them as
its objective says: `weighted_sum` gives the pair (sum of weight x value, sum of weights), which adds up exactly
over micro-batches, and `ratio` turns a pair into a mean. Reference formulas: google-research/electra
`run_pretraining.py` (`get_softmax_output`, `_get_discriminator_output`) and
`finetune/classification/classification_tasks.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def softmax_cross_entropy(logits: Array, labels: Array, ignore_index: int | None = None) -> Array:
    """-log softmax(logits)[label] per position: logits [..., C], int labels [...] -> float32 [...].

    With `ignore_index`, positions whose label equals it give 0 (see `label_weights` for their weight)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if ignore_index is None:
        return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    valid = labels != ignore_index
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    return jnp.where(valid, -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0], 0.0)


def label_weights(labels: Array, ignore_index: int | None = None) -> Array:
    """float32 [...]: 1 where a label counts, 0 where it equals `ignore_index`."""
    if ignore_index is None:
        return jnp.ones(labels.shape, jnp.float32)
    return (labels != ignore_index).astype(jnp.float32)


def sigmoid_binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """log(1 + e^x) - y x per element (`tf.nn.sigmoid_cross_entropy_with_logits`): float32 logits x and 0/1
    labels y of the same shape."""
    x = logits.astype(jnp.float32)
    return jnp.logaddexp(0.0, x) - labels.astype(jnp.float32) * x


def squared_error(predictions: Array, targets: Array) -> Array:
    """(prediction - target)^2 per element, float32."""
    return jnp.square(predictions.astype(jnp.float32) - targets.astype(jnp.float32))


def weighted_sum(values: Array, weights: Array | None = None) -> tuple[Array, Array]:
    """(sum of weights x values, sum of weights) as float32 scalars; `weights` None counts every element once."""
    if weights is None:
        return jnp.sum(values), jnp.asarray(values.size, jnp.float32)
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights), jnp.sum(weights)


def ratio(total: Array, count: Array, epsilon: float | None = None) -> Array:
    """The mean `total / count`: total / max(count, 1) (0 for an empty batch), or total / (count + epsilon) with
    `epsilon` (upstream ELECTRA's pretraining losses use 1e-6)."""
    if epsilon is not None:
        return total / (count + epsilon)
    return total / jnp.maximum(count, 1.0)


def mean_softmax_cross_entropy(logits: Array, labels: Array, ignore_index: int | None = None) -> Array:
    """`softmax_cross_entropy` averaged over the positions whose label counts (0 if none does)."""
    return ratio(
        *weighted_sum(softmax_cross_entropy(logits, labels, ignore_index), label_weights(labels, ignore_index))
    )
