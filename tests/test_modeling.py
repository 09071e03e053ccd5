"""The Flax model: sizes, every architecture knob, a NumPy reference of mixed attention, dropout, bfloat16 and
the padding semantics (spec 1, 2, 3, 9.1)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convbert import ConvBertConfig, ConvBertForMaskedLM, ConvBertModel, size_config
from convbert.modeling import (ConvBertSelfAttention, Dropout, attention_mask_bias, count_params, dropout_keep_mask,
                              gelu, shifted_window_sum)
from helpers import randomize

TINY = dict(vocab_size=100, embedding_size=16, hidden_size=16, num_attention_heads=4, intermediate_size=32,
            num_hidden_layers=1, max_position_embeddings=32)


@pytest.mark.parametrize("size, expected", [("small", 13_143_768), ("medium_small", 17_475_888),
                                            ("base", 105_680_520)])
def test_parameter_counts(size, expected):
    model = nnx.eval_shape(lambda: ConvBertModel(size_config(size), rngs=nnx.Rngs(0)))
    assert count_params(model) == expected


# Every conv_type meets every value of head_ratio, kernel size and groups (a Latin-square cover of the grid).
RATIOS, KERNELS, GROUPS = (1, 2, 4), (1, 5, 9), (1, 2, 4)
KNOBS = [(conv, RATIOS[j], KERNELS[(j + i) % 3], GROUPS[(j + 2 * i) % 3])
         for i, conv in enumerate(("sdconv", "dconv", "lconv", "none")) for j in range(3)]


@pytest.mark.parametrize("conv_type, head_ratio, kernel, groups", KNOBS)
def test_every_knob_builds_and_runs(conv_type, head_ratio, kernel, groups):
    config = ConvBertConfig(**TINY, conv_type=conv_type, head_ratio=head_ratio, conv_kernel_size=kernel,
                            num_groups=groups)
    model = ConvBertModel(config, rngs=nnx.Rngs(0))
    layer = model.encoder.layer[0]
    assert layer.attention.output.dense.kernel.shape == (config.attention_output_size, 16)
    out = model(jnp.arange(14).reshape(2, 7), jnp.ones((2, 7), jnp.int32)).last_hidden_state
    assert out.shape == (2, 7, 16) and bool(jnp.all(jnp.isfinite(out)))


def test_knob_cover_is_complete():
    for values, column in ((RATIOS, 1), (KERNELS, 2), (GROUPS, 3)):
        for conv in ("sdconv", "dconv", "lconv", "none"):
            assert {k[column] for k in KNOBS if k[0] == conv} == set(values)


# ------------------------------------------------------------------------------------------------
# NumPy reference loops (float64)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_param(p):
    return np.asarray(p[...], np.float64)


def np_linear(module, x):
    return x @ np_param(module.kernel) + np_param(module.bias)


def np_depthwise(x, weights):
    """out[b, t, c] = sum_j w[j, c] x[b, t + j - (k-1)/2, c], zero outside [0, T). x [B,T,C], w [k,C]."""
    k, (b, t, c) = weights.shape[0], x.shape
    out = np.zeros((b, t, c))
    for i, j in itertools.product(range(t), range(k)):
        s = i + j - (k - 1) // 2
        if 0 <= s < t:
            out[:, i] += weights[j] * x[:, s]
    return out


def np_mixed_attention(attn, x, mask):
    """Spec 1.2 steps 1-11 by explicit loops: [B, T, 2A] (SA heads first), [B, T, A] for conv_type 'none'."""
    c = attn.config
    b, t, _ = x.shape
    nr, d, k = c.num_reduced_heads, c.head_size, c.conv_kernel_size
    q, key, v = (np_linear(m, x).reshape(b, t, nr, d) for m in (attn.query, attn.key, attn.value))
    context = np.zeros((b, t, nr, d))
    for i, h in itertools.product(range(b), range(nr)):
        scores = q[i, :, h] @ key[i, :, h].T / np.sqrt(d) + (1.0 - mask[i])[None, :] * -10000.0
        context[i, :, h] = softmax(scores) @ v[i, :, h]
    if c.conv_type == "none":
        return context.reshape(b, t, nr * d)
    q = q.reshape(b, t, nr * d)
    if c.conv_type == "lconv":
        kernels = np.broadcast_to(softmax(np_param(attn.conv_kernel)), (b, t, nr, k))
    else:
        gate = q
        if c.conv_type == "sdconv":
            sep = attn.key_conv_attn_layer
            span_key = np_depthwise(x, np_param(sep.depthwise)) @ np_param(sep.pointwise) + np_param(sep.bias)
            gate = q * span_key
        kernels = softmax(np_linear(attn.conv_kernel_layer, gate).reshape(b, t, nr, k))
    conv_value = np_linear(attn.conv_out_layer, x).reshape(b, t, nr, d)
    conv = np.zeros((b, t, nr, d))
    for i, j in itertools.product(range(t), range(k)):
        s = i + j - (k - 1) // 2
        if 0 <= s < t:
            conv[:, i] += kernels[:, i, :, j, None] * conv_value[:, s]
    return np.concatenate([context, conv], axis=2).reshape(b, t, 2 * nr * d)


def test_shifted_window_sum_matches_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 11, 3, 4))
    w = rng.standard_normal((2, 11, 3, 1, 5))  # per-token kernels, as the dynamic conv uses it
    ref = np.zeros_like(x)
    for i, j in itertools.product(range(11), range(5)):
        if 0 <= i + j - 2 < 11:
            ref[:, i] += w[:, i, :, :, j] * x[:, i + j - 2]
    np.testing.assert_allclose(shifted_window_sum(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 5),
                               ref, atol=1e-5)


@pytest.mark.parametrize("conv_type", ["sdconv", "dconv", "lconv", "none"])
def test_mixed_attention_matches_numpy_reference(conv_type):
    config = ConvBertConfig(**{**TINY, "hidden_size": 24, "num_attention_heads": 6}, conv_type=conv_type,
                            conv_kernel_size=5)
    attn = randomize(ConvBertSelfAttention(config, rngs=nnx.Rngs(0)), scale=0.3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 24))
    mask = np.array([[1] * 9, [1] * 6 + [0] * 3])
    out = attn(jnp.asarray(x, jnp.float32), attention_mask_bias(jnp.asarray(mask), (2, 9)))
    np.testing.assert_allclose(out, np_mixed_attention(attn, x, mask), atol=2e-5)
    if conv_type == "sdconv":  # the depthwise + pointwise span-aware key on its own
        sep = attn.key_conv_attn_layer
        ref = np_depthwise(x, np_param(sep.depthwise)) @ np_param(sep.pointwise) + np_param(sep.bias)
        np.testing.assert_allclose(sep(jnp.asarray(x, jnp.float32)), ref, atol=2e-5)


# ------------------------------------------------------------------------------------------------
# dropout, precision, padding


def test_dropout_keys():
    model = ConvBertForMaskedLM(ConvBertConfig(**TINY), rngs=nnx.Rngs(0))
    ids = jnp.arange(16).reshape(2, 8)
    eval_a, eval_b = model(ids).logits, model(ids).logits
    np.testing.assert_array_equal(eval_a, eval_b)
    key = jax.random.key(3)
    train_a = model(ids, deterministic=False, dropout_rng=key).logits
    train_b = model(ids, deterministic=False, dropout_rng=key).logits
    other = model(ids, deterministic=False, dropout_rng=jax.random.key(4)).logits
    np.testing.assert_array_equal(train_a, train_b)
    assert not np.allclose(train_a, eval_a) and not np.allclose(train_a, other)
    with pytest.raises(ValueError, match="dropout_rng"):
        model(ids, deterministic=False)


def test_gelu_paths_agree():
    """The custom-VJP gelu: evaluation value, training value and gradient equal jax.nn.gelu's (exact form)."""
    x = jnp.linspace(-12.0, 12.0, 4001)
    exact = lambda v: jax.nn.gelu(v, approximate=False)
    np.testing.assert_allclose(gelu(x), exact(x), atol=1e-6)
    value, vjp = jax.vjp(gelu, x)
    np.testing.assert_allclose(value, exact(x), atol=1e-6)
    np.testing.assert_allclose(vjp(jnp.ones_like(x))[0], jax.grad(lambda v: exact(v).sum())(x), atol=1e-6)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_mask_statistics(rate):
    """The hash mask keeps 1 - rate of the elements, evenly over rows and columns, independently of its
    neighbours and of the mask drawn from another key (bounds are 5 standard deviations)."""
    shape = (16, 64, 512)
    mask = np.asarray(dropout_keep_mask(jax.random.key(0), shape, 1.0 - rate), np.float64)
    other = np.asarray(dropout_keep_mask(jax.random.key(1), shape, 1.0 - rate), np.float64)
    var = rate * (1.0 - rate)
    assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(var / mask.size)
    assert np.abs(mask.reshape(-1, 512).mean(0) - (1 - rate)).max() < 5 * np.sqrt(var / (16 * 64))
    assert np.abs(mask.reshape(-1, 512).mean(1) - (1 - rate)).max() < 5 * np.sqrt(var / 512)
    flat, sigma = mask.ravel(), 1 / np.sqrt(mask.size)
    for lag in (1, 2, 511, 512, 513, 64 * 512):
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 5 * sigma, lag
    assert abs(np.corrcoef(flat, other.ravel())[0, 1]) < 5 * sigma
    x = jnp.ones(shape)
    dropped = Dropout(rate)(x, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(dropped), mask / (1 - rate), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    config = ConvBertConfig(**{**TINY, "num_hidden_layers": 2})
    f32 = ConvBertModel(config, rngs=nnx.Rngs(0))
    bf16 = nnx.eval_shape(lambda: ConvBertModel(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)))
    nnx.update(bf16, nnx.state(f32, nnx.Param))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
    ids = jnp.arange(24).reshape(2, 12) % 100
    mask = jnp.array([[1] * 12, [1] * 7 + [0] * 5])
    out16 = bf16(ids, mask).last_hidden_state
    out32 = f32(ids, mask).last_hidden_state
    assert out16.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out16, np.float32) - np.asarray(out32))
    assert err.mean() < 0.02 and err.max() < 0.15, (err.mean(), err.max())


@pytest.mark.parametrize("conv_type", ["none", "sdconv"])
def test_padding_semantics(conv_type):
    """Self-attention masks padded keys; the conv branch ignores the mask (spec 9.1), so with one layer and
    k = 9 the last 4 real positions see the [PAD] positions' ids and all earlier ones do not."""
    model = ConvBertModel(ConvBertConfig(**TINY, conv_type=conv_type), rngs=nnx.Rngs(0))
    length, pad = 10, 6
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100, (1, length + pad)))
    mask = (jnp.arange(length + pad) < length)[None].astype(jnp.int32)
    out_a = model(ids * mask, mask).last_hidden_state[0, :length]
    out_b = model(jnp.where(mask > 0, ids, 7), mask).last_hidden_state[0, :length]
    diff = np.abs(np.asarray(out_a - out_b)).max(-1)
    if conv_type == "none":
        assert diff.max() == 0.0
    else:
        assert diff[:length - 4].max() == 0.0 and diff[length - 4:].min() > 1e-4, diff
