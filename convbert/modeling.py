"""ConvBERT in Flax NNX: embeddings, mixed attention, grouped-linear FFN, encoder and task heads.

Spec sections 1 (mixed attention), 2 (grouped linear), 3 (configs), 6.3 (heads). Attribute names
mirror Hugging Face's PyTorch module tree (`encoder.layer.3.attention.self.query`, ...), so the
converter in `convbert.hf_io` is a mechanical name map. Every parameter carries `logical_axes`
metadata that `convbert.sharding` resolves to a mesh layout.

Shapes: B batch, T length, E embedding size, H hidden, N heads, Nr = N // head_ratio heads per
branch, d = H / N, A = Nr * d, k kernel size, I intermediate, G groups, V vocab.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from flax import nnx, struct

from convbert.config import ConvBertConfig

Array = jax.Array
MASK_BIAS = -10000.0  # additive bias on padded keys, as the TF original (spec 1.2 step 2)


@jax.custom_vjp
def gelu(x: Array) -> Array:
    """Exact gelu x Phi(x). Undifferentiated (evaluation): jax.nn.gelu's erfc form. Under autodiff: the forward
    0.5 x (1 + erf(x / sqrt 2)) saving x and Phi(x), backward g (Phi(x) + x phi(x)). XLA CPU fuses the erf form
    into the neighbouring matmuls, which is 5-10% faster for a small training step and 30% slower for an
    evaluation forward than the erfc form, so each path gets its faster form (BENCHMARKS.md). No forward-mode."""
    return jax.nn.gelu(x, approximate=False)


def _normal_cdf(x: Array) -> Array:
    return 0.5 * (1.0 + lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


def _gelu_fwd(x: Array):
    cdf = _normal_cdf(x)
    return x * cdf, (x, cdf)


def _gelu_bwd(residuals, g: Array):
    x, cdf = residuals
    return (g * (cdf + x * jnp.asarray(0.3989422804014327, x.dtype) * jnp.exp(-0.5 * x * x)),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def activation(name: str):
    return {
        "gelu": gelu,
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }[name]


def compute_dtype(config: ConvBertConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _init(config: ConvBertConfig, stddev: float | None = None):
    """TF initialisation: truncated normal, sigma = initializer_range (spec 1.3)."""
    return nnx.initializers.truncated_normal(stddev=config.initializer_range if stddev is None else stddev)


def dense(config: ConvBertConfig, fan_in: int, fan_out: int, axes: tuple, *, rngs: nnx.Rngs,
          use_bias: bool = True) -> nnx.Linear:
    """A Linear with float32 parameters, compute in `config.dtype`, TF init and logical axes."""
    return nnx.Linear(fan_in, fan_out, use_bias=use_bias, dtype=compute_dtype(config), param_dtype=jnp.float32,
                      kernel_init=_init(config), rngs=rngs,
                      kernel_metadata={"logical_axes": axes}, bias_metadata={"logical_axes": axes[-1:]})


def layer_norm(config: ConvBertConfig, features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm computed in float32 whatever the compute dtype (its output is cast back by the caller)."""
    return nnx.LayerNorm(features, epsilon=config.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32,
                         use_fast_variance=False, rngs=rngs,
                         scale_metadata={"logical_axes": ("embed",)}, bias_metadata={"logical_axes": ("embed",)})


