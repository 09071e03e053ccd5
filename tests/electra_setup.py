"""Shared setup of test_masking and test_electra: the BERT vocab's special ids and random [CLS] ... [SEP] batches."""

import jax.numpy as jnp
import numpy as np

CLS, SEP, MASK, PAD = 101, 102, 103, 0


def make_batch(lengths, t, seed=0, low=104, high=256):
    """[CLS] random ids [SEP] + padding per row; int32 dict batch."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(low, high, (len(lengths), t)).astype(np.int32)
    mask = (np.arange(t) < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[:, 0] = CLS
    ids[np.arange(len(lengths)), np.asarray(lengths) - 1] = SEP
    ids = ids * mask
    return dict(input_ids=jnp.asarray(ids), input_mask=jnp.asarray(mask), segment_ids=jnp.zeros_like(ids))
