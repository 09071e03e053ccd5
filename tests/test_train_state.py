"""The training core (`convbert.train_state`): the sharded init and its abstract twin, the donated train step
compiled ahead of time from abstract inputs, and gradient accumulation that gives the gradient of the whole
batch (a ratio of sums, not a mean of per-micro-batch ratios) for the ELECTRA objective and the fine-tuning
losses, on rows with unequal padding.

Random draws cannot be made equal across micro-batch splits (masking, sampling and dropout draw arrays shaped
like the micro-batch from its own key, and dropout masks hash the row index within it), so the accumulation
tests turn dropout off and make the ELECTRA draws deterministic: every candidate is a prediction slot
(mask_prob 1, max_predictions_per_seq = T, distinct draws), none is replaced by [MASK], and the generator
samples at temperature 1e-7 (its argmax).
"""

import os
import sys

import jax
import numpy as np
import pytest

import pretraining_setup as setup
from convbert import ConvBertForSequenceClassification, finetuning, sharding
from convbert.glue import finetune as glue
from convbert.pretraining import Pretrainer
from helpers import TINY_ENCODER

sys.path.insert(0, os.path.join(setup.REPO, "configs"))
import finetune_glue as glue_config

SPECIAL = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
T = 64
LENGTHS = np.array([64, 20, 50, 9, 33, 64, 12, 40])  # micro-batches of unequal token and slot counts


def padded_rows(seed: int = 0) -> dict[str, np.ndarray]:
    """[CLS] random ids [SEP] + padding, one row per `LENGTHS` entry: int32 ids [8, T], mask [8, T]."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(T) < LENGTHS[:, None]).astype(np.int32)
    ids = rng.integers(1000, 30000, (len(LENGTHS), T)).astype(np.int32)
    ids[:, 0] = SPECIAL["cls"]
    ids[np.arange(len(LENGTHS)), LENGTHS - 1] = SPECIAL["sep"]
    return {"ids": ids * mask, "mask": mask}


def assert_same_gradient(got, expected, rtol: float = 1e-5):
    """Per parameter: max |got - expected| <= rtol * max |expected| + 1e-10 (the floor: gradients that are zero
    but for rounding, such as the attention key biases', are ~1e-13)."""
    for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected), strict=True):
        g, e = np.asarray(g), np.asarray(e)
        err, bound = float(np.max(np.abs(g - e))), rtol * float(np.max(np.abs(e))) + 1e-10
        assert err <= bound, (jax.tree_util.keystr(path), err, bound)


# ---- pretraining: the ELECTRA objective ------------------------------------------------------------


def electra_gradients(k: int, own_denominators: bool = False):
    """(gradients, metrics) of `Pretrainer.gradients` on one device, `grad_accum_steps = k`, deterministic draws;
    `own_denominators`: each micro-batch divides by its own counts (the mean of ratios, for contrast)."""
    config = setup.tiny_config(
        grad_accum_steps=k,
        model__hidden_dropout_prob=0.0,
        model__attention_probs_dropout_prob=0.0,
        electra__mask_prob=1.0,
        electra__max_predictions_per_seq=T,
        electra__upstream_quirks=False,
        electra__mask_token_prob=0.0,
        electra__temperature=1e-7,
    )
    mesh = sharding.create_mesh({}, jax.devices()[:1])
    trainer = Pretrainer(config, mesh, SPECIAL)
    if own_denominators:
        trainer.normalizers_fn = None
    rows = padded_rows()
    batch = sharding.shard_batch(
        {"input_ids": rows["ids"], "input_mask": rows["mask"], "segment_ids": np.zeros_like(rows["ids"])}, mesh
    )
    state = trainer.init(jax.random.PRNGKey(0))
    return jax.device_get(jax.jit(trainer.gradients)(state.params, batch, jax.random.PRNGKey(1)))


@pytest.fixture(scope="module")
def electra_whole_batch():
    return electra_gradients(1)


