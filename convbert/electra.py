"""ELECTRA-style replaced-token-detection pretraining of ConvBERT (docs/electra.md; ELECTRA paper arXiv 2003.10555
section 2; google-research/electra `run_pretraining.py`).

`ElectraModel` owns ONE `ConvBertEmbeddings` (word, position, token-type tables and the embedding LayerNorm,
shared by both networks), a generator and a discriminator body (`ConvBertModel(add_embeddings=False)`, each
with its own `embeddings_project`), the generator MLM head tied to the shared word table, and the
discriminator head. No sub-module is referenced twice, so the model splits in NNX tree mode too.

`pretraining_loss` is a pure function of (model, batch, rng) for use inside `jax.jit` with the
split/merge pattern; everything has static shapes (B batch, T length, N = max_predictions_per_seq, V vocab):

1. `mask_tokens` (`convbert.masking`) draws N prediction slots per row and masks the generator's input.
2. The generator runs on the masked ids; MLM logits only at the N gathered positions ([B, N, V]); loss =
   cross-entropy summed over slot weights / (sum of weights + 1e-6) over the batch (a duplicated position
   counts twice, as upstream). Under gradient accumulation both denominators are the whole batch's
   (`loss_normalizers`, known before masking), so k micro-batches give the gradient of one batch k times the size.
3. Replacement (`convbert.masking`): one id per slot sampled from softmax(stop_gradient(logits) / temperature)
   (`ElectraConfig.sampler`) overwrites every drawn position of the ORIGINAL ids (`scatter_slots`).
   is_fake = updated & (new id != original id) (docs/electra.md#replacement-and-labels).
4. Discriminator BCE per token x input_mask, summed over the batch / (sum(input_mask) + 1e-6).
   total = gen_weight * MLM + disc_weight * RTD (1 and 50, docs/electra.md#losses).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from convbert import losses
from convbert.config import ConvBertConfig, ElectraConfig, generator_config
from convbert.heads import (
    ConvBertDiscriminatorPredictions,
    ConvBertForMaskedLM,
    ConvBertForPreTraining,
    ConvBertGeneratorPredictions,
    TiedLMHead,
)
from convbert.masking import SAMPLERS, MaskedInputs, mask_tokens, num_prediction_slots, scatter_slots
from convbert.modeling import ConvBertEmbeddings, ConvBertModel

logger = logging.getLogger(__name__)
Array = jax.Array
GENERATOR_HEADS = ("generator_predictions", "generator_lm_head")
# ------------------------------------------------------------------------------------------------
# Model


class ElectraModel(nnx.Module):
    """Generator + discriminator sharing one embedding module (docs/electra.md#shared-embeddings).

    Attributes: `embeddings` (shared), `generator` / `discriminator` (`ConvBertModel` bodies without
    embeddings), `generator_predictions` + `generator_lm_head` (tied to the shared word table, own bias),
    `discriminator_predictions`. `discriminator_model()` / `generator_model()` export copies as the
    Hugging Face-shaped `ConvBertForPreTraining` / `ConvBertForMaskedLM`.
    """

    def __init__(self, disc: ConvBertConfig, gen: ConvBertConfig, *, rngs: nnx.Rngs):
        shared = ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size", "pad_token_id")
        mismatched = [f for f in shared if getattr(disc, f) != getattr(gen, f)]
        if mismatched:
            raise ValueError(f"generator and discriminator share the embeddings; they differ in {mismatched}")
        self.disc_config = disc
        self.gen_config = gen
        self.embeddings = ConvBertEmbeddings(disc, rngs=rngs)
        self.generator = ConvBertModel(gen, rngs=rngs, add_embeddings=False)
        self.generator_predictions = ConvBertGeneratorPredictions(gen, rngs=rngs)
        self.generator_lm_head = TiedLMHead(gen)
        self.discriminator = ConvBertModel(disc, rngs=rngs, add_embeddings=False)
        self.discriminator_predictions = ConvBertDiscriminatorPredictions(disc, rngs=rngs)

    def _encode(
        self, body: ConvBertModel, input_ids: Array, input_mask: Array, segment_ids: Array, dropout_rng: Array | None
    ) -> Array:
        """Shared embeddings -> body; dropout off when `dropout_rng` is None. Returns [B, T, H]."""
        k_emb, k_body = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
        emb = self.embeddings(input_ids, segment_ids, rng=k_emb)
        return body(
            attention_mask=input_mask, embedding_output=emb, deterministic=dropout_rng is None, dropout_rng=k_body
        ).last_hidden_state

    def generator_logits(
        self,
        input_ids: Array,
        input_mask: Array,
        segment_ids: Array,
        positions: Array,
        *,
        dropout_rng: Array | None = None,
    ) -> Array:
        """MLM logits at `positions` [B, N] only: float32 [B, N, V]."""
        hidden = self._encode(self.generator, input_ids, input_mask, segment_ids, dropout_rng)
        hidden = jnp.take_along_axis(hidden, positions[..., None], axis=1)
        return self.generator_lm_head(
            self.generator_predictions(hidden), self.embeddings.word_embeddings.embedding[...]
        )

    def discriminator_logits(
        self, input_ids: Array, input_mask: Array, segment_ids: Array, *, dropout_rng: Array | None = None
    ) -> Array:
        """Replaced-token logits, float32 [B, T]."""
        hidden = self._encode(self.discriminator, input_ids, input_mask, segment_ids, dropout_rng)
        return self.discriminator_predictions(hidden)

    def _parts(self, network: str) -> list[tuple[str, str]]:
        """[(path in the stand-alone model, path in this model)] of the `network` ('discriminator' or 'generator')
        and its head; the shared embeddings first."""
        body = getattr(self, network)
        parts = [("convbert.embeddings", "embeddings"), ("convbert.encoder", f"{network}.encoder")]
        if hasattr(body, "embeddings_project"):
            parts.append(("convbert.embeddings_project", f"{network}.embeddings_project"))
        heads = ("discriminator_predictions",) if network == "discriminator" else GENERATOR_HEADS
        return parts + [(h, h) for h in heads]

    def _export(self, cls: type, config: ConvBertConfig, network: str):
        """An abstract `cls(config)` filled with copies of `network`'s parts."""
        model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
        for target, source in self._parts(network):
            nnx.update(_get(model, target), jax.tree.map(jnp.copy, nnx.state(_get(self, source))))
        return model

    def discriminator_model(self) -> ConvBertForPreTraining:
        """The discriminator with copies of the shared embeddings and its head (HF `ConvBertForPreTraining`)."""
        return self._export(ConvBertForPreTraining, self.disc_config, "discriminator")

    def generator_model(self) -> ConvBertForMaskedLM:
        """The generator with copies of the shared embeddings and its tied MLM head (HF `ConvBertForMaskedLM`).

        transformers can only load it when `gen_config.hf_compatible` (not the small generator,
        docs/electra.md#generator-config).
        """
        return self._export(ConvBertForMaskedLM, self.gen_config, "generator")

    @classmethod
    def from_models(cls, discriminator: ConvBertForPreTraining, generator: ConvBertForMaskedLM) -> ElectraModel:
        """The pair with the discriminator's embeddings shared (google-research/electra ties them; a warning when
        the generator's differ) and copies of both networks and heads."""
        disc_emb, gen_emb = (nnx.state(m.convbert.embeddings, nnx.Param) for m in (discriminator, generator))
        if jax.tree.structure(disc_emb) != jax.tree.structure(gen_emb) or not all(
            jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape and bool(jnp.all(a == b)), disc_emb, gen_emb))
        ):
            logger.warning("the generator's and the discriminator's embeddings differ; sharing the discriminator's")
        model = nnx.eval_shape(lambda: cls(discriminator.config, generator.config, rngs=nnx.Rngs(0)))
        for network, source in (("discriminator", discriminator), ("generator", generator)):
            for standalone, target in model._parts(network):
                if not (network == "generator" and target == "embeddings"):
                    nnx.update(_get(model, target), jax.tree.map(jnp.copy, nnx.state(_get(source, standalone))))
        return model

    @classmethod
    def from_pretrained(
        cls,
        discriminator: str,
        generator: str | None = None,
        *,
        generator_fraction: float = 0.25,
        rngs: nnx.Rngs | None = None,
        **config_overrides,
    ) -> ElectraModel:
        """The pair from Hugging Face directories or hub ids (ConvBERT or ELECTRA, e.g.
        `google/electra-small-discriminator` + `-generator`), embeddings shared (`from_models`). Without
        `generator` (the hub has no ConvBERT generator), a fresh one of `generator_config(disc,
        generator_fraction)` from `rngs`, with a warning; a discriminator without its ELECTRA head gets a fresh one
        (`hf_io.from_pretrained`'s warning)."""
        rngs = rngs or nnx.Rngs(0)
        disc = ConvBertForPreTraining.from_pretrained(discriminator, rngs=rngs, **config_overrides)
        if generator is None:
            gen_config = generator_config(disc.config, generator_fraction)
            logger.warning(
                "%s comes without a generator: pretraining starts from a freshly initialised generator (hidden %d, "
                "%d layers; generator_fraction %s)",
                discriminator,
                gen_config.hidden_size,
                gen_config.num_hidden_layers,
                generator_fraction,
            )
            gen = ConvBertForMaskedLM(gen_config, rngs=rngs)
        else:
            gen = ConvBertForMaskedLM.from_pretrained(generator, **config_overrides)
        return cls.from_models(disc, gen)

    def save_pretrained(self, directory: str) -> list[str]:
        """`directory/discriminator` and `directory/generator` (`save_pretrained` of `discriminator_model()` and
        `generator_model()`); returns the written files."""
        return [
            *self.discriminator_model().save_pretrained(os.path.join(directory, "discriminator")),
            *self.generator_model().save_pretrained(os.path.join(directory, "generator")),
        ]


