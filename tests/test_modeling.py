"""The Flax model: sizes, every architecture knob, a NumPy reference of mixed attention, dropout, bfloat16, the
padding semantics and the initialisers (yitu-opensource/ConvBert `model/modeling.py`)."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convbert import (
    ConvBertConfig,
    ConvBertForMaskedLM,
    ConvBertForPreTraining,
    ConvBertForSequenceClassification,
    ConvBertModel,
    kernels,
    size_config,
)
from convbert.config import REMAT_POLICIES
from convbert.hf_io import join_stacked, split_stacked
from convbert.modeling import CHECKPOINT_POLICIES, LAYERS_AXIS, ConvBertSelfAttention, attention_mask_bias, count_params
from helpers import randomize

TINY = dict(
    vocab_size=100,
    embedding_size=16,
    hidden_size=16,
    num_attention_heads=4,
    intermediate_size=32,
    num_hidden_layers=1,
    max_position_embeddings=32,
)


@pytest.mark.parametrize(
    "size, expected",
    [
        ("small", 13_143_768),
        ("medium_small", 17_475_888),
        ("base", 105_680_520),
        pytest.param("large", 322_604_736, marks=pytest.mark.slow),  # 24 layers traced twice: the longest count
    ],
)
def test_parameter_counts(size, expected):
    """The released sizes; large (ELECTRA-large's shape with ConvBERT's bottleneck) 323M against ELECTRA's 335M."""
    for scan_layers in (False, True):
        model = nnx.eval_shape(lambda s=scan_layers: ConvBertModel(size_config(size, scan_layers=s), rngs=nnx.Rngs(0)))
        assert count_params(model) == expected


# Every conv_type meets every value of head_ratio, kernel size and groups (a Latin-square cover of the grid).
RATIOS, KERNELS, GROUPS = (1, 2, 4), (1, 5, 9), (1, 2, 4)
KNOBS = [
    (conv, RATIOS[j], KERNELS[(j + i) % 3], GROUPS[(j + 2 * i) % 3])
    for i, conv in enumerate(("sdconv", "dconv", "lconv", "none"))
    for j in range(3)
]


@pytest.mark.parametrize("conv_type, head_ratio, kernel, groups", KNOBS)
def test_every_knob_builds_and_runs(conv_type, head_ratio, kernel, groups):
    config = ConvBertConfig(
        **TINY, conv_type=conv_type, head_ratio=head_ratio, conv_kernel_size=kernel, num_groups=groups
    )
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


@pytest.mark.parametrize("conv_type", ["sdconv", "dconv", "lconv", "none"])
def test_mixed_attention_matches_numpy_reference(conv_type):
    config = ConvBertConfig(
        **{**TINY, "hidden_size": 24, "num_attention_heads": 6}, conv_type=conv_type, conv_kernel_size=5
    )
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    """Self-attention masks padded keys; the conv branch ignores the mask (docs/architecture.md#padding-pitfall),
    so with one layer and k = 9 the last 4 real positions see the [PAD] positions' ids and all earlier ones do
    not."""
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
        assert diff[: length - 4].max() == 0.0 and diff[length - 4 :].min() > 1e-4, diff


# ------------------------------------------------------------------------------------------------
# initialisation

TRUNC_STD = 0.8796256610342398  # std of a unit normal truncated to [-2, 2] (TF's and jax's truncated_normal)


def assert_init(kernel, kind, stddev=0.02):
    """`kind` 'glorot': uniform on +-sqrt(6 / (fan_in + fan_out)), std sqrt(2 / (fan_in + fan_out)) (TF1's
    `tf.layers.dense` default); 'normal': truncated normal sigma = `stddev`, within 2 sigma. The std must be
    within 5 standard errors of the sample std (relative standard error <= sqrt(2 / n) / 2 for these shapes)."""
    w = np.asarray(kernel[...], np.float64)
    fan_in, fan_out = w.shape
    if kind == "glorot":
        bound, std = np.sqrt(6.0 / (fan_in + fan_out)), np.sqrt(2.0 / (fan_in + fan_out))
    else:
        bound, std = 2 * stddev, stddev * TRUNC_STD
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound, (kind, np.abs(w).max(), bound)
    assert abs(w.std() / std - 1) < 5 * np.sqrt(2.0 / w.size) / 2, (kind, w.std(), std)