def _fmix32(h: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def dropout_keep_mask(rng: Array, shape: tuple[int, ...], keep_prob: float) -> Array:
    """Bernoulli(keep_prob) mask of `shape`, a counter-based hash of each element's position and two 32-bit seeds
    drawn from `rng`: h = fmix32(fmix32(row ^ s0) + col * 0x9E3779B1 + s1) over row = index of the leading dims,
    col = index in the last one. Unlike `jax.random.bernoulli` (threefry, which XLA CPU runs as a loop over the
    whole array and then materialises for the backward pass) it is elementwise, so XLA fuses it into the consumer
    and recomputes it in the backward pass: 15% faster small training steps on CPU (BENCHMARKS.md). Partitions
    like any elementwise op under sharding; same keep probability to 2^-32; a different stream from jax.random."""
    seeds = jax.random.bits(rng, (2,), jnp.uint32)
    rows = math.prod(shape[:-1])
    row = lax.broadcasted_iota(jnp.uint32, (rows, shape[-1]), 0)
    col = lax.broadcasted_iota(jnp.uint32, (rows, shape[-1]), 1)
    h = _fmix32(_fmix32(row ^ seeds[0]) + col * jnp.uint32(0x9E3779B1) + seeds[1])
    threshold = min(round(keep_prob * 2.0 ** 32), 2 ** 32 - 1)
    return (h < jnp.uint32(threshold)).reshape(shape)


class Dropout(nnx.Module):
    """Dropout fed an explicit key; the identity when `rng` is None (evaluation)."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, x: Array, rng: Array | None) -> Array:
        if rng is None or self.rate == 0.0:
            return x
        keep = dropout_keep_mask(rng, x.shape, 1.0 - self.rate)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


class KeyChain:
    """Hands out a fresh dropout key per call site: `next()` is None when dropout is off."""

    def __init__(self, rng: Array | None):
        self._rng = rng
        self._count = 0

    def next(self) -> Array | None:
        if self._rng is None:
            return None
        self._count += 1
        return jax.random.fold_in(self._rng, self._count)


def shifted_window_sum(x: Array, weights: Array, kernel_size: int) -> Array:
    """Centred 1-D convolution over time, zero padding at both ends (spec 1.2 steps 5, 9-10).

    x: [B, T, ...C]; weights broadcastable to [B, T, ...C, k]. out[b, t] = sum_j w[..., j] * x[b, t + j - (k-1)/2].
    Serves the depthwise key conv (weights [H, k]) and the dynamic conv (weights [B, T, Nr, 1, k]).

    Forward: the TF original's k shifted slices, without materialising the [B, T, C, k] window (one fused loop).
    Backward: a custom VJP of the same function. dx = k shifted slices of g * w (the transposed conv). dw, which
    autodiff computes as k reductions over every broadcast axis (for the key conv, column reductions over B*T rows:
    slow on XLA CPU), is read off the diagonals of the banded gradient g x^T, computed by batched matmuls over time
    blocks of <= 128 rows (about (128 + k) / k times the minimal FLOPs, on the matmul units). No forward-mode (jvp)
    through it. BENCHMARKS.md ("Model forward/backward") compares this with autodiff of the slices, unfold + einsum,
    banded-matmul forward and lax.conv_general_dilated.
    """
    k, nd, t = kernel_size, x.ndim, x.shape[1]
    pad = (k - 1) // 2

    def pad_time(a, lo, hi):
        return jnp.pad(a, [(0, 0), (lo, hi)] + [(0, 0)] * (a.ndim - 2))

    def forward(x, w):
        padded = pad_time(x, pad, pad)
        out = padded[:, 0:t] * w[..., 0]
        for j in range(1, k):
            out = out + padded[:, j:j + t] * w[..., j]
        return out

    w_aligned = (1,) * (nd + 1 - weights.ndim) + weights.shape  # weights' shape aligned with [B, T, ...C, k]
    if weights.ndim > nd + 1 or jnp.broadcast_shapes(x.shape, w_aligned[:-1]) != x.shape or nd - 2 > 6:
        return forward(x, weights)  # output broadcast beyond x: plain autodiff

    @jax.custom_vjp
    def conv(x, w):
        return forward(x, w)

    def conv_fwd(x, w):
        return forward(x, w), (x, w)

    def conv_bwd(res, g):
        x, w = res
        wf = w.reshape(w_aligned)
        keep = [wf.shape[a] != 1 for a in range(nd)]  # axes along which w varies; dw sums over the others
        gp = pad_time(g, pad, pad)  # dx[s] = sum_j g[s + pad - j] * w[s + pad - j, j]
        wp = pad_time(wf, pad, pad) if keep[1] else None
        dx = 0
        for j in range(k):
            wj = wp[:, 2 * pad - j:2 * pad - j + t, ..., j] if keep[1] else wf[..., j]
            dx = dx + gp[:, 2 * pad - j:2 * pad - j + t] * wj
        # dw[.., t, .., j] = sum over broadcast axes of g[b, t, c] x[b, t + j - pad, c]: for each time block of bs
        # rows, band = g_block x_slab^T over the slab of bs + 2 pad rows around it, then band[t, t + j].
        nb = -(-t // 128)
        bs = -(-t // nb)
        width = bs + 2 * pad
        gb = pad_time(g, 0, nb * bs - t).reshape(g.shape[0], nb, bs, *g.shape[2:])
        xp = pad_time(x, pad, pad + nb * bs - t)
        slab = jnp.stack([xp[:, i * bs:i * bs + width] for i in range(nb)], axis=1)  # [B, nb, width, ...C]
        chans = "cdefgh"[:nd - 2]
        kept = ("b" if keep[0] else "") + "".join(c for c, kp in zip(chans, keep[2:]) if kp)
        band = jnp.einsum(f"bit{chans},bis{chans}->{kept}its", gb, slab, preferred_element_type=jnp.float32)
        lead = band.shape[:-2]
        flat = jnp.pad(band.reshape(*lead, bs * width), [(0, 0)] * len(lead) + [(0, bs)])
        diag = flat.reshape(*lead, bs, width + 1)[..., :k]  # [kept.., nb, bs, k]: band[t, t + j] at t (width+1) + j
        if keep[1]:
            diag = jnp.moveaxis(diag.reshape(*lead[:-1], nb * bs, k)[..., :t, :], -2, int(keep[0]))
        else:
            diag = jnp.sum(diag, axis=(-3, -2))
        dw = diag.reshape(tuple(n if kp else 1 for n, kp in zip(x.shape, keep)) + (k,)).reshape(w.shape)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv(x, weights)


class ConvBertEmbeddings(nnx.Module):
    """word [V,E] + position [P,E] + token type [2,E] -> LayerNorm -> dropout; output [B,T,E] (spec 1.3)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        e = config.embedding_size

        def embed(n, axes):
            return nnx.Embed(n, e, dtype=compute_dtype(config), param_dtype=jnp.float32, embedding_init=_init(config),
                             rngs=rngs, embedding_metadata={"logical_axes": axes})

        self.word_embeddings = embed(config.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(config.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(config.type_vocab_size, (None, "embed"))
        self.LayerNorm = layer_norm(config, e, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, input_ids: Array, token_type_ids: Array | None = None, position_ids: Array | None = None,
                 rng: Array | None = None) -> Array:
        t = input_ids.shape[-1]
        if position_ids is None:
            position_ids = jnp.arange(t)[None, :]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (self.word_embeddings.embedding[...][input_ids]
             + self.position_embeddings.embedding[...][position_ids]
             + self.token_type_embeddings.embedding[...][token_type_ids])
        x = self.LayerNorm(x).astype(compute_dtype(self.config))
        return self.dropout(x, rng)


class SeparableConv1D(nnx.Module):
    """Span-aware key (spec 1.2 step 5): depthwise conv over time (kernel [k, H], no bias) -> pointwise
    [H, A] -> + bias [A]. Input [B,T,H], output [B,T,A]."""

    def __init__(self, config: ConvBertConfig, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        k = config.conv_kernel_size
        self.kernel_size = k
        self.dtype = compute_dtype(config)
        self.depthwise = nnx.Param(_init(config, 1.0 / k)(rngs.params(), (k, in_features), jnp.float32),
                                   logical_axes=(None, "embed"))
        self.pointwise = nnx.Param(_init(config)(rngs.params(), (in_features, out_features), jnp.float32),
                                   logical_axes=("embed", "heads"))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), logical_axes=("heads",))

    def __call__(self, x: Array) -> Array:
        x = shifted_window_sum(x, self.depthwise[...].T.astype(self.dtype), self.kernel_size)
        return x @ self.pointwise[...].astype(self.dtype) + self.bias[...].astype(self.dtype)


class ConvBertSelfAttention(nnx.Module):
    """Mixed attention (spec 1.2): Nr self-attention heads and Nr convolution heads, each of size d.

    conv_type: 'sdconv' span-based dynamic conv (kernel from Q * SepConv(X)), 'dconv' dynamic conv
    (kernel from Q alone), 'lconv' lightweight conv (one learned kernel per head), 'none' (self-attention
    only). Output [B, T, 2A] (self-attention heads first) or [B, T, A] for 'none'.
    """

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        h, a, k, nr = config.hidden_size, config.branch_size, config.conv_kernel_size, config.num_reduced_heads
        self.query = dense(config, h, a, ("embed", "heads"), rngs=rngs)
        self.key = dense(config, h, a, ("embed", "heads"), rngs=rngs)
        self.value = dense(config, h, a, ("embed", "heads"), rngs=rngs)
        if config.conv_type == "sdconv":
            self.key_conv_attn_layer = SeparableConv1D(config, h, a, rngs=rngs)
        if config.conv_type in ("sdconv", "dconv"):
            self.conv_kernel_layer = dense(config, a, nr * k, ("heads", None), rngs=rngs)
        if config.conv_type == "lconv":
            self.conv_kernel = nnx.Param(_init(config)(rngs.params(), (nr, k), jnp.float32),
                                         logical_axes=(None, None))
        if config.conv_type != "none":
            self.conv_out_layer = dense(config, h, a, ("embed", "heads"), rngs=rngs)
        self.dropout = Dropout(config.attention_probs_dropout_prob)

    def conv_kernels(self, x: Array, q: Array) -> Array:
        """Softmax-normalised kernels [B, T, Nr, k] (or [Nr, k] for lconv), computed in float32."""
        c = self.config
        if c.conv_type == "lconv":
            return jax.nn.softmax(self.conv_kernel[...], axis=-1)
        gate = q * self.key_conv_attn_layer(x) if c.conv_type == "sdconv" else q
        logits = self.conv_kernel_layer(gate).astype(jnp.float32)
        return jax.nn.softmax(logits.reshape(*logits.shape[:2], c.num_reduced_heads, c.conv_kernel_size), axis=-1)

    def __call__(self, x: Array, mask_bias: Array, rng: Array | None = None) -> Array:
        c = self.config
        b, t, _ = x.shape
        nr, d = c.num_reduced_heads, c.head_size
        q = self.query(x)
        k = self.key(x).reshape(b, t, nr, d)
        v = self.value(x).reshape(b, t, nr, d)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q.reshape(b, t, nr, d), k, preferred_element_type=jnp.float32)
        scores = scores / jnp.sqrt(jnp.float32(d)) + mask_bias
        probs = self.dropout(jax.nn.softmax(scores, axis=-1), rng).astype(q.dtype)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        if c.conv_type == "none":
            return context.reshape(b, t, nr * d)
        kernels = self.conv_kernels(x, q).astype(q.dtype)
        conv_value = self.conv_out_layer(x).reshape(b, t, nr, d)
        conv = shifted_window_sum(conv_value, kernels[..., None, :], c.conv_kernel_size)
        return jnp.concatenate([context, conv], axis=2).reshape(b, t, 2 * nr * d)


class ConvBertSelfOutput(nnx.Module):
    """dense (2A -> H) -> dropout -> LayerNorm(out + residual)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.attention_output_size, config.hidden_size, ("heads", "embed"), rngs=rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x: Array, residual: Array, rng: Array | None) -> Array:
        y = self.dropout(self.dense(x), rng)
        return self.LayerNorm(y + residual).astype(residual.dtype)


class ConvBertAttention(nnx.Module):
    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.self = ConvBertSelfAttention(config, rngs=rngs)
        self.output = ConvBertSelfOutput(config, rngs=rngs)

    def __call__(self, x: Array, mask_bias: Array, keys: KeyChain) -> Array:
        return self.output(self.self(x, mask_bias, keys.next()), x, keys.next())


class GroupedLinear(nnx.Module):
    """Grouped linear (spec 2): input split into G chunks, y_g = x_g W_g with W [G, in/G, out/G], one full bias."""

    def __init__(self, config: ConvBertConfig, in_features: int, out_features: int, axes: tuple, *, rngs: nnx.Rngs):
        g = config.num_groups
        self.groups = g
        self.dtype = compute_dtype(config)
        self.kernel = nnx.Param(_init(config)(rngs.params(), (g, in_features // g, out_features // g), jnp.float32),
                                logical_axes=(None,) + axes)
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), logical_axes=axes[-1:])

    def __call__(self, x: Array) -> Array:
        xg = x.reshape(*x.shape[:-1], self.groups, -1)
        y = jnp.einsum("...gi,gio->...go", xg, self.kernel[...].astype(self.dtype))
        return y.reshape(*x.shape[:-1], -1) + self.bias[...].astype(self.dtype)


def ffn_dense(config: ConvBertConfig, fan_in: int, fan_out: int, axes: tuple, *, rngs: nnx.Rngs):
    if config.num_groups == 1:
        return dense(config, fan_in, fan_out, axes, rngs=rngs)
    return GroupedLinear(config, fan_in, fan_out, axes, rngs=rngs)


class ConvBertIntermediate(nnx.Module):
    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = ffn_dense(config, config.hidden_size, config.intermediate_size, ("embed", "mlp"), rngs=rngs)
        self.act = config.hidden_act

    def __call__(self, x: Array) -> Array:
        return activation(self.act)(self.dense(x))


class ConvBertOutput(nnx.Module):
    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = ffn_dense(config, config.intermediate_size, config.hidden_size, ("mlp", "embed"), rngs=rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def __call__(self, x: Array, residual: Array, rng: Array | None) -> Array:
        y = self.dropout(self.dense(x), rng)
        return self.LayerNorm(y + residual).astype(residual.dtype)


class ConvBertLayer(nnx.Module):
    """One post-LN block: mixed attention, then the (grouped) FFN."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.attention = ConvBertAttention(config, rngs=rngs)
        self.intermediate = ConvBertIntermediate(config, rngs=rngs)
        self.output = ConvBertOutput(config, rngs=rngs)

    def __call__(self, x: Array, mask_bias: Array, keys: KeyChain) -> Array:
        x = self.attention(x, mask_bias, keys)
        return self.output(self.intermediate(x), x, keys.next())


class ConvBertEncoder(nnx.Module):
    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.layer = nnx.List([ConvBertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: Array, mask_bias: Array, keys: KeyChain, output_hidden_states: bool = False):
        states = [x]
        for layer in self.layer:
            x = layer(x, mask_bias, keys)
            states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


# ------------------------------------------------------------------------------------------------
# Outputs (field names as in transformers)


@struct.dataclass
class BaseModelOutput:
    last_hidden_state: Array
    hidden_states: tuple | None = None


@struct.dataclass
class MaskedLMOutput:
    logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None


@struct.dataclass
class SequenceClassifierOutput:
    logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None


@struct.dataclass
class MultipleChoiceModelOutput:
    logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None


@struct.dataclass
class TokenClassifierOutput:
    logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None


@struct.dataclass
class QuestionAnsweringModelOutput:
    start_logits: Array
    end_logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None


@struct.dataclass
class ReplacedTokenDetectionOutput:
    logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None


# ------------------------------------------------------------------------------------------------


class ConvBertPreTrainedModel(nnx.Module):
    """Base of every public model: Hugging Face loading and saving (see `convbert.hf_io`)."""

    base_model_prefix = "convbert"

    @classmethod
    def from_pretrained(cls, path: str, **config_overrides):
        """Loads a Hugging Face ConvBERT directory or hub id (`config.json` + safetensors or `.bin`);
        `rngs=` seeds a head the checkpoint lacks, other keywords override config fields."""
        from convbert import hf_io
        return hf_io.from_pretrained(cls, path, **config_overrides)

    def save_pretrained(self, path: str) -> list[str]:
        """Writes `config.json` + `model.safetensors` that transformers loads into the matching class
        (see `convbert.hf_io.save_pretrained` for models transformers cannot compute); returns the files."""
        from convbert import hf_io
        return hf_io.save_pretrained(self, path)


def attention_mask_bias(attention_mask: Array | None, shape: tuple[int, int]) -> Array:
    """[B, 1, 1, T] float32 bias masking padded keys only (spec 1.2 step 2)."""
    if attention_mask is None:
        return jnp.zeros((shape[0], 1, 1, shape[1]), jnp.float32)
    return ((1.0 - attention_mask.astype(jnp.float32)) * MASK_BIAS)[:, None, None, :]


class ConvBertModel(ConvBertPreTrainedModel):
    """The bare encoder: embeddings -> (projection E -> H) -> L layers; no pooler. Output [B, T, H].

    With `add_embeddings=False` the model owns no embedding table and is called with `embedding_output`
    (the [B, T, E] output of a `ConvBertEmbeddings` owned by a parent, as ELECTRA's shared embeddings).
    """

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs, add_embeddings: bool = True):
        self.config = config
        if add_embeddings:
            self.embeddings = ConvBertEmbeddings(config, rngs=rngs)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = dense(config, config.embedding_size, config.hidden_size, ("embed", "embed"),
                                            rngs=rngs)
        self.encoder = ConvBertEncoder(config, rngs=rngs)

    def __call__(self, input_ids: Array | None = None, attention_mask: Array | None = None,
                 token_type_ids: Array | None = None, position_ids: Array | None = None, *,
                 embedding_output: Array | None = None, deterministic: bool = True,
                 dropout_rng: Array | None = None, output_hidden_states: bool = False) -> BaseModelOutput:
        if not deterministic and dropout_rng is None:
            raise ValueError("training mode (deterministic=False) needs dropout_rng")
        keys = KeyChain(None if deterministic else dropout_rng)
        if embedding_output is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or embedding_output for a model built without embeddings)")
            embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, keys.next())
        x = embedding_output
        if hasattr(self, "embeddings_project"):
            x = self.embeddings_project(x)
        mask_bias = attention_mask_bias(attention_mask, x.shape[:2])
        x, states = self.encoder(x, mask_bias, keys, output_hidden_states)
        return BaseModelOutput(last_hidden_state=x, hidden_states=states)