def _get(module: nnx.Module, dotted: str) -> nnx.Module:
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def build_electra(
    model_cfg: ConvBertConfig | Mapping[str, Any], electra_cfg: ElectraConfig, *, rngs: nnx.Rngs
) -> ElectraModel:
    """`ElectraModel` for the discriminator `model_cfg` (a `ConvBertConfig` or `config.model`) and the
    generator `generator_config(disc, electra_cfg.generator_fraction)` (docs/electra.md#generator-config)."""
    if not isinstance(model_cfg, ConvBertConfig):
        model_cfg = ConvBertConfig(**(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)))
    return ElectraModel(model_cfg, generator_config(model_cfg, electra_cfg.generator_fraction), rngs=rngs)


# ------------------------------------------------------------------------------------------------
# Objective


@struct.dataclass
class ElectraOutputs:
    """masked: the generator's inputs and slots; gen_logits [B,N,V] f32; sampled [B,N] int32;
    disc_input_ids [B,T] (the corrupted ids); is_fake [B,T] bool; disc_logits [B,T] f32."""

    masked: MaskedInputs
    gen_logits: Array
    sampled: Array
    disc_input_ids: Array
    is_fake: Array
    disc_logits: Array


def electra_forward(
    model: ElectraModel, batch: Mapping[str, Array], rng: Array, cfg: ElectraConfig, *, deterministic: bool
) -> ElectraOutputs:
    """Masking, generator, sampling, replacement and discriminator for a batch of int32 [B, T] arrays
    `input_ids`, `input_mask`, `segment_ids`. `rng` is split into masking, sampling, generator dropout and
    discriminator dropout keys; `deterministic` turns dropout off (masking and sampling stay random)."""
    input_ids, input_mask, segment_ids = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
    k_mask, k_sample, k_gen, k_disc = jax.random.split(rng, 4)
    masked = mask_tokens(k_mask, input_ids, input_mask, cfg)
    gen_logits = model.generator_logits(
        masked.input_ids, input_mask, segment_ids, masked.positions, dropout_rng=None if deterministic else k_gen
    )
    sampled = SAMPLERS[cfg.sampler](k_sample, gen_logits, cfg.temperature)
    disc_ids, updated = scatter_slots(input_ids, masked.positions, masked.weights > 0, sampled)
    is_fake = updated & (disc_ids != input_ids)
    disc_logits = model.discriminator_logits(
        disc_ids, input_mask, segment_ids, dropout_rng=None if deterministic else k_disc
    )
    return ElectraOutputs(
        masked=masked,
        gen_logits=gen_logits,
        sampled=sampled,
        disc_input_ids=disc_ids,
        is_fake=is_fake,
        disc_logits=disc_logits,
    )


