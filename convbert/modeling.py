"""ConvBERT in Flax NNX: embeddings, mixed attention, grouped-linear FFN, the encoder, `ConvBertModel` and the
pretrained-model base class (arXiv 2008.02496 section 3; yitu-opensource/ConvBert `model/modeling.py`). The task
heads are in `convbert.heads`, the numerical kernels in `convbert.kernels`.

Attribute names mirror Hugging Face's PyTorch module tree (`encoder.layer.3.attention.self.query`, ...), so the
converter in `convbert.hf_io` is a mechanical name map. Every parameter carries `logical_axes` metadata that
`convbert.sharding` resolves to a mesh layout.

Shapes: B batch, T length, E embedding size, H hidden, N heads, Nr = N // head_ratio heads per
branch, d = H / N, A = Nr * d, k kernel size, I intermediate, G groups, V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct

from convbert.config import ConvBertConfig
from convbert.kernels import Dropout, KeyChain, activation, matmul, shifted_window_sum
from convbert.sharding import constrain

Array = jax.Array
MASK_BIAS = -10000.0  # additive bias on padded keys, as the TF original (docs/architecture.md#self-attention-branch)
# Logical axes of the hidden states [B, T, H] (and the embeddings [B, T, E]), pinned at every layer boundary
# (`convbert.sharding.constrain`): under FSDP split over the batch only, so weights are gathered, not activations.
HIDDEN_AXES = ("batch", "length", "embed")
LAYERS_AXIS = "layers"  # logical name of the leading axis of stacked layers (`scan_layers`); no rule shards it
# `ConvBertConfig.remat` (but 'none') -> what `jax.checkpoint` keeps of a layer for its backward pass.
CHECKPOINT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
# TF1's `tf.layers.dense` default kernel initialiser, for the layers the official code builds without one.
GLOROT_UNIFORM = nnx.initializers.glorot_uniform()


def compute_dtype(config: ConvBertConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _init(config: ConvBertConfig, stddev: float | None = None):
    """TF initialisation: truncated normal, sigma = initializer_range (docs/architecture.md#initialisation)."""
    return nnx.initializers.truncated_normal(stddev=config.initializer_range if stddev is None else stddev)


class Dense(nnx.Linear):
    """`nnx.Linear` (the same parameters: kernel [in, out], bias [out]) whose product is the `matmul` kernel of
    `impl` (`convbert.kernels`). Input [..., in], output [..., out], computed in `dtype`."""

    def __init__(self, *args, impl: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.impl = impl

    def __call__(self, x: Array) -> Array:
        y = matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.impl)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def dense(
    config: ConvBertConfig,
    fan_in: int,
    fan_out: int,
    axes: tuple,
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    kernel_init: nnx.Initializer | None = None,
) -> Dense:
    """A Linear with float32 parameters, compute in `config.dtype`, logical axes and zero bias; the kernel drawn
    from `kernel_init`, by default TF's truncated normal (sigma = initializer_range)."""
    return Dense(
        fan_in,
        fan_out,
        use_bias=use_bias,
        dtype=compute_dtype(config),
        param_dtype=jnp.float32,
        kernel_init=kernel_init or _init(config),
        rngs=rngs,
        impl=config.kernels,
        kernel_metadata={"logical_axes": axes},
        bias_metadata={"logical_axes": axes[-1:]},
    )


def layer_norm(config: ConvBertConfig, features: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm computed in float32 whatever the compute dtype (its output is cast back by the caller)."""
    return nnx.LayerNorm(
        features,
        epsilon=config.layer_norm_eps,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        rngs=rngs,
        scale_metadata={"logical_axes": ("embed",)},
        bias_metadata={"logical_axes": ("embed",)},
    )


class ConvBertEmbeddings(nnx.Module):
    """word [V,E] + position [P,E] + token type [2,E] -> LayerNorm -> dropout; output [B,T,E]
    (docs/architecture.md#embeddings-and-projection)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        e = config.embedding_size

        def embed(n, axes):
            return nnx.Embed(
                n,
                e,
                dtype=compute_dtype(config),
                param_dtype=jnp.float32,
                embedding_init=_init(config),
                rngs=rngs,
                embedding_metadata={"logical_axes": axes},
            )

        self.word_embeddings = embed(config.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(config.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(config.type_vocab_size, (None, "embed"))
        self.LayerNorm = layer_norm(config, e, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout_prob, config.kernels)

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        rng: Array | None = None,
    ) -> Array:
        t = input_ids.shape[-1]
        if position_ids is None:
            position_ids = jnp.arange(t)[None, :]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (
            self.word_embeddings.embedding[...][input_ids]
            + self.position_embeddings.embedding[...][position_ids]
            + self.token_type_embeddings.embedding[...][token_type_ids]
        )
        x = self.LayerNorm(x).astype(compute_dtype(self.config))
        return self.dropout(constrain(x, HIDDEN_AXES), rng)


class SeparableConv1D(nnx.Module):
    """Span-aware key (docs/architecture.md#span-based-dynamic-convolution, step 1): depthwise conv over time
    (kernel [k, H], no bias) -> pointwise [H, A] -> + bias [A]. Input [B,T,H], output [B,T,A]."""

    def __init__(self, config: ConvBertConfig, in_features: int, out_features: int, *, rngs: nnx.Rngs):
        k = config.conv_kernel_size
        self.kernel_size = k
        self.impl = config.kernels
        self.dtype = compute_dtype(config)
        self.depthwise = nnx.Param(
            _init(config, 1.0 / k)(rngs.params(), (k, in_features), jnp.float32), logical_axes=(None, "embed")
        )
        self.pointwise = nnx.Param(
            _init(config)(rngs.params(), (in_features, out_features), jnp.float32), logical_axes=("embed", "heads")
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), logical_axes=("heads",))

    def __call__(self, x: Array) -> Array:
        x = shifted_window_sum(x, self.depthwise[...].T.astype(self.dtype), self.kernel_size, self.impl)
        return matmul(x, self.pointwise[...].astype(self.dtype), self.impl) + self.bias[...].astype(self.dtype)


class ConvBertSelfAttention(nnx.Module):
    """Mixed attention (paper section 3; docs/architecture.md#span-based-dynamic-convolution, #merge): Nr
    self-attention heads and Nr convolution heads, each of size d.

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
            self.conv_kernel = nnx.Param(_init(config)(rngs.params(), (nr, k), jnp.float32), logical_axes=(None, None))
        if config.conv_type != "none":
            self.conv_out_layer = dense(config, h, a, ("embed", "heads"), rngs=rngs)
        self.dropout = Dropout(config.attention_probs_dropout_prob, config.kernels)

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
        conv = shifted_window_sum(conv_value, kernels[..., None, :], c.conv_kernel_size, c.kernels)
        return jnp.concatenate([context, conv], axis=2).reshape(b, t, 2 * nr * d)


class ConvBertSelfOutput(nnx.Module):
    """dense (2A -> H) -> dropout -> LayerNorm(out + residual)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.attention_output_size, config.hidden_size, ("heads", "embed"), rngs=rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout_prob, config.kernels)

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
    """Grouped linear (docs/architecture.md#grouped-linear-feed-forward): input split into G chunks,
    y_g = x_g W_g with W [G, in/G, out/G], one full bias."""

    def __init__(self, config: ConvBertConfig, in_features: int, out_features: int, axes: tuple, *, rngs: nnx.Rngs):
        g = config.num_groups
        self.groups = g
        self.dtype = compute_dtype(config)
        self.impl = config.kernels
        self.kernel = nnx.Param(
            _init(config)(rngs.params(), (g, in_features // g, out_features // g), jnp.float32),
            logical_axes=(None,) + axes,
        )
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32), logical_axes=axes[-1:])

    def __call__(self, x: Array) -> Array:
        xg = x.reshape(*x.shape[:-1], self.groups, -1)
        y = matmul(xg, self.kernel[...].astype(self.dtype), self.impl)
        return y.reshape(*x.shape[:-1], -1) + self.bias[...].astype(self.dtype)


def ffn_dense(config: ConvBertConfig, fan_in: int, fan_out: int, axes: tuple, *, rngs: nnx.Rngs):
    if config.num_groups == 1:
        return dense(config, fan_in, fan_out, axes, rngs=rngs)
    return GroupedLinear(config, fan_in, fan_out, axes, rngs=rngs)


class ConvBertIntermediate(nnx.Module):
    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = ffn_dense(config, config.hidden_size, config.intermediate_size, ("embed", "mlp"), rngs=rngs)
        self.act = config.hidden_act
        self.impl = config.kernels

    def __call__(self, x: Array) -> Array:
        return activation(self.act, self.impl)(self.dense(x))


class ConvBertOutput(nnx.Module):
    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = ffn_dense(config, config.intermediate_size, config.hidden_size, ("mlp", "embed"), rngs=rngs)
        self.LayerNorm = layer_norm(config, config.hidden_size, rngs=rngs)
        self.dropout = Dropout(config.hidden_dropout_prob, config.kernels)

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
        x = constrain(self.attention(x, mask_bias, keys), HIDDEN_AXES)
        return constrain(self.output(self.intermediate(x), x, keys.next()), HIDDEN_AXES)


def stack_layers(layers: Sequence[nnx.Module]) -> nnx.Module:
    """One module of `layers[0]`'s structure whose every Variable holds the values of all `layers` stacked on a new
    leading axis ([L, ...], logical axis `LAYERS_AXIS` prepended to its `logical_axes`)."""
    graphdef, _ = nnx.split(layers[0])

    def stack(*variables: nnx.Variable) -> nnx.Variable:
        axes = variables[0].get_metadata().get("logical_axes")
        return variables[0].replace(
            jnp.stack([v.get_value() for v in variables]), logical_axes=None if axes is None else (LAYERS_AXIS, *axes)
        )

    states = [nnx.state(layer) for layer in layers]
    return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable)))