def test_initialisers_follow_the_official_code():
    """embeddings_project (E -> H), the discriminator's H -> 1 and the 'original' classifier's H -> labels are
    `tf.layers.dense` without an initialiser upstream (Glorot-uniform); the other kernels truncated normal 0.02,
    as is the 'hf' classifier (transformers' form)."""
    config = ConvBertConfig(
        **{**TINY, "embedding_size": 128, "hidden_size": 256, "intermediate_size": 256, "num_labels": 3}
    )
    disc = ConvBertForPreTraining(config, rngs=nnx.Rngs(0))
    assert_init(disc.convbert.embeddings_project.kernel, "glorot")  # std 0.072 for 128 -> 256
    assert_init(disc.discriminator_predictions.dense_prediction.kernel, "glorot")
    assert_init(disc.discriminator_predictions.dense.kernel, "normal")
    assert_init(disc.convbert.encoder.layer[0].attention.self.query.kernel, "normal")
    assert_init(disc.convbert.encoder.layer[0].intermediate.dense.kernel, "normal")
    original = ConvBertForSequenceClassification(config.replace(classifier_head="original"), rngs=nnx.Rngs(1))
    assert_init(original.classifier.out_proj.kernel, "glorot")
    hf = ConvBertForSequenceClassification(config, rngs=nnx.Rngs(2))
    assert_init(hf.classifier.out_proj.kernel, "normal")
    assert_init(hf.classifier.dense.kernel, "normal")
    for linear in (
        disc.convbert.embeddings_project,
        disc.discriminator_predictions.dense_prediction,
        original.classifier.out_proj,
    ):
        assert not np.any(np.asarray(linear.bias[...]))


# ------------------------------------------------------------------------------------------------
# kernels, remat and scanned layers: the same function


def max_rel_err(a, ref, floor: float = 1e-30) -> float:
    """Largest difference relative to the largest reference entry, or to `floor` if larger (for gradients that
    vanish in exact arithmetic, such as the key bias's); float32 rounding gives ~1e-7 per op."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), floor))


def assert_same_grads(grads: dict, ref: dict):
    """Every gradient within 1e-5 of the reference, relative to its largest entry or to 1% of the largest gradient
    entry of the model if larger: the key bias's gradient vanishes in exact arithmetic (the softmax ignores it), and
    what float32 computes for it is rounding noise of the other terms' size."""
    assert grads.keys() == ref.keys()
    floor = 1e-2 * max(np.abs(g).max() for g in ref.values())
    for path, g in ref.items():
        assert max_rel_err(grads[path], g, floor) < 1e-5, path


def flat_params(tree) -> dict:
    """{path: array} of an `nnx.State` of parameters (or of their gradients), stacked layers split per layer."""
    return split_stacked({p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(tree)})


def random_params(config) -> dict:
    """Random parameters of ConvBertModel(config) in the plain model's paths (`flat_params`)."""
    return flat_params(
        nnx.state(randomize(nnx.eval_shape(lambda: ConvBertModel(config, rngs=nnx.Rngs(0))), 1, 0.3), nnx.Param)
    )


def run_model(config, params: dict, dropout_key=None):
    """ConvBertModel(config) with `params` (`random_params`) on a padded batch: (hidden states, flat gradients of a
    loss on every hidden state), jitted."""
    model = nnx.eval_shape(lambda: ConvBertModel(config, rngs=nnx.Rngs(0)))
    shapes = {p: v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    nnx.update(model, nnx.from_flat_state({p: jnp.asarray(v) for p, v in join_stacked(params, shapes).items()}))
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, config.vocab_size, (2, 10)))
    mask = jnp.asarray((np.arange(10)[None] < np.array([[10], [6]])).astype(np.int32))

    def loss(params):
        out = nnx.merge(graphdef, params, rest)(
            ids, mask, deterministic=dropout_key is None, dropout_rng=dropout_key, output_hidden_states=True
        )
        weights = jnp.cos(jnp.arange(out.last_hidden_state.size)).reshape(out.last_hidden_state.shape)
        return sum(jnp.sum(h * weights) for h in out.hidden_states), out.hidden_states

    (_, states), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
    return [np.asarray(h) for h in states], flat_params(grads)


SCAN = dict(TINY, num_hidden_layers=2, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)


def test_reference_and_cpu_tuned_kernels_agree_on_the_model():
    """ConvBertModel's hidden states and parameter gradients with every kernel 'reference' and every kernel
    'cpu_tuned' (dropout off: the two dropout masks are different random streams) agree to float32 rounding."""
    config = ConvBertConfig(**TINY)
    params = random_params(config)
    ref_states, ref_grads = run_model(config.replace(kernels="reference"), params)
    states, grads = run_model(config.replace(kernels="cpu_tuned"), params)
    for h, r in zip(states, ref_states, strict=True):
        assert max_rel_err(h, r) < 1e-5
    assert_same_grads(grads, ref_grads)


