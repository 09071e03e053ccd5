"""ELECTRA objective (docs/electra.md): model structure, replaced-token labels, losses, gradient flow, tree mode,
export, metrics. Masking and sampling: test_masking.py."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from electra_setup import CLS, MASK, PAD, SEP, make_batch
from flax import nnx

from configs.pretrain import get_config
from convbert.config import SPECIAL_ID_FIELDS, ConvBertConfig, ElectraConfig
from convbert.electra import (
    aggregate_metrics,
    build_electra,
    electra_forward,
    histogram_auc,
    loss_normalizers,
    pretraining_eval_loss,
    pretraining_loss,
    rtd_score_histograms,
)

DISC = ConvBertConfig(
    vocab_size=256,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    embedding_size=8,
    max_position_embeddings=64,
)


@pytest.fixture(scope="module")
def model():
    return build_electra(DISC, ElectraConfig(generator_fraction=0.5), rngs=nnx.Rngs(0))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def jit_run(state, batch, rng, cfg, graphdef, fn=pretraining_loss, deterministic=True):
    return fn(nnx.merge(graphdef, state), batch, rng, cfg, deterministic=deterministic)


def test_model_structure(model):
    assert model.gen_config.hidden_size == 16
    # separate projections (docs/electra.md#shared-embeddings)
    assert model.generator.embeddings_project.kernel.shape == (8, 16)
    assert model.discriminator.embeddings_project.kernel.shape == (8, 32)
    assert not hasattr(model.generator, "embeddings") and not hasattr(model.discriminator, "embeddings")
    with pytest.raises(ValueError, match="share the embeddings"):
        from convbert.electra import ElectraModel

        ElectraModel(DISC, DISC.replace(embedding_size=12), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("quirks", [True, False])
def test_rtd_labels_with_a_certain_generator(model, quirks):
    """A generator that always samples token x: real where the original is x, fake elsewhere
    (docs/electra.md#replacement-and-labels)."""
    model = nnx.clone(model)
    x = 200
    model.generator_lm_head.bias[...] = jnp.zeros(DISC.vocab_size).at[x].set(1e4)
    cfg = ElectraConfig(upstream_quirks=quirks)
    b = make_batch([40] * 8, 48)
    ids = np.array(b["input_ids"])
    ids[:4] = np.where(np.isin(ids[:4], [CLS, SEP, PAD]), ids[:4], x)  # rows 0-3 consist of x only
    b["input_ids"] = jnp.asarray(ids)
    graphdef, state = nnx.split(model)
    out = jit_run(state, b, jax.random.key(4), cfg, graphdef, electra_forward)
    assert np.all(np.asarray(out.sampled) == x)
    drawn = np.zeros(ids.shape, bool)
    w, p = np.asarray(out.masked.weights), np.asarray(out.masked.positions)
    for i in range(len(ids)):
        drawn[i, p[i][w[i] > 0]] = True
    disc_ids, is_fake = np.asarray(out.disc_input_ids), np.asarray(out.is_fake)
    np.testing.assert_array_equal(disc_ids, np.where(drawn, x, ids))  # sampled ids overwrite every drawn position
    assert not is_fake[:4].any()  # correctly sampled tokens are real
    np.testing.assert_array_equal(is_fake[4:], drawn[4:] & (ids[4:] != x))
    _, metrics = jit_run(state, b, jax.random.key(4), cfg, graphdef)
    assert float(metrics["gen_sampled_accuracy"]) == pytest.approx(np.mean(ids[np.where(drawn)] == x), abs=0.05)


def test_loss_weights(model):
    b = make_batch([30, 48, 20, 48], 48)
    graphdef, state = nnx.split(model)
    for gen_w, disc_w in ((1.0, 50.0), (2.0, 3.0)):
        cfg = ElectraConfig(gen_weight=gen_w, disc_weight=disc_w)
        loss, m = jit_run(state, b, jax.random.key(5), cfg, graphdef)
        assert float(loss) == pytest.approx(gen_w * float(m["gen_loss"]) + disc_w * float(m["disc_loss"]), rel=1e-5)
    assert float(m["num_tokens"]) == 146 and float(m["replaced_fraction"]) == pytest.approx(
        float(m["num_replaced"]) / 146
    )


def test_micro_batch_losses_over_the_whole_batch_denominators_add_up_to_the_batch_loss(model):
    """With the whole batch's `loss_normalizers`, the losses of the micro-batches sum to the batch's loss (draws made
    deterministic: every candidate a slot, no [MASK], argmax sampling; no dropout). The gradients:
    tests/test_train_state.py."""
    cfg = ElectraConfig(
        mask_prob=1.0, max_predictions_per_seq=48, upstream_quirks=False, mask_token_prob=0.0, temperature=1e-7
    )
    b = make_batch([48, 10, 40, 7], 48)
    graphdef, state = nnx.split(model)

    @jax.jit
    def loss(batch, normalizers):
        return pretraining_loss(
            nnx.merge(graphdef, state), batch, jax.random.key(8), cfg, deterministic=True, normalizers=normalizers
        )

    whole, metrics = loss(b, None)
    normalizers = loss_normalizers(b, cfg)
    assert float(normalizers["num_masked"]) == float(metrics["num_masked"]) == 46 + 8 + 38 + 5
    assert float(normalizers["num_tokens"]) == float(metrics["num_tokens"]) == 105
    halves = [jax.tree.map(lambda x, rows=rows: x[np.array(rows)], b) for rows in ([0, 2], [1, 3])]
    assert float(sum(loss(h, normalizers)[0] for h in halves)) == pytest.approx(float(whole), rel=1e-5)


def grads_by_part(model, cfg, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grad(params):
        return jax.grad(
            lambda p: pretraining_loss(
                nnx.merge(graphdef, p, rest), batch, jax.random.key(6), cfg, deterministic=False
            )[0]
        )(params)

    norms = {}
    for path, g in nnx.to_flat_state(grad(params)):
        part = "generator" if str(path[0]).startswith("generator") else str(path[0])
        part = "discriminator" if part.startswith("discriminator") else part
        norms[part] = norms.get(part, 0.0) + float(jnp.sum(jnp.square(g[...])))
        if path[:2] == ("embeddings", "word_embeddings"):
            norms["word_embeddings"] = float(jnp.sum(jnp.square(g[...])))
    return norms


@pytest.mark.slow
def test_discriminator_loss_does_not_reach_the_generator(model):
    b = make_batch([48, 40, 33, 48], 48)
    disc_only = grads_by_part(model, ElectraConfig(gen_weight=0.0, disc_weight=50.0), b)
    assert disc_only["generator"] == 0.0  # sampling is stop_gradient / argmax
    assert disc_only["discriminator"] > 0 and disc_only["word_embeddings"] > 0
    gen_only = grads_by_part(model, ElectraConfig(gen_weight=1.0, disc_weight=0.0), b)
    assert gen_only["discriminator"] == 0.0
    assert gen_only["generator"] > 0 and gen_only["word_embeddings"] > 0  # shared table: gradient from both


@pytest.mark.slow
def test_tree_mode_split_merge_and_jit(model):
    b = make_batch([48, 40], 48)
    cfg = ElectraConfig()
    graph_graphdef, state = nnx.split(model)
    expected, _ = jit_run(state, b, jax.random.key(7), cfg, graph_graphdef, deterministic=False)
    with nnx.set_graph_mode(False):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # raises on shared references

        @jax.jit
        def step(params, rest, batch, rng):
            def loss_fn(p):
                return pretraining_loss(nnx.merge(graphdef, p, rest), batch, rng, cfg, deterministic=False)

            return jax.value_and_grad(loss_fn, has_aux=True)(params)

        (loss, _), grads = step(params, rest, b, jax.random.key(7))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert all(np.isfinite(np.asarray(g[...])).all() for _, g in nnx.to_flat_state(grads))


@pytest.mark.slow
def test_export_hf_shaped_models(model):
    b = make_batch([48, 30], 48)
    disc = model.discriminator_model()
    np.testing.assert_allclose(
        disc(b["input_ids"], b["input_mask"], b["segment_ids"]).logits,
        model.discriminator_logits(b["input_ids"], b["input_mask"], b["segment_ids"]),
        atol=1e-5,
    )
    gen = model.generator_model()
    positions = jnp.array([[1, 5, 9], [2, 3, 29]])
    full = gen(b["input_ids"], b["input_mask"], b["segment_ids"]).logits
    np.testing.assert_allclose(
        jnp.take_along_axis(full, positions[..., None], 1),
        model.generator_logits(b["input_ids"], b["input_mask"], b["segment_ids"], positions),
        atol=1e-4,
    )
    word = disc.convbert.embeddings.word_embeddings.embedding
    assert word[...] is not model.embeddings.word_embeddings.embedding[...]  # copies survive buffer donation


def test_config_from_pretrain_config():
    class Tok:
        mask_id, cls_id, sep_id, pad_id = 4, 2, 3, 0

    c = get_config("small").electra
    cfg = ElectraConfig.from_config(c, Tok())
    assert (cfg.mask_id, cfg.cls_id, cfg.max_predictions_per_seq, cfg.disc_weight) == (4, 2, 19, 50.0)
    cfg = ElectraConfig.from_config(c, {"mask": 7, "cls": 5, "sep": 6, "pad": 1, "unk": 9})
    assert (cfg.mask_id, cfg.sep_id, cfg.pad_id) == (7, 6, 1)
    assert ElectraConfig.from_config(c).mask_id == MASK
    # every objective knob except the tokenizer's ids is a config key
    fields = {f.name for f in dataclasses.fields(ElectraConfig)} - set(SPECIAL_ID_FIELDS)
    assert fields <= set(c.keys()), fields - set(c.keys())


def test_aggregate_metrics():
    a = dict(
        loss=2.0,
        gen_loss=1.0,
        gen_accuracy=0.5,
        gen_sampled_accuracy=0.2,
        disc_loss=0.1,
        disc_accuracy=0.9,
        disc_precision=1.0,
        disc_recall=0.5,
        replaced_fraction=0.1,
        num_masked=10.0,
        num_tokens=100.0,
        num_replaced=10.0,
        num_predicted_replaced=5.0,
    )
    b = dict(a, loss=4.0, gen_accuracy=1.0, num_masked=30.0, disc_precision=0.0, num_predicted_replaced=0.0)
    agg = aggregate_metrics([a, b])
    assert agg["gen_accuracy"] == pytest.approx((0.5 * 10 + 30) / 40)
    assert agg["disc_precision"] == 1.0 and agg["loss"] == 3.0 and agg["num_masked"] == 40


def test_histogram_auc_is_the_roc_auc_up_to_the_bin_width():
    """Binned AUC (pairs within a bin count half) against scikit-learn's exact ROC AUC of the same logits."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for spread in (0.05, 2.0):  # an untrained discriminator's logits barely spread; a trained one's do
        labels = rng.random((16, 64)) < 0.15
        logits = -2.0 + spread * (rng.standard_normal((16, 64)) + 0.8 * labels)
        mask = (np.arange(64) < rng.integers(20, 65, (16, 1))).astype(np.int32)
        hist = rtd_score_histograms(jnp.asarray(logits, jnp.float32), jnp.asarray(labels), jnp.asarray(mask))
        real = mask > 0
        assert float(hist["disc_hist_original"].sum()) == np.sum(real & ~labels)
        assert float(hist["disc_hist_replaced"].sum()) == np.sum(real & labels)
        expected = roc_auc_score(labels[real], logits[real])
        assert histogram_auc(hist["disc_hist_original"], hist["disc_hist_replaced"]) == pytest.approx(
            expected, abs=2e-3
        )
    assert np.isnan(histogram_auc(np.ones(4), np.zeros(4)))


@pytest.mark.slow
def test_eval_loss_adds_the_histograms_aggregated_into_the_auc(model):
    cfg = ElectraConfig()
    metrics, labels = [], []
    for i in range(3):
        b, rng = make_batch([48, 30, 40, 48], 48, seed=i), jax.random.key(20 + i)
        _, m = pretraining_eval_loss(model, b, rng, cfg, deterministic=True)
        _, plain = pretraining_loss(model, b, rng, cfg, deterministic=True)
        assert {k: float(v) for k, v in plain.items()} == {k: float(m[k]) for k in plain}
        out = electra_forward(model, b, rng, cfg, deterministic=True)
        labels.append(np.asarray(out.is_fake)[np.asarray(b["input_mask"]) > 0])
        metrics.append(m)
    original = sum(np.asarray(m["disc_hist_original"]) for m in metrics)
    replaced = sum(np.asarray(m["disc_hist_replaced"]) for m in metrics)
    assert original.sum() + replaced.sum() == sum(len(x) for x in labels)
    assert replaced.sum() == sum(x.sum() for x in labels) > 0
    assert aggregate_metrics(metrics)["disc_auc"] == histogram_auc(original, replaced)
    assert "disc_auc" not in aggregate_metrics([{k: m[k] for k in plain} for m in metrics])
