"""ConvBertConfig: validation messages, HF config.json round trips, transformers compatibility
(docs/architecture.md#head-bookkeeping, docs/architecture.md#tf-and-transformers-differences,
docs/checkpoints.md#released-checkpoints);
configs/pretrain.py: sections built from the dataclasses, the derived masking budget and its check."""

import dataclasses
import json
import os

import pytest
from absl import flags
from ml_collections import config_flags

from configs import finetune_glue, pretrain
from convbert import ConvBertConfig, generator_config, size_config
from convbert.config import RUNTIME_FIELDS, SPECIAL_ID_FIELDS, ElectraConfig
from convbert.config_checks import check_pretraining
from convbert.sharding import DEFAULT_RULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "changes, field",
    [
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
        (dict(kernels="fast"), "kernels"),
        (dict(remat="dots_saveable"), "remat"),
        (dict(scan_layers="yes"), "scan_layers"),
    ],
)
def test_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=f"ConvBertConfig.*{field}"):
        ConvBertConfig(**changes)


def test_round_trip_through_config_json(tmp_path):
    config = size_config(
        "medium_small",
        num_labels=3,
        conv_type="lconv",
        classifier_head="original",
        summary_type="first",
        classifier_dropout=0.2,
    )
    config.save(str(tmp_path), architecture="ConvBertForSequenceClassification")
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["model_type"] == "convbert" and d["architectures"] == ["ConvBertForSequenceClassification"]
    assert "dtype" not in d and len(d["id2label"]) == 3
    assert ConvBertConfig.load(str(tmp_path)) == config
    assert ConvBertConfig.load(str(tmp_path), dtype="bfloat16") == config.replace(dtype="bfloat16")


def test_runtime_fields_stay_out_of_config_json(tmp_path):
    """dtype, kernels, remat and scan_layers say how the model is computed, not what: not written, ignored when
    read (a config.json that has them loads the defaults), set by overrides."""
    runtime = dict(dtype="bfloat16", kernels="reference", remat="dots", scan_layers=True)
    config = size_config("small", **runtime)
    config.save(str(tmp_path))
    d = json.loads((tmp_path / "config.json").read_text())
    assert not set(RUNTIME_FIELDS) & set(d)
    assert ConvBertConfig.load(str(tmp_path)) == size_config("small")
    assert ConvBertConfig.load(str(tmp_path), **runtime) == config
    (tmp_path / "config.json").write_text(json.dumps({**d, **runtime}))
    assert ConvBertConfig.load(str(tmp_path)) == size_config("small")


def test_reads_transformers_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.ConvBertConfig(
        vocab_size=1000,
        hidden_size=384,
        num_attention_heads=8,
        embedding_size=128,
        intermediate_size=1536,
        num_groups=2,
        num_labels=5,
        classifier_dropout=0.3,
        hidden_act="gelu_new",
        dtype=torch.float16,
    )
    hf.save_pretrained(tmp_path)
    config = ConvBertConfig.load(str(tmp_path))
    for name in (
        "vocab_size",
        "hidden_size",
        "num_attention_heads",
        "embedding_size",
        "intermediate_size",
        "num_groups",
        "num_labels",
        "classifier_dropout",
        "hidden_act",
        "head_ratio",
        "conv_kernel_size",
        "layer_norm_eps",
        "max_position_embeddings",
    ):
        assert getattr(config, name) == getattr(hf, name), name
    assert config.pad_token_id == 1  # transformers' default, unlike the BERT vocab's [PAD] = 0
    assert config.dtype == "float32"  # HF's dtype is a storage dtype, not our compute dtype

    ours = size_config("small", num_labels=3, summary_type="first")
    ours.save(str(tmp_path))
    back = transformers.ConvBertConfig.from_pretrained(str(tmp_path))
    assert (back.hidden_size, back.embedding_size, back.num_labels, back.pad_token_id, back.summary_type) == (
        256,
        128,
        3,
        0,
        "first",
    )


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
    # 1 head: concat width 2H (docs/electra.md#generator-config)
    generator = generator_config(size_config("small"), 0.25)
    assert generator.num_attention_heads == 1 and generator.attention_output_size == 2 * generator.hidden_size
    assert any("concatenated branch width" in r for r in generator.hf_incompatibilities)


# ---- configs/pretrain.py ----------------------------------------------------------------------------------------


