"""Loss primitives: values against NumPy in float64, the ignore index, the (weighted sum, count) pairs and their
means, and the identity with the arithmetic the objectives used before they shared these primitives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convbert import losses


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@pytest.fixture
def logits_labels():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 7, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, (3, 7)).astype(np.int32)
    return logits, labels


def test_softmax_cross_entropy(logits_labels):
    logits, labels = logits_labels
    ref = -np.take_along_axis(np_log_softmax(logits), labels[..., None], -1)[..., 0]
    out = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert out.shape == labels.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    # bfloat16 logits are upcast before the softmax
    out16 = losses.softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels))
    assert out16.dtype == jnp.float32

    ignored = np.where(np.arange(7) % 3 == 0, -100, labels)
    out = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(ignored), ignore_index=-100)
    np.testing.assert_allclose(out, np.where(ignored == -100, 0.0, ref), rtol=1e-6)
    weights = losses.label_weights(jnp.asarray(ignored), -100)
    np.testing.assert_array_equal(weights, (ignored != -100).astype(np.float32))
    np.testing.assert_allclose(
        losses.mean_softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(ignored), -100),
        ref[ignored != -100].mean(),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(losses.label_weights(jnp.asarray(labels)), np.ones(labels.shape, np.float32))


def test_sigmoid_binary_cross_entropy_is_stable():
    x = np.array([-100.0, -3.0, -0.5, 0.0, 0.5, 3.0, 100.0], np.float32)
    for y in (0.0, 1.0):
        ref = np.log1p(np.exp(-np.abs(x.astype(np.float64)))) + np.maximum(x, 0) - y * x
        out = losses.sigmoid_binary_cross_entropy(jnp.asarray(x), jnp.full(x.shape, y))
        np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-30)
    # integer and boolean labels
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(jnp.asarray(x), jnp.ones(x.shape, bool)),
        losses.sigmoid_binary_cross_entropy(jnp.asarray(x), jnp.ones(x.shape)),
    )


def test_squared_error():
    np.testing.assert_allclose(
        losses.squared_error(jnp.array([0.5, 0.1]), jnp.array([0.2, 0.4])), [0.09, 0.09], rtol=1e-5
    )


def test_weighted_sum_and_ratio():
    values = jnp.array([1.0, 2.0, 4.0, 8.0])
    total, count = losses.weighted_sum(values, jnp.array([1, 0, 1, 0]))
    assert (float(total), float(count)) == (5.0, 2.0)
    assert float(losses.ratio(total, count)) == 2.5
    total, count = losses.weighted_sum(values)
    assert (float(total), float(count)) == (15.0, 4.0)
    empty = losses.weighted_sum(values, jnp.zeros(4))
    assert float(losses.ratio(*empty)) == 0.0  # an empty batch gives 0, not NaN
    assert float(losses.ratio(*empty, epsilon=1e-6)) == 0.0
    np.testing.assert_allclose(losses.ratio(jnp.float32(3.0), jnp.float32(2.0), epsilon=1e-6), 3.0 / (2.0 + 1e-6))


def test_pairs_add_up_over_micro_batches(logits_labels):
    """Summing the (total, count) pairs of micro-batches and dividing once gives the loss of the whole batch,
    whatever the counts per micro-batch."""
    logits, labels = logits_labels
    weights = (np.arange(21).reshape(3, 7) % 4 != 0).astype(np.float32)
    weights[0] = 0.0  # one micro-batch with almost nothing in it
    per_token = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    whole = losses.ratio(*losses.weighted_sum(per_token, jnp.asarray(weights)))
    parts = [losses.weighted_sum(per_token[i], jnp.asarray(weights[i])) for i in range(3)]
    total, count = (sum(p[j] for p in parts) for j in range(2))
    np.testing.assert_allclose(losses.ratio(total, count), whole, rtol=1e-6)
    assert not np.isclose(np.mean([float(losses.ratio(*p)) for p in parts]), float(whole))


def test_primitives_reproduce_the_previous_arithmetic_exactly(logits_labels):
    """Bit for bit what electra.py, glue/finetune.py and the heads computed inline before (jitted, as used)."""
    logits, labels = (jnp.asarray(a) for a in logits_labels)
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.integers(0, 2, labels.shape), jnp.float32)
    disc_logits = jnp.asarray(rng.standard_normal(labels.shape) * 4, jnp.float32)
    is_fake = jnp.asarray(rng.integers(0, 2, labels.shape), jnp.float32)
    targets = jnp.asarray(rng.standard_normal(3), jnp.float32)

    @jax.jit
    def before():
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), labels[..., None], axis=-1)[..., 0]
        bce = jnp.logaddexp(0.0, disc_logits) - is_fake * disc_logits
        return (
            jnp.sum(nll * w) / (jnp.sum(w) + 1e-6),
            jnp.sum(bce * w) / (jnp.sum(w) + 1e-6),
            jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0),
            jnp.mean((logits[:, 0, 0] - targets) ** 2),
            nll,
        )

    @jax.jit
    def after():
        nll = losses.softmax_cross_entropy(logits, labels)
        bce = losses.sigmoid_binary_cross_entropy(disc_logits, is_fake)
        return (
            losses.ratio(*losses.weighted_sum(nll, w), epsilon=1e-6),
            losses.ratio(*losses.weighted_sum(bce, w), epsilon=1e-6),
            losses.ratio(*losses.weighted_sum(bce, w)),
            losses.ratio(*losses.weighted_sum(losses.squared_error(logits[:, 0, 0], targets))),
            nll,
        )

    for a, b in zip(after(), before(), strict=True):
        np.testing.assert_array_equal(a, b)