class ConvBertEncoder(nnx.Module):
    """L layers, input and output [B, T, H]. `layer` is an `nnx.List` of L `ConvBertLayer`s (transformers' names,
    `encoder.layer.<i>`) or, with `config.scan_layers`, one `ConvBertLayer` whose parameters are stacked [L, ...]
    (`stack_layers` of the same L layers, so the same initialisation) and run by `jax.lax.scan`, which compiles one
    layer instead of L. Layer i draws its dropout keys from fold_in(rng, i) in both forms, so they compute the same
    function. `config.remat` rematerialises each layer in the backward pass (`jax.checkpoint` with
    `CHECKPOINT_POLICIES`)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        layers = [ConvBertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
        self.layer = stack_layers(layers) if config.scan_layers else nnx.List(layers)

    def __call__(self, x: Array, mask_bias: Array, rng: Array | None, output_hidden_states: bool = False):
        """x [B, T, H], mask_bias [B, 1, 1, T], rng: dropout key (None: no dropout). Returns (output, the L + 1
        hidden states (input first) when `output_hidden_states`, else None)."""
        c = self.config
        if c.scan_layers:
            graphdef, params = nnx.split(self.layer)
        else:
            graphdef, params = nnx.split(self.layer[0])[0], [nnx.state(layer) for layer in self.layer]

        def run(params, x, mask_bias, key):
            return nnx.merge(graphdef, params)(x, mask_bias, KeyChain(key))

        def key(index):
            return None if rng is None else jax.random.fold_in(rng, index)

        if c.remat != "none":
            run = jax.checkpoint(run, policy=CHECKPOINT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        if c.scan_layers:

            def body(h, xs):
                layer_params, index = xs
                h = run(layer_params, h, mask_bias, key(index))
                return h, h if output_hidden_states else None

            out, ys = jax.lax.scan(body, x, (params, jnp.arange(c.num_hidden_layers)))
            return out, ((x, *ys) if output_hidden_states else None)
        states = [x]
        for index, layer_params in enumerate(params):
            x = run(layer_params, x, mask_bias, key(index))
            states.append(x)
        return x, (tuple(states) if output_hidden_states else None)


@struct.dataclass
class BaseModelOutput:
    """`ConvBertModel`'s output (field names as in transformers)."""

    last_hidden_state: Array
    hidden_states: tuple | None = None


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
    """[B, 1, 1, T] float32 bias masking padded keys only (docs/architecture.md#self-attention-branch)."""
    if attention_mask is None:
        return jnp.zeros((shape[0], 1, 1, shape[1]), jnp.float32)
    return ((1.0 - attention_mask.astype(jnp.float32)) * MASK_BIAS)[:, None, None, :]


