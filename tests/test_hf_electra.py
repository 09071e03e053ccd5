"""Hugging Face ELECTRA both ways: every head ConvBERT and ELECTRA both have in transformers, the ELECTRA
discriminator head and the generator/discriminator pair with shared embeddings
(docs/checkpoints.md#hugging-face-electra)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_hf_io import TOL, make_inputs, perturb_hf

import convbert
from convbert import ConvBertConfig, electra
from helpers import randomize

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# embedding_size != hidden_size (the projection), an odd vocabulary of test_hf_io's inputs
TINY = dict(
    vocab_size=1000,
    embedding_size=32,
    hidden_size=64,
    num_attention_heads=4,
    intermediate_size=128,
    num_hidden_layers=2,
)
HEADS = {  # our class -> (transformers class, extra config, output fields)
    "ConvBertModel": ("ElectraModel", {}, ("last_hidden_state",)),
    "ConvBertForPreTraining": ("ElectraForPreTraining", {}, ("logits",)),
    "ConvBertForMaskedLM": ("ElectraForMaskedLM", {}, ("logits",)),
    "ConvBertForSequenceClassification": ("ElectraForSequenceClassification", {"num_labels": 3}, ("logits",)),
    "ConvBertForMultipleChoice": ("ElectraForMultipleChoice", {}, ("logits",)),
    "ConvBertForTokenClassification": ("ElectraForTokenClassification", {"num_labels": 5}, ("logits",)),
    "ConvBertForQuestionAnswering": ("ElectraForQuestionAnswering", {}, ("start_logits", "end_logits")),
}


def max_diff(ours, hf, fields, multiple_choice=False):
    inputs = make_inputs(multiple_choice)
    out = ours(**{k: jnp.asarray(v) for k, v in inputs.items()})
    with torch.no_grad():
        ref = hf(**{k: torch.as_tensor(v) for k, v in inputs.items()})
    return max(float(np.max(np.abs(np.asarray(getattr(out, f)) - getattr(ref, f).numpy()))) for f in fields)


@pytest.mark.parametrize("name", list(HEADS))
def test_electra_parity_both_directions(tmp_path, name):
    hf_name, extra, fields = HEADS[name]
    mc = name == "ConvBertForMultipleChoice"
    torch.manual_seed(0)
    hf = perturb_hf(getattr(transformers, hf_name)(transformers.ElectraConfig(pad_token_id=0, **TINY, **extra)))
    hf.save_pretrained(tmp_path / "hf")
    ours = getattr(convbert, name).from_pretrained(str(tmp_path / "hf"))
    assert ours.config.is_electra and (ours.config.conv_type, ours.config.head_ratio) == ("none", 1)
    assert max_diff(ours, hf, fields, mc) <= TOL

    config = ConvBertConfig(**TINY, **extra).replace(conv_type="none", head_ratio=1, num_groups=1)
    if mc:  # ElectraConfig's defaults, which transformers' ELECTRA multiple-choice head reads
        config = config.replace(summary_type="first", summary_use_proj=True, summary_activation="gelu")
    ours = randomize(nnx.eval_shape(lambda: getattr(convbert, name)(config, rngs=nnx.Rngs(0))), seed=1)
    ours.save_pretrained(str(tmp_path / "ours"))
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "electra" and saved["architectures"] == [hf_name]
    hf, info = getattr(transformers, hf_name).from_pretrained(str(tmp_path / "ours"), output_loading_info=True)
    assert not any(info.values()), info
    assert max_diff(ours, hf.eval(), fields, mc) <= TOL


def test_generator_discriminator_pair_shares_embeddings(tmp_path):
    """A hub-style pair (google/electra-*-generator + -discriminator): loaded as one `ElectraModel` with one
    embedding table; saved back, transformers computes both networks."""
    gen_cfg = dict(TINY, hidden_size=32, num_attention_heads=2, intermediate_size=128)
    torch.manual_seed(0)
    disc = perturb_hf(transformers.ElectraForPreTraining(transformers.ElectraConfig(pad_token_id=0, **TINY)))
    gen = perturb_hf(transformers.ElectraForMaskedLM(transformers.ElectraConfig(pad_token_id=0, **gen_cfg)))
    with torch.no_grad():  # shared in training: the two files hold the same tables
        for name, p in gen.electra.embeddings.named_parameters():
            p.copy_(dict(disc.electra.embeddings.named_parameters())[name])
    disc.save_pretrained(tmp_path / "disc")
    gen.save_pretrained(tmp_path / "gen")

    model = electra.ElectraModel.from_pretrained(str(tmp_path / "disc"), str(tmp_path / "gen"))
    assert model.gen_config.hidden_size == 32 and model.disc_config.is_electra
    tables = [v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if p[-1] == "embedding"]
    assert len(tables) == 3  # word, position, token type: once
    assert max_diff(model.discriminator_model(), disc, ("logits",)) <= TOL
    assert max_diff(model.generator_model(), gen, ("logits",)) <= TOL

    files = model.save_pretrained(str(tmp_path / "pair"))
    assert sorted(os.path.relpath(f, tmp_path / "pair") for f in files if f.endswith("json")) == [
        os.path.join("discriminator", "config.json"),
        os.path.join("generator", "config.json"),
    ]
    hf_disc = transformers.ElectraForPreTraining.from_pretrained(str(tmp_path / "pair" / "discriminator")).eval()
    hf_gen = transformers.ElectraForMaskedLM.from_pretrained(str(tmp_path / "pair" / "generator")).eval()
    assert max_diff(model.discriminator_model(), hf_disc, ("logits",)) <= TOL
    assert max_diff(model.generator_model(), hf_gen, ("logits",)) <= TOL


def test_pair_with_different_embeddings_warns_and_uses_the_discriminators(tmp_path, caplog):
    torch.manual_seed(0)
    cfg = transformers.ElectraConfig(pad_token_id=0, **TINY)
    perturb_hf(transformers.ElectraForPreTraining(cfg), 0).save_pretrained(tmp_path / "disc")
    perturb_hf(transformers.ElectraForMaskedLM(cfg), 1).save_pretrained(tmp_path / "gen")
    with caplog.at_level("WARNING"):
        model = electra.ElectraModel.from_pretrained(str(tmp_path / "disc"), str(tmp_path / "gen"))
    assert "embeddings differ" in caplog.text
    disc = convbert.ConvBertForPreTraining.from_pretrained(str(tmp_path / "disc"))
    np.testing.assert_array_equal(
        model.embeddings.word_embeddings.embedding[...], disc.convbert.embeddings.word_embeddings.embedding[...]
    )