class _HeadModel(ConvBertPreTrainedModel):
    """A `convbert` body plus a head; `self.body(...)` runs the body with the shared argument handling."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.convbert = ConvBertModel(config, rngs=rngs)

    def body(self, input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng,
             output_hidden_states) -> tuple[BaseModelOutput, KeyChain]:
        keys = KeyChain(None if deterministic else dropout_rng)
        out = self.convbert(input_ids, attention_mask, token_type_ids, position_ids, deterministic=deterministic,
                            dropout_rng=keys.next(), output_hidden_states=output_hidden_states)
        return out, keys


def _cross_entropy(logits: Array, labels: Array, ignore_index: int | None = -100) -> Array:
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index if ignore_index is not None else jnp.ones(labels.shape, bool)
    safe = jnp.where(valid, labels, 0)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), safe[..., None], -1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


class ConvBertGeneratorPredictions(nnx.Module):
    """dense H -> E, gelu, LayerNorm(E) (generator MLM transform, spec 3.2)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, config.embedding_size, ("embed", "embed"), rngs=rngs)
        self.LayerNorm = layer_norm(config, config.embedding_size, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.LayerNorm(jax.nn.gelu(self.dense(x), approximate=False))


class TiedLMHead(nnx.Module):
    """Output bias [V]; the kernel is the word-embedding table [V, E] passed in (tied, spec 3.2)."""

    def __init__(self, config: ConvBertConfig):
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32), logical_axes=("vocab",))
        self.dtype = compute_dtype(config)

    def __call__(self, x: Array, embedding: Array) -> Array:
        """x [..., E], embedding [V, E] -> float32 logits [..., V]."""
        logits = jnp.einsum("...e,ve->...v", x.astype(self.dtype), embedding.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return logits + self.bias[...]


class ConvBertForMaskedLM(_HeadModel):
    """Generator-style MLM head tied to the word embeddings. logits [B, T, V]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.generator_predictions = ConvBertGeneratorPredictions(config, rngs=rngs)
        self.generator_lm_head = TiedLMHead(config)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 labels=None, deterministic=True, dropout_rng=None, output_hidden_states=False) -> MaskedLMOutput:
        out, _ = self.body(input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng,
                           output_hidden_states)
        h = self.generator_predictions(out.last_hidden_state)
        logits = self.generator_lm_head(h, self.convbert.embeddings.word_embeddings.embedding[...])
        loss = None if labels is None else _cross_entropy(logits, labels)
        return MaskedLMOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertClassificationHead(nnx.Module):
    """On the [CLS] state. 'hf': dropout, dense H->H, activation, dropout, out_proj (transformers);
    'original': dropout, out_proj (the original fine-tuning code, spec 6.3)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        h = config.hidden_size
        self.form = config.classifier_head
        self.act = config.hidden_act
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(rate)
        if self.form == "hf":
            self.dense = dense(config, h, h, ("embed", None), rngs=rngs)
        self.out_proj = dense(config, h, config.num_labels, ("embed", None), rngs=rngs)

    def __call__(self, hidden: Array, keys: KeyChain) -> Array:
        x = self.dropout(hidden[:, 0], keys.next())
        if self.form == "hf":
            x = self.dropout(activation(self.act)(self.dense(x)), keys.next())
        return self.out_proj(x).astype(jnp.float32)


class ConvBertForSequenceClassification(_HeadModel):
    """Classification (num_labels > 1, cross-entropy) or regression (num_labels == 1, MSE). logits [B, labels]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.classifier = ConvBertClassificationHead(config, rngs=rngs)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 labels=None, deterministic=True, dropout_rng=None,
                 output_hidden_states=False) -> SequenceClassifierOutput:
        out, keys = self.body(input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng,
                              output_hidden_states)
        logits = self.classifier(out.last_hidden_state, keys)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = jnp.mean((logits[:, 0] - labels.astype(jnp.float32)) ** 2)
            else:
                loss = _cross_entropy(logits, labels, ignore_index=None)
        return SequenceClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertForMultipleChoice(_HeadModel):
    """Inputs [B, C, T]; summary token per choice (`summary_type`, transformers' default 'last') -> dense(1).
    logits [B, C]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.classifier = dense(config, config.hidden_size, 1, ("embed", None), rngs=rngs)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 labels=None, deterministic=True, dropout_rng=None,
                 output_hidden_states=False) -> MultipleChoiceModelOutput:
        num_choices = input_ids.shape[1]
        flat = lambda a: None if a is None else a.reshape(-1, a.shape[-1])
        out, _ = self.body(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                           deterministic, dropout_rng, output_hidden_states)
        h = out.last_hidden_state
        summary = {"last": lambda: h[:, -1], "first": lambda: h[:, 0], "mean": lambda: h.mean(1)}
        logits = self.classifier(summary[self.config.summary_type]()).astype(jnp.float32).reshape(-1, num_choices)
        loss = None if labels is None else _cross_entropy(logits, labels, ignore_index=None)
        return MultipleChoiceModelOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertForTokenClassification(_HeadModel):
    """dropout -> dense(num_labels) per token. logits [B, T, labels]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(rate)
        self.classifier = dense(config, config.hidden_size, config.num_labels, ("embed", None), rngs=rngs)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 labels=None, deterministic=True, dropout_rng=None,
                 output_hidden_states=False) -> TokenClassifierOutput:
        out, keys = self.body(input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng,
                              output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state, keys.next())).astype(jnp.float32)
        loss = None if labels is None else _cross_entropy(logits, labels)
        return TokenClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertForQuestionAnswering(_HeadModel):
    """dense(H -> 2) per token, split into start/end logits [B, T]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.qa_outputs = dense(config, config.hidden_size, config.num_labels, ("embed", None), rngs=rngs)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 start_positions=None, end_positions=None, deterministic=True, dropout_rng=None,
                 output_hidden_states=False) -> QuestionAnsweringModelOutput:
        out, _ = self.body(input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng,
                           output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state).astype(jnp.float32)
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            t = start.shape[1]
            s, e = jnp.clip(start_positions, 0, t), jnp.clip(end_positions, 0, t)
            loss = (_cross_entropy(start, s, ignore_index=t) + _cross_entropy(end, e, ignore_index=t)) / 2
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end, loss=loss,
                                            hidden_states=out.hidden_states)