@pytest.mark.slow
@pytest.mark.parametrize("k", [4, 2])
def test_electra_accumulation_gives_the_whole_batch_gradient(electra_whole_batch, k):
    whole, whole_metrics = electra_whole_batch
    grads, metrics = electra_gradients(k)
    slots = metrics["num_masked"]
    assert slots.shape == (k,) and len(set(slots.tolist())) == k  # micro-batches of different slot counts
    assert slots.sum() == whole_metrics["num_masked"][0] == (LENGTHS - 2).sum()  # every candidate a slot
    assert metrics["num_tokens"].sum() == LENGTHS.sum()
    assert_same_gradient(grads, whole)
    if k == 4:  # the test tells a mean of per-micro-batch ratios apart
        own, _ = electra_gradients(k, own_denominators=True)
        with pytest.raises(AssertionError):
            assert_same_gradient(jax.tree.map(lambda g: g / k, own), whole)


# ---- fine-tuning: per-example losses, summed or averaged over the batch ---------------------------------


def finetuning_trainer(k: int, reduction: str) -> finetuning.Trainer:
    """The fine-tuning Trainer of a dropout-free tiny classifier on a (data=2) mesh, batch 8."""
    config = glue_config.get_config("sst2,tiny")
    config.update(grad_accum_steps=k, loss_reduction=reduction, batch_size=8)
    model_config = TINY_ENCODER.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)

    def forward(model, batch, **kw):
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], **kw).logits

    return finetuning.Trainer(
        lambda rngs: ConvBertForSequenceClassification(model_config, rngs=rngs),
        forward,
        lambda logits, batch: glue.example_losses(logits, batch["labels"], False),
        config,
        sharding.create_mesh({"data": 2}, jax.devices()[:2]),
        total_steps=10,
        num_layers=2,
        encoder_params=None,
        copies=1,
        encode=glue.encode,
        head=glue.head,
        inputs=glue.data.FEATURES,
        encoded=("cls",),
    )


def classification_rows() -> dict[str, np.ndarray]:
    rows = padded_rows(seed=1)
    return {
        "input_ids": rows["ids"],
        "attention_mask": rows["mask"],
        "token_type_ids": np.zeros_like(rows["ids"]),
        "labels": (LENGTHS % 2).astype(np.int32),
    }


def classification_batch(trainer: finetuning.Trainer) -> dict[str, jax.Array]:
    """One copy's batch (for `gradients`)."""
    return sharding.shard_batch(classification_rows(), trainer.mesh)


@pytest.mark.slow
def test_finetuning_accumulation_gives_the_whole_batch_gradient():
    """'mean' over 4 micro-batches is the batch's mean; 'sum' over 4 is the batch's sum (8 x the mean)."""
    grads = {}
    for k, reduction in ((1, "mean"), (4, "mean"), (4, "sum")):
        trainer = finetuning_trainer(k, reduction)
        params = jax.tree.map(lambda x: x[0], trainer.init_state([0]).params)  # the one copy
        grads[k, reduction], metrics = jax.jit(trainer.gradients)(
            params, classification_batch(trainer), jax.random.PRNGKey(1)
        )
        assert metrics["loss"].shape == (k,)
    assert_same_gradient(grads[4, "mean"], grads[1, "mean"])
    assert_same_gradient(grads[4, "sum"], jax.tree.map(lambda g: len(LENGTHS) * g, grads[1, "mean"]))


@pytest.mark.slow
def test_abstract_state_and_an_ahead_of_time_compiled_train_step():
    """What `python -m convbert.aot` compiles: `train_step` lowered from `abstract_state()` and `abstract_batch`
    runs on real arrays, donates the state and keeps every array on its declared sharding."""
    trainer = finetuning_trainer(2, "mean")
    abstract = trainer.abstract_state()
    state = trainer.init_state([0])
    assert jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), abstract) == jax.tree.map(
        lambda x: (x.shape, x.dtype, x.sharding), state
    )
    rows = classification_rows()
    batch = trainer.same_batch(rows, np.arange(len(LENGTHS)), list(rows))
    compiled = trainer.train_step.lower(
        abstract, trainer.abstract_batch({k: (v.shape, v.dtype) for k, v in rows.items()})
    ).compile()
    before = jax.tree.leaves(state)
    new, metrics = compiled(state, batch)
    assert all(x.is_deleted() for x in before)  # donated
    assert new.step.tolist() == [1] and metrics["loss"].shape == (1, 2)  # [copies, micro-batches]
    assert {"grad_norm", "param_norm", "learning_rate"} <= set(metrics)
    for x, s in zip(jax.tree.leaves(new), jax.tree.leaves(trainer.state_shardings), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert trainer.eval_step(new.params, batch, None).shape == (1, len(LENGTHS), 2)
