"""Task heads and the Hugging Face-style task models on a `ConvBertModel` body, with their outputs (field names
as in transformers) and losses (`convbert.losses`). The heads follow transformers' `modeling_convbert.py`, the
discriminator head yitu-opensource/ConvBert `run_pretraining.py` and the 'original' classifier head
google-research/electra `finetune/classification/classification_tasks.py`.

The output layers the official code builds with `tf.layers.dense` and no initialiser (the discriminator's H -> 1,
the 'original' classifier's H -> labels) are Glorot-uniform initialised as there; every other kernel is
truncated normal (sigma = initializer_range). Shapes as in `convbert.modeling`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from convbert import losses
from convbert.config import ConvBertConfig
from convbert.kernels import Dropout, KeyChain, activation, gelu
from convbert.modeling import (
    GLOROT_UNIFORM,
    BaseModelOutput,
    ConvBertModel,
    ConvBertPreTrainedModel,
    compute_dtype,
    dense,
    layer_norm,
)

Array = jax.Array


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


class _HeadModel(ConvBertPreTrainedModel):
    """A `convbert` body plus a head; `self.body(...)` runs the body with the shared argument handling."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.convbert = ConvBertModel(config, rngs=rngs)

    def body(
        self, input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng, output_hidden_states
    ) -> tuple[BaseModelOutput, KeyChain]:
        keys = KeyChain(None if deterministic else dropout_rng)
        out = self.convbert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            deterministic=deterministic,
            dropout_rng=keys.next(),
            output_hidden_states=output_hidden_states,
        )
        return out, keys


class ConvBertGeneratorPredictions(nnx.Module):
    """dense H -> E, gelu, LayerNorm(E) (generator MLM transform, docs/electra.md#shared-embeddings)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, config.embedding_size, ("embed", "embed"), rngs=rngs)
        self.LayerNorm = layer_norm(config, config.embedding_size, rngs=rngs)
        self.impl = config.kernels

    def __call__(self, x: Array) -> Array:
        return self.LayerNorm(gelu(self.dense(x), self.impl))


class TiedLMHead(nnx.Module):
    """Output bias [V]; the kernel is the word-embedding table [V, E] passed in (tied,
    docs/electra.md#shared-embeddings)."""

    def __init__(self, config: ConvBertConfig):
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32), logical_axes=("vocab",))
        self.dtype = compute_dtype(config)

    def __call__(self, x: Array, embedding: Array) -> Array:
        """x [..., E], embedding [V, E] -> float32 logits [..., V]."""
        logits = jnp.einsum(
            "...e,ve->...v", x.astype(self.dtype), embedding.astype(self.dtype), preferred_element_type=jnp.float32
        )
        return logits + self.bias[...]


class ConvBertForMaskedLM(_HeadModel):
    """Generator-style MLM head tied to the word embeddings. logits [B, T, V]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.generator_predictions = ConvBertGeneratorPredictions(config, rngs=rngs)
        self.generator_lm_head = TiedLMHead(config)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        labels=None,
        deterministic=True,
        dropout_rng=None,
        output_hidden_states=False,
    ) -> MaskedLMOutput:
        out, _ = self.body(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng, output_hidden_states
        )
        h = self.generator_predictions(out.last_hidden_state)
        logits = self.generator_lm_head(h, self.convbert.embeddings.word_embeddings.embedding[...])
        loss = None if labels is None else losses.mean_softmax_cross_entropy(logits, labels, ignore_index=-100)
        return MaskedLMOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertClassificationHead(nnx.Module):
    """On the [CLS] state. 'hf': dropout, dense H->H, activation, dropout, out_proj (transformers);
    'original': dropout, out_proj (the original fine-tuning code, docs/recipes.md#glue-heads)."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        h = config.hidden_size
        self.form = config.classifier_head
        self.act = config.hidden_act
        self.impl = config.kernels
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(rate, config.kernels)
        if self.form == "hf":
            self.dense = dense(config, h, h, ("embed", None), rngs=rngs)
        self.out_proj = dense(
            config,
            h,
            config.num_labels,
            ("embed", None),
            rngs=rngs,
            kernel_init=GLOROT_UNIFORM if self.form == "original" else None,
        )

    def __call__(self, hidden: Array, keys: KeyChain) -> Array:
        x = self.dropout(hidden[:, 0], keys.next())
        if self.form == "hf":
            x = self.dropout(activation(self.act, self.impl)(self.dense(x)), keys.next())
        return self.out_proj(x).astype(jnp.float32)


class ConvBertForSequenceClassification(_HeadModel):
    """Classification (num_labels > 1, cross-entropy) or regression (num_labels == 1, MSE). logits [B, labels]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.classifier = ConvBertClassificationHead(config, rngs=rngs)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        labels=None,
        deterministic=True,
        dropout_rng=None,
        output_hidden_states=False,
    ) -> SequenceClassifierOutput:
        out, keys = self.body(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng, output_hidden_states
        )
        logits = self.classifier(out.last_hidden_state, keys)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = losses.ratio(*losses.weighted_sum(losses.squared_error(logits[:, 0], labels)))
            else:
                loss = losses.mean_softmax_cross_entropy(logits, labels)
        return SequenceClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class SequenceSummary(nnx.Module):
    """transformers' `SequenceSummary` (ConvBERT's, ELECTRA's): the `summary_type` token (or mean), then with
    `summary_use_proj` dense H -> H (`summary`), `summary_activation`, dropout `summary_last_dropout`. [B, T, H] ->
    [B, H]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.config = config
        if config.summary_use_proj:
            self.summary = dense(config, config.hidden_size, config.hidden_size, ("embed", None), rngs=rngs)
        self.dropout = Dropout(config.summary_last_dropout, config.kernels)

    def __call__(self, h: Array, keys: KeyChain) -> Array:
        c = self.config
        x = {"last": lambda: h[:, -1], "first": lambda: h[:, 0], "mean": lambda: h.mean(1)}[c.summary_type]()
        if c.summary_use_proj:
            x = self.summary(x)
        if c.summary_activation is not None:
            x = activation(c.summary_activation, c.kernels)(x)
        return self.dropout(x, keys.next())


class ConvBertForMultipleChoice(_HeadModel):
    """Inputs [B, C, T]; `SequenceSummary` per choice (transformers' default: the 'last' token, no projection) ->
    dense(1). logits [B, C]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.sequence_summary = SequenceSummary(config, rngs=rngs)
        self.classifier = dense(config, config.hidden_size, 1, ("embed", None), rngs=rngs)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        labels=None,
        deterministic=True,
        dropout_rng=None,
        output_hidden_states=False,
    ) -> MultipleChoiceModelOutput:
        num_choices = input_ids.shape[1]
        flat = lambda a: None if a is None else a.reshape(-1, a.shape[-1])
        out, keys = self.body(
            flat(input_ids),
            flat(attention_mask),
            flat(token_type_ids),
            flat(position_ids),
            deterministic,
            dropout_rng,
            output_hidden_states,
        )
        summary = self.sequence_summary(out.last_hidden_state, keys)
        logits = self.classifier(summary).astype(jnp.float32).reshape(-1, num_choices)
        loss = None if labels is None else losses.mean_softmax_cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertForTokenClassification(_HeadModel):
    """dropout -> dense(num_labels) per token. logits [B, T, labels]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = Dropout(rate, config.kernels)
        self.classifier = dense(config, config.hidden_size, config.num_labels, ("embed", None), rngs=rngs)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        labels=None,
        deterministic=True,
        dropout_rng=None,
        output_hidden_states=False,
    ) -> TokenClassifierOutput:
        out, keys = self.body(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng, output_hidden_states
        )
        logits = self.classifier(self.dropout(out.last_hidden_state, keys.next())).astype(jnp.float32)
        loss = None if labels is None else losses.mean_softmax_cross_entropy(logits, labels, ignore_index=-100)
        return TokenClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)