class ConvBertDiscriminatorPredictions(nnx.Module):
    """ELECTRA discriminator head (spec 3.2): dense H->H, activation, dense H->1. Output [B, T] logits."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, config.hidden_size, ("embed", None), rngs=rngs)
        self.dense_prediction = dense(config, config.hidden_size, 1, ("embed", None), rngs=rngs)
        self.act = config.hidden_act

    def __call__(self, x: Array) -> Array:
        return self.dense_prediction(activation(self.act)(self.dense(x)))[..., 0].astype(jnp.float32)


class ConvBertForPreTraining(_HeadModel):
    """ConvBERT discriminator with the replaced-token-detection head: one logit per token [B, T]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.discriminator_predictions = ConvBertDiscriminatorPredictions(config, rngs=rngs)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, *,
                 labels=None, deterministic=True, dropout_rng=None,
                 output_hidden_states=False) -> ReplacedTokenDetectionOutput:
        out, _ = self.body(input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng,
                           output_hidden_states)
        logits = self.discriminator_predictions(out.last_hidden_state)
        loss = None
        if labels is not None:
            weights = jnp.ones_like(logits) if attention_mask is None else attention_mask.astype(jnp.float32)
            per_token = jnp.logaddexp(0.0, logits) - labels.astype(jnp.float32) * logits
            loss = jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        return ReplacedTokenDetectionOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


MODEL_CLASSES: dict[str, type] = {
    cls.__name__: cls for cls in (
        ConvBertModel, ConvBertForMaskedLM, ConvBertForSequenceClassification, ConvBertForMultipleChoice,
        ConvBertForTokenClassification, ConvBertForQuestionAnswering, ConvBertForPreTraining)
}


def count_params(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def param_logical_axes(module: nnx.Module) -> dict[tuple, Any]:
    """{param path: logical axes tuple} for every parameter (read by `convbert.sharding`)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        out[path] = var.get_metadata().get("logical_axes")
    return out
