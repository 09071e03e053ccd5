"""ConvBertConfig: validation messages, HF config.json round trips, transformers compatibility (spec 1.1, 3, 9.3)."""

import json

import pytest

from convbert import ConvBertConfig, generator_config, size_config


@pytest.mark.parametrize("changes, field", [
    (dict(hidden_size=100, num_attention_heads=3), "hidden_size"),
    (dict(conv_kernel_size=4), "conv_kernel_size"),
    (dict(num_groups=5), "num_groups"),
    (dict(num_groups=4, intermediate_size=3070), "intermediate_size"),
    (dict(head_ratio=16), "head_ratio"),
    (dict(conv_type="conv"), "conv_type"),
    (dict(hidden_act="mish"), "hidden_act"),
    (dict(dtype="float16"), "dtype"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
    (dict(classifier_head="pooler"), "classifier_head"),
    (dict(pad_token_id=30522), "pad_token_id"),
])
def test_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"ConvBertConfig.*{field}"):
        ConvBertConfig(**changes)


def test_round_trip_through_config_json(tmp_path):
    config = size_config("medium_small", num_labels=3, conv_type="lconv", classifier_head="original",
                         summary_type="first", classifier_dropout=0.2)
    config.save(str(tmp_path), architecture="ConvBertForSequenceClassification")
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model_type"] == "convbert" and d["architectures"] == ["ConvBertForSequenceClassification"]
    assert "dtype" not in d and len(d["id2label"]) == 3
    assert ConvBertConfig.load(str(tmp_path)) == config
    assert ConvBertConfig.load(str(tmp_path), dtype="bfloat16") == config.replace(dtype="bfloat16")


def test_reads_transformers_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.ConvBertConfig(vocab_size=1000, hidden_size=384, num_attention_heads=8, embedding_size=128,
                                     intermediate_size=1536, num_groups=2, num_labels=5, classifier_dropout=0.3,
                                     hidden_act="gelu_new", dtype=torch.float16)
    hf.save_pretrained(tmp_path)
    config = ConvBertConfig.load(str(tmp_path))
    for name in ("vocab_size", "hidden_size", "num_attention_heads", "embedding_size", "intermediate_size",
                 "num_groups", "num_labels", "classifier_dropout", "hidden_act", "head_ratio", "conv_kernel_size",
                 "layer_norm_eps", "max_position_embeddings"):
        assert getattr(config, name) == getattr(hf, name), name
    assert config.pad_token_id == 1  # transformers' default, unlike the BERT vocab's [PAD] = 0
    assert config.dtype == "float32"  # HF's dtype is a storage dtype, not our compute dtype

    ours = size_config("small", num_labels=3, summary_type="first")
    ours.save(str(tmp_path))
    back = transformers.ConvBertConfig.from_pretrained(str(tmp_path))
    assert (back.hidden_size, back.embedding_size, back.num_labels, back.pad_token_id, back.summary_type) == (
        256, 128, 3, 0, "first")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        ConvBertConfig.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ConvBertConfig.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    with pytest.raises(ValueError, match="model_type 'bert'"):
        ConvBertConfig.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "convbert", "num_groups": 7}))
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'}.*num_groups"):
        ConvBertConfig.load(str(tmp_path))


def test_transformers_compatibility_reasons():
    for size in ("small", "medium_small", "base"):
        assert size_config(size).hf_compatible
    assert "conv_type='lconv'" in size_config("small", conv_type="lconv").hf_incompatibilities[0]
    assert "head_ratio=1" in size_config("small", head_ratio=1).hf_incompatibilities[0]
    generator = generator_config(size_config("small"), 0.25)  # 1 head: concat width 2H (spec 3.2)
    assert generator.num_attention_heads == 1 and generator.attention_output_size == 2 * generator.hidden_size
    assert any("concatenated branch width" in r for r in generator.hf_incompatibilities)