class ConvBertForQuestionAnswering(_HeadModel):
    """dense(H -> 2) per token, split into start/end logits [B, T]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.qa_outputs = dense(config, config.hidden_size, config.num_labels, ("embed", None), rngs=rngs)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        start_positions=None,
        end_positions=None,
        deterministic=True,
        dropout_rng=None,
        output_hidden_states=False,
    ) -> QuestionAnsweringModelOutput:
        out, _ = self.body(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng, output_hidden_states
        )
        logits = self.qa_outputs(out.last_hidden_state).astype(jnp.float32)
        start, end = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            t = start.shape[1]
            s, e = jnp.clip(start_positions, 0, t), jnp.clip(end_positions, 0, t)
            loss = (
                losses.mean_softmax_cross_entropy(start, s, ignore_index=t)
                + losses.mean_softmax_cross_entropy(end, e, ignore_index=t)
            ) / 2
        return QuestionAnsweringModelOutput(
            start_logits=start, end_logits=end, loss=loss, hidden_states=out.hidden_states
        )


class ConvBertDiscriminatorPredictions(nnx.Module):
    """ELECTRA discriminator head (google-research/electra `run_pretraining.py` `_get_discriminator_output`;
    docs/electra.md#shared-embeddings): dense H->H, activation, dense H->1. Output [B, T] logits."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(config, config.hidden_size, config.hidden_size, ("embed", None), rngs=rngs)
        self.dense_prediction = dense(
            config, config.hidden_size, 1, ("embed", None), rngs=rngs, kernel_init=GLOROT_UNIFORM
        )
        self.act = config.hidden_act
        self.impl = config.kernels

    def __call__(self, x: Array) -> Array:
        return self.dense_prediction(activation(self.act, self.impl)(self.dense(x)))[..., 0].astype(jnp.float32)


class ConvBertForPreTraining(_HeadModel):
    """ConvBERT discriminator with the replaced-token-detection head: one logit per token [B, T]."""

    def __init__(self, config: ConvBertConfig, *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        self.discriminator_predictions = ConvBertDiscriminatorPredictions(config, rngs=rngs)

    def __call__(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        *,
        labels=None,
        deterministic=True,
        dropout_rng=None,
        output_hidden_states=False,
    ) -> ReplacedTokenDetectionOutput:
        out, _ = self.body(
            input_ids, attention_mask, token_type_ids, position_ids, deterministic, dropout_rng, output_hidden_states
        )
        logits = self.discriminator_predictions(out.last_hidden_state)
        loss = None
        if labels is not None:
            weights = jnp.ones_like(logits) if attention_mask is None else attention_mask.astype(jnp.float32)
            per_token = losses.sigmoid_binary_cross_entropy(logits, labels)
            loss = losses.ratio(*losses.weighted_sum(per_token, weights))
        return ReplacedTokenDetectionOutput(logits=logits, loss=loss, hidden_states=out.hidden_states)