def field_names(cls):
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("size", ["tiny", "small", "medium_small", "base", "large"])
def test_pretrain_sections_are_the_dataclasses_fields(size):
    c = pretrain.get_config(size)
    assert set(c.model) == field_names(ConvBertConfig) - set(pretrain.HEAD_FIELDS)
    model = ConvBertConfig(**c.model)
    if size == "tiny":
        assert (model.hidden_size, model.num_hidden_layers, model.dtype) == (128, 2, "float32")
    else:
        assert model == size_config(size, dtype="bfloat16")
    assert set(c.electra) == field_names(ElectraConfig) - set(SPECIAL_ID_FIELDS)
    assert ElectraConfig.from_config(c.electra).mask_prob == pretrain.RECIPES.get(size, {}).get(
        "mask_prob", ElectraConfig().mask_prob
    )  # 0.25 for large, ELECTRA-large's
    assert tuple(map(tuple, c.sharding_rules)) == DEFAULT_RULES
    assert tuple(map(tuple, finetune_glue.get_config(f"sst2,{size}").sharding_rules)) == DEFAULT_RULES


def test_large_is_electra_large_with_convbert_attention():
    """ELECTRA-large's shape and pretraining recipe (google-research/electra configure_pretraining.py, paper
    appendix), ConvBERT's head ratio 2 and kernel 9; ELECTRA's fine-tuning lr 5e-5 and layer decay 0.9."""
    model = size_config("large")
    assert (
        model.num_hidden_layers,
        model.hidden_size,
        model.num_attention_heads,
        model.intermediate_size,
        model.embedding_size,
        model.head_ratio,
        model.conv_kernel_size,
    ) == (24, 1024, 16, 4096, 1024, 2, 9)
    c = pretrain.get_config("large")
    assert (c.batch_size, c.max_seq_length, c.num_train_steps, c.optimizer.learning_rate, c.optimizer.warmup_steps) == (
        2048,
        512,
        1_750_000,
        2e-4,
        10_000,
    )
    assert (c.electra.mask_prob, c.electra.generator_fraction, c.electra.max_predictions_per_seq) == (0.25, 0.25, 130)
    generator = generator_config(ConvBertConfig(**c.model), c.electra.generator_fraction)
    assert (generator.hidden_size, generator.num_attention_heads, generator.num_hidden_layers) == (256, 4, 24)
    assert (c.model.dtype, pretrain.get_config("base").max_seq_length) == ("bfloat16", 128)
    glue = finetune_glue.get_config("sst2,large")
    assert (glue.learning_rate, glue.layerwise_lr_decay) == (5e-5, 0.9)
    assert finetune_glue.get_config("sst2,base").layerwise_lr_decay == 0.8
    with pytest.raises(ValueError, match="unknown size 'huge'; choose from tiny, small, medium_small, base, large"):
        pretrain.get_config("huge")


@pytest.mark.parametrize(
    "argv", [[], ["--config.model.kernels=tpu", "--config.model.remat=dots", "--config.model.scan_layers=True"]]
)
def test_runtime_knobs_from_the_command_line(argv):
    values, argv = flags.FlagValues(), ["pretrain.py", *argv]
    config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "configs", "pretrain.py") + ":small", flag_values=values, sys_argv=argv
    )
    values(argv)
    model = ConvBertConfig(**values.config.model)
    expected = ("tpu", "dots", True) if len(argv) > 1 else ("auto", "none", False)
    assert (model.kernels, model.remat, model.scan_layers) == expected


def test_masking_budget_follows_sequence_length_and_mask_prob():
    c = pretrain.get_config("small")
    assert c.electra.max_predictions_per_seq == 19  # int((0.15 + 0.005) * 128), google-research/electra
    c.max_seq_length = 512
    assert c.electra.max_predictions_per_seq == 79
    c.electra.mask_prob = 0.25
    assert c.electra.max_predictions_per_seq == 130
    c.electra.max_predictions_per_seq = 40  # an explicit value wins, also over later changes
    c.max_seq_length = 256
    assert c.electra.max_predictions_per_seq == 40 and c.to_dict()["electra"]["max_predictions_per_seq"] == 40


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config.max_seq_length=512"], 79),
        (["--config.electra.max_predictions_per_seq=30", "--config.max_seq_length=512"], 30),
        (["--config.max_seq_length=512", "--config.electra.max_predictions_per_seq=30"], 30),
    ],
)
def test_masking_budget_from_the_command_line(argv, expected):
    values, argv = flags.FlagValues(), ["pretrain.py", *argv]
    config_flags.DEFINE_config_file(
        "config", os.path.join(ROOT, "configs", "pretrain.py") + ":small", flag_values=values, sys_argv=argv
    )
    values(argv)
    assert values.config.electra.max_predictions_per_seq == expected


def test_masking_budget_above_the_sequence_length_names_the_key():
    c = pretrain.get_config("tiny")
    check_pretraining(c)
    c.electra.max_predictions_per_seq = 129
    with pytest.raises(
        ValueError,
        match=r"config\.electra\.max_predictions_per_seq=129 must be in \[1, "
        r"config\.max_seq_length=128\]",
    ):
        check_pretraining(c)