class ConvBertModel(ConvBertPreTrainedModel):
    """The bare encoder: embeddings -> (projection E -> H) -> L layers; no pooler. Output [B, T, H].
    The projection is Glorot-uniform initialised, as the official code's `tf.layers.dense` without an initialiser.

    With `add_embeddings=False` the model owns no embedding table and is called with `embedding_output`
    (the [B, T, E] output of a `ConvBertEmbeddings` owned by a parent, as ELECTRA's shared embeddings).
    """

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs, add_embeddings: bool = True):
        self.config = config
        if add_embeddings:
            self.embeddings = ConvBertEmbeddings(config, rngs=rngs)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = dense(
                config,
                config.embedding_size,
                config.hidden_size,
                ("embed", "embed"),
                rngs=rngs,
                kernel_init=GLOROT_UNIFORM,
            )
        self.encoder = ConvBertEncoder(config, rngs=rngs)

    def __call__(
        self,
        input_ids: Array | None = None,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
        *,
        embedding_output: Array | None = None,
        deterministic: bool = True,
        dropout_rng: Array | None = None,
        output_hidden_states: bool = False,
    ) -> BaseModelOutput:
        if not deterministic and dropout_rng is None:
            raise ValueError("training mode (deterministic=False) needs dropout_rng")
        keys = KeyChain(None if deterministic else dropout_rng)
        if embedding_output is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or embedding_output for a model built without embeddings)")
            embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, keys.next())
        x = embedding_output
        if hasattr(self, "embeddings_project"):
            x = constrain(self.embeddings_project(x), HIDDEN_AXES)
        mask_bias = attention_mask_bias(attention_mask, x.shape[:2])
        x, states = self.encoder(x, mask_bias, keys.next(), output_hidden_states)
        return BaseModelOutput(last_hidden_state=x, hidden_states=states)


def count_params(module: nnx.Module) -> int:
    """The number of parameter scalars of `module`."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
