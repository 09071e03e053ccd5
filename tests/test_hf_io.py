"""Parity with transformers' ConvBERT in both directions, checkpoint forms and loader errors
(docs/checkpoints.md#name-map)."""

import json
import logging
import os
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import convbert
from convbert import ConvBertConfig, hf_io
from helpers import randomize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
B, T = 3, 16
LENGTHS = (16, 11, 6)  # real padding in two rows
TINY = dict(
    vocab_size=1000,
    embedding_size=32,
    hidden_size=64,
    num_attention_heads=4,
    intermediate_size=128,
    num_hidden_layers=2,
    num_groups=2,
)
SHAPES = {
    "small": dict(
        vocab_size=1000,
        embedding_size=128,
        hidden_size=256,
        num_attention_heads=4,
        intermediate_size=1024,
        num_hidden_layers=2,
    ),
    "medium_small": dict(
        vocab_size=1000,
        embedding_size=128,
        hidden_size=384,
        num_attention_heads=8,
        intermediate_size=1536,
        num_groups=2,
        num_hidden_layers=2,
    ),
    "base": dict(
        vocab_size=1000,
        embedding_size=768,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        num_hidden_layers=2,
    ),
}
HEADS = {  # class name -> (extra config, output fields)
    "ConvBertModel": ({}, ("last_hidden_state",)),
    "ConvBertForMaskedLM": ({}, ("logits",)),
    "ConvBertForSequenceClassification": ({"num_labels": 3}, ("logits",)),
    "ConvBertForMultipleChoice": ({}, ("logits",)),
    "ConvBertForTokenClassification": ({"num_labels": 5}, ("logits",)),
    "ConvBertForQuestionAnswering": ({}, ("start_logits", "end_logits")),
}