# Each ratio metric and the count it is a mean over; `aggregate_metrics` weights batches by these counts.
METRIC_COUNTS = {
    "gen_loss": "num_masked",
    "gen_accuracy": "num_masked",
    "gen_sampled_accuracy": "num_masked",
    "disc_loss": "num_tokens",
    "disc_accuracy": "num_tokens",
    "replaced_fraction": "num_tokens",
    "disc_precision": "num_predicted_replaced",
    "disc_recall": "num_replaced",
}


def loss_normalizers(batch: Mapping[str, Array], cfg: ElectraConfig) -> dict[str, Array]:
    """The denominators of both losses over a whole batch, float32 scalars fixed before any random draw:
    num_masked = sum of `num_prediction_slots`, num_tokens = sum of input_mask. A micro-batch's loss divided by
    the whole batch's denominators is its share of the batch's loss (a ratio of sums), so gradients summed over
    micro-batches equal the gradient of the whole batch."""
    slots = num_prediction_slots(batch["input_ids"], batch["input_mask"], cfg)
    return dict(
        num_masked=jnp.sum(slots).astype(jnp.float32), num_tokens=jnp.sum(batch["input_mask"]).astype(jnp.float32)
    )


def mlm_metrics(logits: Array, masked: MaskedInputs) -> tuple[Array, dict[str, Array]]:
    """(cross-entropy summed over the weighted slots, metrics: gen_loss = that sum's mean over the slots,
    gen_accuracy (argmax), num_masked), from MLM logits [B, N, V] at the slots of `masked`."""
    w = masked.weights
    nll_sum, num_masked = losses.weighted_sum(losses.softmax_cross_entropy(logits, masked.labels), w)
    return nll_sum, dict(
        gen_loss=losses.ratio(nll_sum, num_masked, epsilon=1e-6),
        gen_accuracy=losses.ratio(jnp.sum((jnp.argmax(logits, -1) == masked.labels) * w), num_masked),
        num_masked=num_masked,
    )


