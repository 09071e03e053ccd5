"""The original AdamW variant, schedule and layer-wise multipliers (docs/electra.md#optimizer,
docs/recipes.md#layer-wise-learning-rate-decay)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convbert import ConvBertForSequenceClassification, optim
from convbert.config import size_config


def _flat(tree):
    return {optim.path_names(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def abstract_params():
    model = nnx.eval_shape(lambda: ConvBertForSequenceClassification(size_config("small"), rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)


def test_schedule_warmup_multiplies_decay():
    sched = optim.warmup_linear_decay(1e-3, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(sched(0), 0.0)
    np.testing.assert_allclose(sched(5), 1e-3 * (1 - 5 / 100) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(sched(10), 1e-3 * 0.9, rtol=1e-6)  # peak actually reached: lr (1 - w / T)
    np.testing.assert_allclose(sched(60), 1e-3 * 0.4, rtol=1e-6)
    np.testing.assert_allclose(sched(100), 0.0, atol=1e-12)
    np.testing.assert_allclose(sched(150), 0.0, atol=1e-12)


def test_adam_without_bias_correction_matches_numpy():
    params = {"dense": {"kernel": jnp.array([1.0, -2.0, 3.0]), "bias": jnp.array([0.5, 0.5, 0.5])}}
    lr, wd, eps = 0.1, 0.01, 1e-6
    tx = optim.electra_adamw(lr, weight_decay=wd, eps=eps, clip_norm=None, params=params)
    state = tx.init(params)
    p = {k: np.asarray(v, np.float64) for k, v in params["dense"].items()}
    m = {k: np.zeros(3) for k in p}
    v = {k: np.zeros(3) for k in p}
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = {k: rng.normal(size=3) for k in p}
        grads = {"dense": {k: jnp.asarray(g[k], jnp.float32) for k in p}}
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda a, u: a + u, params, updates)
        for k in p:
            m[k] = 0.9 * m[k] + 0.1 * g[k]
            v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
            step = m[k] / (np.sqrt(v[k]) + eps) + (wd * p[k] if k == "kernel" else 0.0)
            p[k] = p[k] - lr * step
    for k in p:
        np.testing.assert_allclose(params["dense"][k], p[k], rtol=1e-5)


def test_global_norm_clip_before_adam():
    params = {"w": jnp.zeros(4)}
    tx = optim.electra_adamw(1.0, weight_decay=0.0, clip_norm=1.0, b1=0.0, b2=0.0, eps=0.0)
    # With b1 = b2 = 0 the Adam step is sign(g); clipping must not change the direction.
    updates, _ = tx.update({"w": jnp.array([300.0, -400.0, 0.0, 0.0])}, tx.init(params))
    np.testing.assert_allclose(updates["w"][:2], [-1.0, 1.0], rtol=1e-5)


def test_weight_decay_mask_by_name(abstract_params):
    mask = _flat(optim.weight_decay_mask(abstract_params))
    decayed = {k[:-1] for k, v in mask.items() if v}
    not_decayed = {k[:-1] for k, v in mask.items() if not v}
    assert ("convbert", "embeddings", "word_embeddings", "embedding") in decayed
    assert ("convbert", "encoder", "layer", "0", "attention", "self", "query", "kernel") in decayed
    assert ("convbert", "encoder", "layer", "0", "attention", "self", "key_conv_attn_layer", "bias") in not_decayed
    assert ("convbert", "embeddings", "LayerNorm", "scale") in not_decayed
    assert all("LayerNorm" in k or k[-1] == "bias" for k in not_decayed)


def test_layerwise_multipliers_follow_the_original(abstract_params):
    mult = _flat(optim.layerwise_lr_multipliers(abstract_params, num_layers=12, decay=0.8))
    get = lambda *path: next(v for k, v in mult.items() if k[: len(path)] == path)
    np.testing.assert_allclose(get("convbert", "embeddings", "word_embeddings"), 0.8**14)
    np.testing.assert_allclose(get("convbert", "embeddings_project"), 0.8**14)
    np.testing.assert_allclose(get("convbert", "encoder", "layer", "0"), 0.8**13)
    np.testing.assert_allclose(get("convbert", "encoder", "layer", "11"), 0.8**2)
    np.testing.assert_allclose(get("classifier", "out_proj"), 1.0)


def test_layerwise_multipliers_of_stacked_layers():
    """A scan_layers model's stacked layer parameters [L, ...] get multipliers [L, 1, ...]: layer i's value of the
    plain model, broadcast over the parameter; everything else as in the plain model."""

    def multipliers(scan_layers):
        config = size_config("small", num_hidden_layers=3, scan_layers=scan_layers)
        model = nnx.eval_shape(lambda: ConvBertForSequenceClassification(config, rngs=nnx.Rngs(0)))
        flat = _flat(optim.layerwise_lr_multipliers(nnx.state(model, nnx.Param), num_layers=3, decay=0.8))
        return {k[:-1]: v for k, v in flat.items()}  # without the Variable's value key

    plain, stacked = multipliers(False), multipliers(True)
    kernel = stacked[("convbert", "encoder", "layer", "attention", "self", "query", "kernel")]
    assert kernel.shape == (3, 1, 1)
    for path, m in stacked.items():
        if "layer" in path:
            at = path.index("layer") + 1
            np.testing.assert_allclose(m.ravel(), [plain[path[:at] + (str(i),) + path[at:]] for i in range(3)])
        else:
            assert m == plain[path]
    np.testing.assert_allclose((jnp.ones((3, 256, 128)) * kernel)[:, 0, 0], 0.8 ** (4 - np.arange(3)), rtol=1e-6)