def make_inputs(multiple_choice=False, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(T)[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
    ids = rng.integers(1, TINY["vocab_size"], (B, T)) * mask
    types = (np.arange(T)[None] >= np.array(LENGTHS)[:, None] // 2) * mask
    arrays = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if multiple_choice:  # [B, 3 choices, T]: shift the ids per choice
        arrays = {k: np.stack([v, v, v], 1) for k, v in arrays.items()}
        arrays["input_ids"] = np.where(
            arrays["attention_mask"] > 0,
            (arrays["input_ids"] + np.arange(3)[None, :, None]) % TINY["vocab_size"] + 1,
            0,
        )
    return arrays


def max_diffs(ours, hf, name, fields):
    """{field: max abs diff} between our model and the transformers model on the padded batch."""
    inputs = make_inputs(name == "ConvBertForMultipleChoice")
    out = ours(**{k: jnp.asarray(v) for k, v in inputs.items()})
    with torch.no_grad():
        ref = hf(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    return {f: float(np.max(np.abs(np.asarray(getattr(out, f)) - getattr(ref, f).numpy()))) for f in fields}


def perturb_hf(model, seed=0):
    """Random weights everywhere (biases and LayerNorm too), so layout errors cannot hide behind zeros."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def random_ours(name, config, seed=0):
    """Our model with random weights everywhere (built abstractly, filled from NumPy; stacked layers get their
    own draws)."""
    return randomize(nnx.eval_shape(lambda: getattr(convbert, name)(ConvBertConfig(**config), rngs=nnx.Rngs(0))), seed)


def hf_model(name, seed=0, **config):
    cfg = transformers.ConvBertConfig(pad_token_id=0, **config)
    torch.manual_seed(seed)
    return perturb_hf(getattr(transformers, name)(cfg), seed)


def check_both_directions(tmp_path, name, config, **runtime):
    """HF random -> save -> ours.from_pretrained; ours random -> save -> transformers.from_pretrained. `runtime`:
    our models' `RUNTIME_FIELDS` (e.g. scan_layers=True)."""
    fields = HEADS[name][1]
    hf = hf_model(name, **config)
    hf.save_pretrained(tmp_path / "hf")
    ours = getattr(convbert, name).from_pretrained(str(tmp_path / "hf"), **runtime)
    assert all(getattr(ours.config, k) == v for k, v in runtime.items())
    d1 = max_diffs(ours, hf, name, fields)

    ours = random_ours(name, {**config, **runtime}, seed=1)
    files = ours.save_pretrained(str(tmp_path / "ours"))
    assert sorted(os.path.basename(f) for f in files) == ["config.json", "model.safetensors"]
    hf, info = getattr(transformers, name).from_pretrained(str(tmp_path / "ours"), output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    d2 = max_diffs(ours, hf.eval(), name, fields)
    print(f"\n{name} {config}: hf->ours {d1}, ours->hf {d2}")
    for d in (d1, d2):
        assert max(d.values()) <= TOL, d


@pytest.mark.parametrize(
    "shape, scan_layers",
    [("small", False), ("medium_small", False), ("small", True), pytest.param("base", False, marks=pytest.mark.slow)],
)
def test_parity_sizes(tmp_path, shape, scan_layers):
    """Also a scan_layers model: loading stacks transformers' per-layer weights, saving splits them."""
    check_both_directions(tmp_path, "ConvBertModel", SHAPES[shape], scan_layers=scan_layers)


@pytest.mark.parametrize("changes", [{}, dict(conv_type="lconv")])  # model.safetensors; convbert_jax.safetensors
def test_scanned_and_plain_models_read_each_others_files(tmp_path, changes):
    """A scan_layers model saves the files a plain one does and loads them back either way: the same parameters,
    the same outputs."""
    config = {**TINY, "num_hidden_layers": 3, "num_labels": 3, **changes}
    inputs = {k: jnp.asarray(v) for k, v in make_inputs().items()}
    for saved, loaded in ((True, False), (False, True)):
        model = random_ours("ConvBertForSequenceClassification", {**config, "scan_layers": saved}, seed=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lconv: the native file (tested above)
            files = model.save_pretrained(str(tmp_path / str(saved)))
        assert "scan_layers" not in json.loads(Path(files[0]).read_text())
        back = convbert.ConvBertForSequenceClassification.from_pretrained(
            str(tmp_path / str(saved)), scan_layers=loaded
        )
        assert back.config.scan_layers == loaded
        ours, theirs = (
            hf_io.split_stacked({p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(m, nnx.Param))})
            for m in (model, back)
        )
        assert ours.keys() == theirs.keys() and all(np.array_equal(ours[p], theirs[p]) for p in ours)
        np.testing.assert_allclose(back(**inputs).logits, model(**inputs).logits, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(HEADS))
def test_parity_heads(tmp_path, name):
    check_both_directions(tmp_path, name, {**TINY, **HEADS[name][0]})


def test_parity_regression_head(tmp_path):
    check_both_directions(tmp_path, "ConvBertForSequenceClassification", {**TINY, "num_labels": 1})


def loss_labels(name, num_labels):
    """Labels for `name`'s loss, with ignored entries: -100 tokens, a span position past the end (clamped to T)."""
    rng = np.random.default_rng(3)
    mask = make_inputs()["attention_mask"]
    if name in ("ConvBertForMaskedLM", "ConvBertForTokenClassification"):
        high = TINY["vocab_size"] if name == "ConvBertForMaskedLM" else num_labels
        return {"labels": np.where((mask > 0) & (rng.random((B, T)) < 0.6), rng.integers(0, high, (B, T)), -100)}
    if name == "ConvBertForQuestionAnswering":
        return {"start_positions": np.array([2, T + 5, 0]), "end_positions": np.array([5, 7, T])}
    if num_labels == 1:
        return {"labels": rng.standard_normal(B).astype(np.float32)}
    return {"labels": rng.integers(0, 3 if name == "ConvBertForMultipleChoice" else num_labels, B)}


@pytest.mark.parametrize(
    "name, num_labels",
    [(n, HEADS[n][0].get("num_labels", 2)) for n in list(HEADS)[1:]] + [("ConvBertForSequenceClassification", 1)],
)
def test_loss_parity(tmp_path, name, num_labels):
    """The heads' losses (cross-entropy with transformers' ignore rules, MSE for regression) equal transformers'."""
    hf = hf_model(name, **TINY, num_labels=num_labels)
    hf.save_pretrained(tmp_path)
    ours = getattr(convbert, name).from_pretrained(str(tmp_path))
    inputs, labels = make_inputs(name == "ConvBertForMultipleChoice"), loss_labels(name, num_labels)
    loss = ours(**{k: jnp.asarray(v) for k, v in {**inputs, **labels}.items()}).loss
    with torch.no_grad():
        ref = hf(**{k: torch.as_tensor(v) for k, v in {**inputs, **labels}.items()}).loss
    assert abs(float(loss) - float(ref)) <= TOL * max(1.0, abs(float(ref))), (float(loss), float(ref))


def test_pytorch_bin_with_buffers(tmp_path):
    hf = hf_model("ConvBertForMaskedLM", **TINY)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.state_dict())  # holds the tied generator_lm_head.weight
    state["convbert.embeddings.position_ids"] = torch.arange(512)[None]  # buffer of older checkpoints
    torch.save(state, tmp_path / hf_io.PT_WEIGHTS_NAME)
    ours = convbert.ConvBertForMaskedLM.from_pretrained(str(tmp_path))
    assert max_diffs(ours, hf, "ConvBertForMaskedLM", ("logits",))["logits"] <= TOL

    state["generator_lm_head.weight"] = state["generator_lm_head.weight"] + 1.0
    torch.save(state, tmp_path / hf_io.PT_WEIGHTS_NAME)
    with pytest.raises(ValueError, match=r"generator_lm_head\.weight differs"):
        convbert.ConvBertForMaskedLM.from_pretrained(str(tmp_path))


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
    hf = hf_model("ConvBertModel", **TINY).to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    ours = convbert.ConvBertModel.from_pretrained(str(tmp_path))
    kernel = ours.encoder.layer[0].attention.self.query.kernel[...]
    assert kernel.dtype == jnp.float32
    np.testing.assert_array_equal(kernel, hf.encoder.layer[0].attention.self.query.weight.detach().float().numpy().T)


@pytest.mark.slow
def test_bare_checkpoint_into_head_and_back(tmp_path, caplog):
    hf = hf_model("ConvBertModel", **TINY)
    hf.save_pretrained(tmp_path / "bare")
    with caplog.at_level(logging.WARNING, logger="convbert.hf_io"):
        cls_model = convbert.ConvBertForSequenceClassification.from_pretrained(str(tmp_path / "bare"), num_labels=4)
    assert "newly initialised" in caplog.text and "classifier.out_proj.weight" in caplog.text
    assert max_diffs(cls_model.convbert, hf, "ConvBertModel", ("last_hidden_state",))["last_hidden_state"] <= TOL
    assert cls_model(jnp.ones((1, 4), jnp.int32)).logits.shape == (1, 4)

    hf_cls = hf_model("ConvBertForTokenClassification", **TINY)
    hf_cls.save_pretrained(tmp_path / "task")
    bare = convbert.ConvBertModel.from_pretrained(str(tmp_path / "task"))  # drops the head
    assert max_diffs(bare, hf_cls.convbert, "ConvBertModel", ("last_hidden_state",))["last_hidden_state"] <= TOL


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(conv_type="lconv"), "conv_type='lconv'"),
        (dict(conv_type="dconv"), "conv_type='dconv'"),
        (dict(num_attention_heads=4, head_ratio=4), "head_ratio=4"),
        (dict(classifier_head="original"), "classifier_head='original'"),
    ],
)
def test_non_hf_models_round_trip_natively(tmp_path, changes, reason):
    model = random_ours("ConvBertForSequenceClassification", {**TINY, **changes})
    with pytest.warns(UserWarning, match=reason):
        files = model.save_pretrained(str(tmp_path))
    assert os.path.basename(files[1]) == hf_io.NATIVE_WEIGHTS_NAME
    with pytest.raises(OSError):  # transformers finds no weights it could misread
        transformers.ConvBertForSequenceClassification.from_pretrained(str(tmp_path))
    loaded = convbert.ConvBertForSequenceClassification.from_pretrained(str(tmp_path))
    inputs = {k: jnp.asarray(v) for k, v in make_inputs().items()}
    np.testing.assert_array_equal(loaded(**inputs).logits, model(**inputs).logits)


def test_pretraining_model_exports_its_encoder(tmp_path):
    model = random_ours("ConvBertForPreTraining", TINY)
    with pytest.warns(UserWarning, match="no ConvBertForPreTraining"):
        model.save_pretrained(str(tmp_path))
    hf = transformers.ConvBertModel.from_pretrained(str(tmp_path)).eval()
    assert max_diffs(model.convbert, hf, "ConvBertModel", ("last_hidden_state",))["last_hidden_state"] <= TOL
    loaded = convbert.ConvBertForPreTraining.from_pretrained(str(tmp_path))
    ids = jnp.asarray(make_inputs()["input_ids"])
    np.testing.assert_array_equal(loaded(ids).logits, model(ids).logits)


def test_mapping_is_one_table():
    model = random_ours("ConvBertForMaskedLM", TINY)
    flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    hf = hf_io.flax_to_hf(flat)
    assert hf["convbert.encoder.layer.0.attention.self.key_conv_attn_layer.depthwise.weight"].shape == (64, 1, 9)
    assert hf["convbert.encoder.layer.0.attention.self.key_conv_attn_layer.pointwise.weight"].shape == (32, 64, 1)
    assert hf["convbert.encoder.layer.0.attention.self.key_conv_attn_layer.bias"].shape == (32, 1)
    assert hf["convbert.encoder.layer.1.intermediate.dense.weight"].shape == (2, 32, 64)
    assert hf["convbert.embeddings_project.weight"].shape == (64, 32)
    back, missing = hf_io.hf_to_flax(hf, {p: v.shape for p, v in flat.items()})
    assert not missing and all(np.array_equal(back[p], flat[p]) for p in flat)


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        convbert.ConvBertModel.from_pretrained(str(tmp_path))
    model = random_ours("ConvBertModel", TINY)
    config_file, weights_file = model.save_pretrained(str(tmp_path))
    os.rename(weights_file, tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "model.safetensors")):
        convbert.ConvBertModel.from_pretrained(str(tmp_path))

    from safetensors.numpy import load_file, save_file

    state = load_file(tmp_path / "moved")
    key = "encoder.layer.1.attention.self.query.weight"
    save_file({**state, key: state[key][:5]}, weights_file, metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=rf"{weights_file}: {key} has shape \(5, 64\), but this config needs "
        r"\(32, 64\)",
    ):
        convbert.ConvBertModel.from_pretrained(str(tmp_path))
    del state[key]
    save_file(state, weights_file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"missing parameters {key}"):
        convbert.ConvBertModel.from_pretrained(str(tmp_path))
    with pytest.raises(OSError, match="YituTech/conv-bert-base"):  # tests run with HF_HUB_OFFLINE=1
        convbert.ConvBertModel.from_pretrained("YituTech/conv-bert-base")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        convbert.ConvBertModel.from_pretrained(str(config_file))