def mlm_loss(
    model: ConvBertForMaskedLM,
    batch: Mapping[str, Array],
    rng: Array,
    cfg: ElectraConfig,
    *,
    deterministic: bool,
    normalizers: Mapping[str, Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """BERT-style masked language modelling of the discriminator-sized encoder, the control objective of
    ELECTRA's comparison (Clark et al. 2020, section 3.2): the same masking as the generator's input, logits at
    the masked slots only. Returns (MLM loss, `mlm_metrics` + loss); the loss divides by
    `normalizers["num_masked"]` (`loss_normalizers` of the whole batch) when given, else by this batch's."""
    k_mask, k_drop = jax.random.split(rng)
    masked = mask_tokens(k_mask, batch["input_ids"], batch["input_mask"], cfg)
    out, _ = model.body(
        masked.input_ids,
        batch["input_mask"],
        batch["segment_ids"],
        None,
        deterministic,
        None if deterministic else k_drop,
        False,
    )
    hidden = jnp.take_along_axis(out.last_hidden_state, masked.positions[..., None], axis=1)
    logits = model.generator_lm_head(
        model.generator_predictions(hidden), model.convbert.embeddings.word_embeddings.embedding[...]
    )
    nll_sum, metrics = mlm_metrics(logits, masked)
    num_masked = metrics["num_masked"] if normalizers is None else normalizers["num_masked"]
    return losses.ratio(nll_sum, num_masked, epsilon=1e-6), {"loss": metrics["gen_loss"], **metrics}


def electra_losses(
    out: ElectraOutputs, input_mask: Array, cfg: ElectraConfig, normalizers: Mapping[str, Array] | None = None
) -> tuple[Array, dict[str, Array]]:
    """(total loss, metrics) from `electra_forward`'s outputs (docs/electra.md#losses).

    total = gen_weight * MLM sum / num_masked + disc_weight * RTD sum / num_tokens, the denominators those of
    `normalizers` (`loss_normalizers` of the whole batch, for a micro-batch) or else of this batch.
    metrics (float32 scalars, over this batch): loss; gen_loss, gen_accuracy (argmax) and gen_sampled_accuracy
    over the weighted slots; disc_loss and disc_accuracy over real tokens; disc_precision / disc_recall of the
    "replaced" class on real tokens; replaced_fraction of real tokens; and the counts num_masked,
    num_tokens, num_replaced, num_predicted_replaced (see `METRIC_COUNTS`, `aggregate_metrics`).
    """
    nll_sum, mlm = mlm_metrics(out.gen_logits, out.masked)
    m = input_mask.astype(jnp.float32)
    num_tokens = jnp.sum(m)
    labels = out.is_fake.astype(jnp.float32)
    bce_sum, _ = losses.weighted_sum(losses.sigmoid_binary_cross_entropy(out.disc_logits, labels), m)
    disc_loss = losses.ratio(bce_sum, num_tokens, epsilon=1e-6)

    predicted = (out.disc_logits > 0).astype(jnp.float32) * m
    num_replaced, num_predicted = jnp.sum(labels * m), jnp.sum(predicted)
    true_positives = jnp.sum(predicted * labels)
    metrics = dict(
        loss=cfg.gen_weight * mlm["gen_loss"] + cfg.disc_weight * disc_loss,
        **mlm,
        gen_sampled_accuracy=losses.ratio(
            jnp.sum((out.sampled == out.masked.labels) * out.masked.weights), mlm["num_masked"]
        ),
        disc_loss=disc_loss,
        disc_accuracy=losses.ratio(jnp.sum((predicted == labels) * m), num_tokens),
        disc_precision=losses.ratio(true_positives, num_predicted),
        disc_recall=losses.ratio(true_positives, num_replaced),
        replaced_fraction=losses.ratio(num_replaced, num_tokens),
        num_tokens=num_tokens,
        num_replaced=num_replaced,
        num_predicted_replaced=num_predicted,
    )
    n = dict(num_masked=mlm["num_masked"], num_tokens=num_tokens) if normalizers is None else normalizers
    loss = cfg.gen_weight * losses.ratio(nll_sum, n["num_masked"], epsilon=1e-6) + cfg.disc_weight * losses.ratio(
        bce_sum, n["num_tokens"], epsilon=1e-6
    )
    return loss, metrics


def pretraining_loss(
    model: ElectraModel,
    batch: Mapping[str, Array],
    rng: Array,
    cfg: ElectraConfig,
    *,
    deterministic: bool,
    normalizers: Mapping[str, Array] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """total = gen_weight * MLM + disc_weight * RTD and the metrics of `electra_losses` (`normalizers`: the whole
    batch's `loss_normalizers` when `batch` is one of its micro-batches). Pure: use it inside `jax.jit` on a model
    rebuilt with `nnx.merge` (differentiate w.r.t. the `nnx.Param` state)."""
    out = electra_forward(model, batch, rng, cfg, deterministic=deterministic)
    return electra_losses(out, batch["input_mask"], cfg, normalizers)


# The eval AUC of the replaced-token detector: per-batch counts of the logit in fixed bins, summed over batches.
AUC_BINS = 8192
AUC_LOGIT_RANGE = (-16.0, 16.0)  # bin width 1/256; logits outside fall into the end bins


def rtd_score_histograms(disc_logits: Array, is_fake: Array, input_mask: Array) -> dict[str, Array]:
    """Counts of the discriminator logits [B, T] of real tokens in `AUC_BINS` bins over `AUC_LOGIT_RANGE`, for
    original and replaced tokens apart: disc_hist_original, disc_hist_replaced, float32 [AUC_BINS]."""
    lo, hi = AUC_LOGIT_RANGE
    bins = jnp.clip(jnp.floor((disc_logits - lo) * (AUC_BINS / (hi - lo))), 0, AUC_BINS - 1).astype(jnp.int32)
    real, fake = input_mask.astype(jnp.float32), is_fake.astype(jnp.float32)

    def count(weights):
        return jnp.zeros(AUC_BINS, jnp.float32).at[bins.ravel()].add(weights.ravel())

    return {"disc_hist_original": count(real * (1.0 - fake)), "disc_hist_replaced": count(real * fake)}


def histogram_auc(original: np.ndarray, replaced: np.ndarray) -> float:
    """ROC AUC of the "replaced" class from binned logits: the probability that a replaced token scores above an
    original one, pairs within one bin counted half (Mann-Whitney U). NaN unless both classes occur."""
    original, replaced = np.asarray(original, np.float64), np.asarray(replaced, np.float64)
    pairs = original.sum() * replaced.sum()
    below = np.cumsum(original) - original  # originals in lower bins
    return float(np.sum(replaced * (below + 0.5 * original)) / pairs) if pairs else float("nan")


def pretraining_eval_loss(
    model: ElectraModel, batch: Mapping[str, Array], rng: Array, cfg: ElectraConfig, *, deterministic: bool
) -> tuple[Array, dict[str, Array]]:
    """`pretraining_loss` whose metrics also hold `rtd_score_histograms` (the eval step's, for the AUC)."""
    out = electra_forward(model, batch, rng, cfg, deterministic=deterministic)
    loss, metrics = electra_losses(out, batch["input_mask"], cfg)
    return loss, {**metrics, **rtd_score_histograms(out.disc_logits, out.is_fake, batch["input_mask"])}


def aggregate_metrics(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Combines per-batch metrics on the host: counts are summed, ratios averaged weighted by their count
    (`METRIC_COUNTS`), `loss` is the plain mean over batches; `disc_auc` from the summed histograms of
    `pretraining_eval_loss` when present."""
    present = {k: c for k, c in METRIC_COUNTS.items() if k in metrics[0]}  # the MLM objective has no disc_*
    counts = {c: sum(float(m[c]) for m in metrics) for c in set(present.values())}
    out = {k: sum(float(m[k]) * float(m[c]) for m in metrics) / max(counts[c], 1.0) for k, c in present.items()}
    out["loss"] = sum(float(m["loss"]) for m in metrics) / max(len(metrics), 1)
    if "disc_hist_replaced" in metrics[0]:
        out["disc_auc"] = histogram_auc(
            sum(np.asarray(m["disc_hist_original"]) for m in metrics),
            sum(np.asarray(m["disc_hist_replaced"]) for m in metrics),
        )
    return {**out, **counts}
