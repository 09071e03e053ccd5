"""Masking, sampling and replacement (`convbert.masking`, docs/electra.md#masking, #sampling,
#replacement-and-labels): masking statistics, special tokens and padding, budgets, duplicate merging, samplers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from electra_setup import CLS, MASK, SEP, make_batch

from convbert.config import SAMPLER_NAMES, ElectraConfig
from convbert.masking import SAMPLERS, mask_tokens, num_prediction_slots, scatter_slots

ROWS = 2000  # rows for the masking statistics


@functools.partial(jax.jit, static_argnums=3)
def jit_mask(rng, ids, mask, cfg):
    return mask_tokens(rng, ids, mask, cfg)


def distinct_positions(m):
    w, p = np.asarray(m.weights), np.asarray(m.positions)
    return [set(p[i][w[i] > 0]) for i in range(len(p))]


def test_masking_statistics_with_replacement():
    """19 draws with replacement over 126 candidates: ~17.7 distinct positions per full row
    (docs/electra.md#masking)."""
    b = make_batch([128] * ROWS, 128)
    m = jit_mask(jax.random.key(0), b["input_ids"], b["input_mask"], ElectraConfig(upstream_quirks=True))
    assert np.all(np.asarray(m.weights).sum(1) == 19)
    distinct = np.array([len(s) for s in distinct_positions(m)])
    expected = 126 * (1 - (125 / 126) ** 19)  # 17.70
    assert abs(distinct.mean() - expected) < 0.1
    assert distinct.min() < 19  # duplicates do occur
    # A drawn position is [MASK]ed if any of its draws chose [MASK]: P = 1 - 0.15^c over its c draws.
    p, ids = np.asarray(m.positions), np.asarray(m.input_ids)
    expected_masked = np.mean([sum(1 - 0.15**c for c in np.unique(p[i], return_counts=True)[1]) for i in range(ROWS)])
    assert abs((ids == MASK).sum(1).mean() - expected_masked) < 0.1


def test_masking_statistics_distinct():
    """Without quirks: 19 distinct positions (~15% of the 128 real tokens), 85% [MASK] / 15% kept."""
    b = make_batch([128] * ROWS, 128)
    ids = np.asarray(b["input_ids"])
    m = jit_mask(jax.random.key(1), b["input_ids"], b["input_mask"], ElectraConfig(upstream_quirks=False))
    assert all(len(s) == 19 for s in distinct_positions(m))
    assert abs(19 / 128 - 0.15) < 0.005
    masked_ids, p = np.asarray(m.input_ids), np.asarray(m.positions)
    at_slots = np.take_along_axis(masked_ids, p, 1)
    mask_frac = np.mean(at_slots == MASK)
    assert abs(mask_frac - 0.85) < 0.01  # 38,000 slots: standard error 0.002
    kept = at_slots != MASK
    np.testing.assert_array_equal(at_slots[kept], np.take_along_axis(ids, p, 1)[kept])
    np.testing.assert_array_equal(np.asarray(m.labels), np.take_along_axis(ids, p, 1))
    changed = masked_ids != ids
    assert changed.sum() == (at_slots == MASK).sum()  # nothing else changes


@pytest.mark.parametrize("quirks", [True, False])
def test_special_tokens_and_padding_never_masked(quirks):
    lengths = np.random.default_rng(0).integers(2, 65, 500)
    b = make_batch(lengths, 64, low=100, high=110)  # ids 100..109 include [UNK] and in-text [CLS]/[SEP]/[MASK]
    ids, mask = np.asarray(b["input_ids"]), np.asarray(b["input_mask"])
    candidate = (mask > 0) & ~np.isin(ids, [CLS, SEP, MASK])
    m = jit_mask(jax.random.key(2), b["input_ids"], b["input_mask"], ElectraConfig(upstream_quirks=quirks))
    w, p = np.asarray(m.weights), np.asarray(m.positions)
    assert np.all(np.take_along_axis(candidate, p, 1)[w > 0])
    slots = np.asarray(num_prediction_slots(b["input_ids"], b["input_mask"], ElectraConfig(upstream_quirks=quirks)))
    np.testing.assert_array_equal(slots, w.sum(1))  # known before the draws
    assert quirks or np.any(slots < np.minimum(19, np.round(lengths * 0.15)))  # rows short of candidates
    changed = np.asarray(m.input_ids) != ids
    assert not np.any(changed & ~candidate)
    assert np.any(changed & (ids == 100))  # [UNK] may be masked


@pytest.mark.parametrize("quirks", [True, False])
def test_budget_for_short_rows(quirks):
    """n = max(1, min(19, round(0.15 * sum(input_mask)))) slots (rounded half to even in float32)."""
    lengths = np.arange(3, 129)
    b = make_batch(lengths, 128)
    m = jit_mask(jax.random.key(3), b["input_ids"], b["input_mask"], ElectraConfig(upstream_quirks=quirks))
    n = np.maximum(1, np.minimum(19, np.round(lengths.astype(np.float32) * np.float32(0.15))))
    np.testing.assert_array_equal(np.asarray(m.weights).sum(1), n)
    assert n[lengths == 3] == 1 and n[lengths == 10] == 2 and n[lengths == 100] == 15
    # "[CLS] [SEP]" and all-padding rows have no candidate and so no slot.
    empty = make_batch([2, 2], 8)
    empty["input_mask"] = empty["input_mask"].at[1].set(0)
    assert (
        float(
            jit_mask(
                jax.random.key(0), empty["input_ids"], empty["input_mask"], ElectraConfig(upstream_quirks=quirks)
            ).weights.sum()
        )
        == 0
    )
    cfg = ElectraConfig(upstream_quirks=quirks)
    np.testing.assert_array_equal(num_prediction_slots(b["input_ids"], b["input_mask"], cfg), n)
    np.testing.assert_array_equal(num_prediction_slots(empty["input_ids"], empty["input_mask"], cfg), [0, 0])


def test_scatter_slots_merges_duplicates_like_upstream():
    values = jnp.full((1, 5), 5, jnp.int32)
    positions = jnp.array([[1, 1, 2, 3]])
    selected = jnp.array([[True, True, True, False]])
    new, updated = scatter_slots(values, positions, selected, jnp.array([[10, 13, 7, 99]]))
    np.testing.assert_array_equal(new, [[5, 11, 7, 5, 5]])  # (10 + 13) // 2
    np.testing.assert_array_equal(updated, [[False, True, True, False, False]])


# gumbel draws 120M Gumbel variates (~5 s on 2 cores): slow; the not-slow loop keeps the default sampler's draw
@pytest.mark.parametrize(
    "sampler", [pytest.param(s, marks=pytest.mark.slow) if s == "gumbel" else s for s in sorted(SAMPLERS)]
)
def test_samplers_draw_from_the_softmax(sampler):
    v = 600  # > 2 blocks of the inverse-CDF sampler, the last one partial
    logits = 2.0 * jax.random.normal(jax.random.key(0), (v,))
    draws = jax.jit(SAMPLERS[sampler], static_argnums=2)(
        jax.random.key(1), jnp.broadcast_to(logits, (100, 2000, v)), 0.5
    )
    counts = np.bincount(np.asarray(draws).ravel(), minlength=v)
    expected = np.asarray(jax.nn.softmax(logits / 0.5)) * draws.size
    big = expected > 20
    chi2 = np.sum((counts[big] - expected[big]) ** 2 / expected[big])
    assert chi2 < big.sum() + 5 * np.sqrt(2 * big.sum())  # mean dof, sd sqrt(2 dof)
    tail = float(expected[~big].sum())
    assert abs(counts[~big].sum() - tail) < 5 * np.sqrt(tail) + 5


def test_sampler_names_are_the_samplers():
    """`ElectraConfig` validates `sampler` against the names in convbert.config, which must be these samplers."""
    assert set(SAMPLER_NAMES) == set(SAMPLERS)
