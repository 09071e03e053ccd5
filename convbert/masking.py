"""On-device masking, sampling and replacement of ELECTRA pretraining (google-research/electra
`pretrain/pretrain_helpers.py`: `mask`, `sample_from_softmax`, `scatter_update`; docs/electra.md#masking,
#sampling, #replacement-and-labels). Static shapes (B batch, T length, N = max_predictions_per_seq, V vocab); the
objective's knobs and special ids come from an `ElectraConfig`.

1. `mask_tokens`: budget n = max(1, min(N, round(mask_prob * sum(input_mask)))), rounding half to even in float32
   as `tf.round`; candidates = real tokens that are not [CLS]/[SEP]/[MASK]; N position draws, uniform over the
   candidates: with `upstream_quirks` independent draws WITH replacement (`tf.random.categorical`), otherwise N
   distinct positions (top-k of uniform scores). Slots beyond n get weight 0. Each valid slot is replaced by [MASK]
   with probability `mask_token_prob`, else left unchanged (no random-token replacement); a position drawn twice is
   masked if any of its draws is.
2. Sampling (`SAMPLERS`): one id per slot from softmax(stop_gradient(logits) / temperature). Upstream draws by
   Gumbel-max, argmax(logits / T + g) with g = -log(-log(u + 1e-9) + 1e-9), one uniform per vocabulary entry
   (`gumbel_sample`, exactly that). `inverse_cdf_sample` (the default, `ElectraConfig.sampler`) is a deliberate
   deviation: it draws from the same distribution (up to float32 rounding; the epsilons of the Gumbel noise only
   clip events of probability < 1e-7) with ONE uniform per slot, by a two-level inverse CDF. The random numbers
   differ, not the objective; on CPU the Gumbel noise over [B, 19, 30522] is a noticeable part of a small-model
   step (`benchmarks/bench_pretrain.py --runs "sampler=gumbel;torch"` compares).
3. Replacement (`scatter_slots`): the sampled ids overwrite every drawn position of the ORIGINAL ids (also the ones
   left unmasked). Several draws of one position are merged as upstream's `scatter_update` does: sum of the sampled
   ids integer-divided by the number of draws (so two different samples give an arbitrary floor((a + b) / 2)).

Two deviations from upstream, for rows that real data never produces:
* Upstream zeroes the positions of unused slots (weight 0) and `scatter_update` ignores position 0, which
  also means a valid draw of position 0 is never masked or replaced. Here unused slots are dropped by their
  weight instead, so a row whose position 0 is a candidate (no leading [CLS]) is treated like any other
  position. With [CLS] at position 0 (always, docs/electra.md#example-builder) both are identical.
* A row with no candidate (e.g. "[CLS] [SEP]" or all padding) gets no prediction slot (all weights 0);
  upstream samples from NaN probabilities there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from convbert.config import ElectraConfig

Array = jax.Array


@struct.dataclass
class MaskedInputs:
    """input_ids [B,T] generator input; positions, labels [B,N] int32 (0 in unused slots); weights [B,N] f32."""

    input_ids: Array
    positions: Array
    labels: Array
    weights: Array


def mask_budget(input_mask: Array, cfg: ElectraConfig) -> Array:
    """n = max(1, min(N, round(mask_prob * sum(input_mask)))) per row, [B] int32 (float32, half to even)."""
    num_tokens = jnp.sum(input_mask, axis=-1).astype(jnp.float32)
    n = jnp.round(num_tokens * jnp.float32(cfg.mask_prob)).astype(jnp.int32)
    return jnp.maximum(1, jnp.minimum(cfg.max_predictions_per_seq, n))


def scatter_slots(values: Array, positions: Array, selected: Array, updates: Array) -> tuple[Array, Array]:
    """Upstream `scatter_update` on ids: values [B,T], positions/selected/updates [B,N].

    Selected slots write their update to their position; k slots hitting one position write the sum of their
    updates integer-divided by k. Returns (new values [B,T], updated mask [B,T] bool).
    """
    hits = (positions[..., None] == jnp.arange(values.shape[-1])) & selected[..., None]  # [B,N,T]
    count = jnp.sum(hits, axis=1, dtype=jnp.int32)
    total = jnp.sum(jnp.where(hits, updates[..., None], 0), axis=1, dtype=jnp.int32)
    updated = count > 0
    return jnp.where(updated, total // jnp.maximum(count, 1), values), updated


def mask_candidates(input_ids: Array, input_mask: Array, cfg: ElectraConfig) -> Array:
    """[B, T] bool: the positions a prediction slot may draw, real tokens other than [CLS], [SEP], [MASK]."""
    return (input_mask > 0) & ~jnp.isin(input_ids, jnp.array([cfg.cls_id, cfg.sep_id, cfg.mask_id]))


def num_prediction_slots(input_ids: Array, input_mask: Array, cfg: ElectraConfig) -> Array:
    """[B] int32: the slots `mask_tokens` fills per row (the sum of its `weights`), known before any draw. With
    `upstream_quirks` every one of the `mask_budget` draws lands on a candidate (none without a candidate);
    distinct draws stop at the number of candidates."""
    num_candidates = jnp.sum(mask_candidates(input_ids, input_mask, cfg), axis=-1, dtype=jnp.int32)
    budget = mask_budget(input_mask, cfg)
    if cfg.upstream_quirks:
        return jnp.where(num_candidates > 0, budget, 0)
    return jnp.minimum(budget, num_candidates)


def mask_tokens(rng: Array, input_ids: Array, input_mask: Array, cfg: ElectraConfig) -> MaskedInputs:
    """Draws the prediction slots and builds the generator input (upstream `mask`; docs/electra.md#masking; see the
    module doc)."""
    b, t = input_ids.shape
    n_max = cfg.max_predictions_per_seq
    k_pos, k_mask = jax.random.split(rng)
    candidates = mask_candidates(input_ids, input_mask, cfg)
    if cfg.upstream_quirks:
        logits = jnp.where(candidates, 0.0, -jnp.inf)[:, None, :]
        positions = jax.random.categorical(k_pos, logits, axis=-1, shape=(b, n_max))
    else:  # top-k of uniform scores; pad the row so that k <= length
        scores = jnp.where(candidates, jax.random.uniform(k_pos, (b, t)), -1.0)
        scores = jnp.pad(scores, ((0, 0), (0, max(0, n_max - t))), constant_values=-2.0)
        positions = jax.lax.top_k(scores, n_max)[1]
    in_row = positions < t
    positions = jnp.where(in_row, positions, 0).astype(jnp.int32)
    valid = (
        in_row
        & (jnp.arange(n_max) < mask_budget(input_mask, cfg)[:, None])
        & jnp.take_along_axis(candidates, positions, axis=1)
    )
    positions = jnp.where(valid, positions, 0)
    labels = jnp.where(valid, jnp.take_along_axis(input_ids, positions, axis=1), 0)
    to_mask = valid & (jax.random.uniform(k_mask, (b, n_max)) < cfg.mask_token_prob)
    masked_ids, _ = scatter_slots(input_ids, positions, to_mask, jnp.full((b, n_max), cfg.mask_id, jnp.int32))
    return MaskedInputs(input_ids=masked_ids, positions=positions, labels=labels, weights=valid.astype(jnp.float32))


def gumbel_sample(rng: Array, logits: Array, temperature: float = 1.0) -> Array:
    """argmax(logits / T + g), g = -log(-log(u + 1e-9) + 1e-9), no gradient (upstream `sample_from_softmax`;
    docs/electra.md#sampling). [..., V] -> [...]."""
    u = jax.random.uniform(rng, logits.shape, jnp.float32)
    gumbel = -jnp.log(-jnp.log(u + 1e-9) + 1e-9)
    return jnp.argmax(jax.lax.stop_gradient(logits) / temperature + gumbel, axis=-1).astype(jnp.int32)


def inverse_cdf_sample(rng: Array, logits: Array, temperature: float = 1.0, block: int = 256) -> Array:
    """A sample of softmax(logits / T) by inverse CDF in two levels (blocks of `block` ids, then the ids of the
    chosen block): one uniform per row instead of V, same distribution as `gumbel_sample` up to float32
    rounding. No gradient. [..., V] -> [...]."""
    x = jax.lax.stop_gradient(logits).astype(jnp.float32) / temperature
    *lead, v = x.shape
    nb = -(-v // block)
    p = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    p = jnp.pad(p, [(0, 0)] * len(lead) + [(0, nb * block - v)]).reshape(*lead, nb, block)
    block_sums = jnp.sum(p, axis=-1)
    block_cdf = jnp.cumsum(block_sums, axis=-1)
    u = (1.0 - jax.random.uniform(rng, tuple(lead))) * block_cdf[..., -1]  # in (0, total]
    chosen = jnp.sum(block_cdf < u[..., None], axis=-1)
    rest = u - jnp.take_along_axis(block_cdf - block_sums, chosen[..., None], axis=-1)[..., 0]
    within = jnp.cumsum(jnp.take_along_axis(p, chosen[..., None, None], axis=-2)[..., 0, :], axis=-1)
    return jnp.minimum(chosen * block + jnp.sum(within < rest[..., None], axis=-1), v - 1).astype(jnp.int32)


SAMPLERS = {"gumbel": gumbel_sample, "inverse_cdf": inverse_cdf_sample}
