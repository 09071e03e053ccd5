"""`--config.init_from` (`convbert.init_from`; docs/checkpoints.md#continued-pretraining): each kind of source, the
refusals, continued pretraining that starts below a fresh run, and ablation variants started from two sources."""

import os
from pathlib import Path

import jax
import pytest
from flax import nnx

from convbert import electra, init_from, pretraining
from convbert.ablation import study
from convbert.assets import BERT_UNCASED_VOCAB
from convbert.config import generator_config
from convbert.tokenization import ConvBertTokenizer
from helpers import TINY_ENCODER, randomize, save_random_encoder
from pretraining_setup import losses, tiny_config

ELECTRA_TINY = TINY_ENCODER.replace(conv_type="none", head_ratio=1, vocab_size=30522)


def save_pair(path, disc=ELECTRA_TINY, fraction=0.5, vocab=BERT_UNCASED_VOCAB):
    """A random pair as an export / TF1 conversion: path/{discriminator,generator} with vocab.txt."""
    model = electra.ElectraModel(disc, generator_config(disc, fraction), rngs=nnx.Rngs(0))
    randomize(model).save_pretrained(str(path))
    for network in init_from.NETWORKS:
        ConvBertTokenizer(vocab).save(str(path / network))
    return str(path)


@pytest.fixture(scope="module")
def pretrained_source(tmp_path_factory):
    """A tiny WordPiece source pretrained 40 steps here (its workdir, export/ holding the pair)."""
    workdir = str(tmp_path_factory.mktemp("source"))
    config = tiny_config(
        num_train_steps=40, optimizer__learning_rate=2e-3, export_hf=True, checkpoint_every_steps=40, log_every_steps=1
    )
    pretraining.train_and_evaluate(config, workdir, jax.devices()[:1])
    return workdir


@pytest.mark.slow
def test_continued_pretraining_starts_below_a_fresh_run(pretrained_source, tmp_path):
    first = {}
    for name, source in (("scratch", ""), ("continued", os.path.join(pretrained_source, "export"))):
        config = tiny_config(num_train_steps=2, init_from=source)
        pretraining.train_and_evaluate(config, str(tmp_path / name), jax.devices()[:1])
        first[name] = losses(str(tmp_path / name))[1]
    start = losses(pretrained_source)
    print(f"\nstep-1 loss: fresh {first['scratch']:.3f}, continued {first['continued']:.3f}; source {start}")
    assert first["continued"] < first["scratch"] - 1.0


@pytest.mark.slow
def test_a_workdir_of_another_run_is_refused(pretrained_source):
    config = tiny_config(init_from=os.path.join(pretrained_source, "export"))
    with pytest.raises(ValueError, match="already holds checkpoints"):
        init_from.apply(config, pretrained_source)


def test_electra_pair_sets_model_generator_and_tokenizer(tmp_path):
    src = save_pair(tmp_path / "pair")
    config = tiny_config(init_from=src)
    source = init_from.apply(config, str(tmp_path / "work"), {"model.dtype": "float32"})
    assert (config.model.conv_type, config.model.head_ratio, config.model.hidden_size) == ("none", 1, 64)
    assert config.electra.generator_fraction == 0.5 and config.data.tokenizer == "wordpiece"
    assert config.data.vocab == os.path.join(src, "discriminator", "vocab.txt")
    params = init_from.load(source, config)
    assert set(params) == {
        "embeddings",
        "generator",
        "generator_predictions",
        "generator_lm_head",
        "discriminator",
        "discriminator_predictions",
    }
    with pytest.raises(ValueError, match=r"model\.hidden_size=128"):
        init_from.apply(tiny_config(init_from=src), str(tmp_path / "work"), {"model.hidden_size": 128})


def test_two_hf_sources_and_a_discriminator_alone(tmp_path, caplog):
    pair = save_pair(tmp_path / "pair")
    config = tiny_config(
        init_from=os.path.join(pair, "discriminator"), init_generator_from=os.path.join(pair, "generator")
    )
    assert init_from.apply(config, str(tmp_path / "a")).generator.endswith("generator")

    hub_like = save_random_encoder(str(tmp_path / "convbert"))  # ConvBertModel + vocab.txt, no generator or head
    config = tiny_config(init_from=hub_like)
    source = init_from.apply(config, str(tmp_path / "b"))
    assert config.model.conv_type == "sdconv" and config.model.hidden_size == TINY_ENCODER.hidden_size
    with caplog.at_level("WARNING"):
        params = init_from.load(source, config)
    assert "without a generator" in caplog.text and "newly initialised" in caplog.text
    loaded = nnx.to_flat_state(params["discriminator"])
    assert any(p[-1] == "kernel" for p, _ in loaded)


def test_data_of_another_vocabulary_is_refused_before_anything_is_written(tmp_path):
    other = tmp_path / "vocab.txt"
    tokens = Path(BERT_UNCASED_VOCAB).read_text().splitlines()
    other.write_text("\n".join(tokens[:1000] + tokens[1001:] + [tokens[1000]]) + "\n")  # one entry moved
    src = save_pair(tmp_path / "pair", vocab=str(other))
    workdir = tmp_path / "work"
    config = tiny_config(init_from=src)  # data_dir: the demo data, prepared with the bundled BERT vocabulary
    with pytest.raises(ValueError, match="prepared with another vocabulary"):
        pretraining.train_and_evaluate(config, str(workdir), jax.devices()[:1])
    assert not workdir.exists()


def test_ablation_variants_from_two_sources(tmp_path):
    """A study whose two variants start from two local tiny sources (ELECTRA and ConvBERT): each variant's
    pretraining config is its source's model, and its command passes init_from to the driver."""
    electra_src = save_pair(tmp_path / "electra")
    convbert_src = save_pair(tmp_path / "convbert", disc=TINY_ENCODER.replace(vocab_size=30522))
    s = study.base_study("tiny", "test")
    s.pretrain.overrides.update(dict(data=dict(tokenizer="wordpiece")))
    s.variants = study.variants(
        electra_released=dict(init_from=electra_src), convbert_released=dict(init_from=convbert_src)
    )
    s.reference = "convbert_released"
    s.finetune.config, s.finetune.tasks = "configs/finetune_glue.py:sst2,tiny", ("sst2",)
    s.finetune.data_dir, s.finetune.task_data_dirs = "data/glue_sample", {}
    plan = study.resolve(s, str(tmp_path / "run"))
    assert plan["electra_released"].pretrain_config.model.conv_type == "none"
    assert plan["convbert_released"].pretrain_config.model.conv_type == "sdconv"
    assert f"--config.init_from={electra_src}" in plan["electra_released"].pretrain.argv