def test_config_kernels_reach_every_call_site(monkeypatch):
    """With `kernels` set, every kernel call of the encoder and of the heads (gelu of the FFN and of the heads,
    the dropout masks, both convolutions) takes the implementation it selects: none falls back to 'auto'."""
    calls = []

    def spy(name, impl, fn, *args):
        calls.append((name, impl))
        return fn(*args)

    for name, impls in kernels.KERNELS.items():
        for impl, fn in list(impls.items()):
            monkeypatch.setitem(impls, impl, functools.partial(spy, name, impl, fn))
    ids = jnp.ones((2, 8), jnp.int32)
    for choice in ("tpu", *kernels.IMPLS):
        config = ConvBertConfig(**TINY, kernels=choice, num_labels=3)
        for cls in (ConvBertForPreTraining, ConvBertForMaskedLM, ConvBertForSequenceClassification):
            calls.clear()
            model = nnx.eval_shape(lambda cls=cls, config=config: cls(config, rngs=nnx.Rngs(0)))
            jax.eval_shape(lambda m: m(ids, deterministic=False, dropout_rng=jax.random.key(0)).logits, model)
            assert all(impl == kernels.resolve_impl(choice, name) for name, impl in calls), (cls.__name__, calls)
            assert {c[0] for c in calls} == set(kernels.KERNELS)
            # per layer: 3 dropouts, 2 convolutions, 1 gelu; + the embedding dropout and the heads' gelu / dropouts
            heads = {
                ConvBertForPreTraining: (1, 0),
                ConvBertForMaskedLM: (1, 0),
                ConvBertForSequenceClassification: (1, 2),
            }[cls]
            assert [c[0] for c in calls].count("shifted_window_sum") == 2
            assert [c[0] for c in calls].count("gelu") == 1 + heads[0]
            assert [c[0] for c in calls].count("dropout_keep_mask") == 4 + heads[1]


@pytest.fixture(scope="module")
def plain_with_dropout():
    """(params, hidden states, gradients) of the plain 2-layer model with dropout on."""
    params = random_params(ConvBertConfig(**SCAN))
    return (params, *run_model(ConvBertConfig(**SCAN), params, jax.random.key(5)))


@pytest.mark.parametrize("scan_layers, remat", [(False, "full"), (True, "none"), (True, "dots")])
def test_scan_and_remat_compute_the_plain_model(plain_with_dropout, scan_layers, remat):
    """Scanned layers and rematerialisation: the same hidden states (all L + 1) and parameter gradients as the plain
    model from the same parameters, with dropout on (layer i's keys come from fold_in(key, i) in both forms)."""
    params, ref_states, ref_grads = plain_with_dropout
    assert set(REMAT_POLICIES) == {"none", *CHECKPOINT_POLICIES}
    config = ConvBertConfig(**SCAN, scan_layers=scan_layers, remat=remat)
    states, grads = run_model(config, params, jax.random.key(5))
    assert len(states) == len(ref_states) == 3
    for h, r in zip(states, ref_states, strict=True):
        assert max_rel_err(h, r) < 1e-5
    assert_same_grads(grads, ref_grads)


def test_scanned_layers_are_the_stacked_layers():
    """A scan_layers model built from the same seed holds the plain model's layers stacked [L, ...], with the
    logical axis 'layers' in front (replicated by the default sharding rules)."""
    config = ConvBertConfig(**SCAN)
    plain = nnx.state(ConvBertModel(config, rngs=nnx.Rngs(0)), nnx.Param)
    scanned = nnx.state(ConvBertModel(config.replace(scan_layers=True), rngs=nnx.Rngs(0)), nnx.Param)
    kernel = scanned["encoder"]["layer"]["intermediate"]["dense"]["kernel"]
    assert kernel.shape == (2, 16, 32) and kernel.get_metadata()["logical_axes"] == (LAYERS_AXIS, "embed", "mlp")
    a, b = flat_params(plain), flat_params(scanned)
    assert a.keys() == b.keys() and all(np.array_equal(a[p], b[p]) for p in a)


def test_scan_draws_different_dropout_per_layer(monkeypatch):
    """Under scan every layer draws its own dropout masks, the same as the plain model's layers."""
    masks = []

    def recording(rng, shape, keep_prob):
        mask = kernels.dropout_keep_mask_cpu_tuned(rng, shape, keep_prob)
        if len(shape) == 4:  # the attention probabilities [B, Nr, T, T], one per layer
            jax.debug.callback(lambda m: masks.append(np.asarray(m)), mask, ordered=True)
        return mask

    monkeypatch.setitem(kernels.KERNELS["dropout_keep_mask"], "cpu_tuned", recording)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 100, (2, 16)))
    per_form = []
    for scan_layers in (False, True):
        masks.clear()
        model = ConvBertModel(ConvBertConfig(**SCAN, kernels="cpu_tuned", scan_layers=scan_layers), rngs=nnx.Rngs(0))
        jax.block_until_ready(
            jax.jit(lambda m: m(ids, deterministic=False, dropout_rng=jax.random.key(0)).last_hidden_state)(model)
        )
        jax.effects_barrier()
        per_form.append(list(masks))
    plain, scanned = per_form
    assert len(plain) == len(scanned) == 2 and not np.array_equal(scanned[0], scanned[1])
    assert all(np.array_equal(a, b) for a, b in zip(plain, scanned, strict=True))
