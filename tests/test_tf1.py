"""The TF1 converter (`python -m convbert.tf1`; docs/checkpoints.md#tf1-checkpoints): checkpoints written here with
TensorFlow under the upstream names, converted, then compared with transformers; the Adam slots and the step."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from test_hf_electra import max_diff
from test_hf_io import TOL

from convbert import ConvBertConfig, electra, sharding
from convbert.checkpoint import Checkpointer
from convbert.config import generator_config
from convbert.optim import AdamNoBiasState
from convbert.pretraining import Pretrainer
from convbert.resume import DataPosition
from convbert.tf1 import convert
from helpers import randomize

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import tf1_setup  # noqa: E402 (needs tensorflow)

from pretraining_setup import REPO, subprocess_env, tiny_config  # noqa: E402

BASE = dict(vocab_size=1000, hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2)
CASES = {  # discriminator config (generator: half its width)
    "convbert_projected": dict(BASE, embedding_size=32),  # embedding_size != hidden_size
    "convbert_grouped": dict(BASE, embedding_size=64, num_groups=2),  # grouped FFN (g_dense)
    "electra": dict(BASE, embedding_size=32, conv_type="none", head_ratio=1),
}


def random_pair(disc_fields, seed=0):
    disc = ConvBertConfig(**disc_fields)
    gen = generator_config(disc, 0.5)
    return randomize(nnx.eval_shape(lambda: electra.ElectraModel(disc, gen, rngs=nnx.Rngs(0))), seed)


def params(model):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_converted_pair_matches_transformers(tmp_path, case):
    source = random_pair(CASES[case])
    prefix = tf1_setup.write_tf1(str(tmp_path / "tf1" / "model.ckpt"), tf1_setup.upstream_variables(source), step=7)
    converted = convert.convert(convert.read_checkpoint(prefix), source.disc_config, source.gen_config, prefix)
    assert converted.step == 7 and converted.slots is None
    got, want = params(converted.model), params(source)
    assert got.keys() == want.keys() and all(np.array_equal(got[p], want[p]) for p in want)
    assert sum(p[-1] == "embedding" for p in got) == 3  # the shared tables once

    convert.write_hf(converted.model, tf1_setup_vocab(tmp_path), str(tmp_path / "hf"))
    is_electra = source.disc_config.is_electra
    disc_cls = transformers.ElectraForPreTraining if is_electra else transformers.ConvBertModel
    gen_cls = transformers.ElectraForMaskedLM if is_electra else transformers.ConvBertForMaskedLM
    hf_disc = disc_cls.from_pretrained(str(tmp_path / "hf" / "discriminator")).eval()
    hf_gen = gen_cls.from_pretrained(str(tmp_path / "hf" / "generator")).eval()
    ours_disc = source.discriminator_model()
    if is_electra:
        assert max_diff(ours_disc, hf_disc, ("logits",)) <= TOL
    else:  # transformers has no ConvBERT discriminator head: the encoder, and the head's weights as written
        assert max_diff(ours_disc.convbert, hf_disc, ("last_hidden_state",)) <= TOL
        np.testing.assert_array_equal(
            tf.train.load_checkpoint(prefix).get_tensor("discriminator_predictions/dense_1/kernel"),
            np.asarray(converted.model.discriminator_predictions.dense_prediction.kernel[...]),
        )
    assert max_diff(source.generator_model(), hf_gen, ("logits",)) <= TOL
    assert (tmp_path / "hf" / "generator" / "vocab.txt").is_file()


def tf1_setup_vocab(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(995))]) + "\n")
    return str(path)


def test_unexpected_missing_and_misshaped_variables_are_named(tmp_path):
    source = random_pair(CASES["convbert_projected"])
    variables = tf1_setup.upstream_variables(source)
    variables["electra/encoder/layer_0/attention/self/query/kernel"] = np.zeros((64, 16), np.float32)
    del variables["generator/encoder/layer_1/output/LayerNorm/gamma"]
    variables["electra/encoder/layer_9/extra/kernel"] = np.zeros(3, np.float32)
    prefix = tf1_setup.write_tf1(str(tmp_path / "model.ckpt"), variables)
    with pytest.raises(ValueError) as e:
        convert.convert(convert.read_checkpoint(prefix), source.disc_config, source.gen_config, prefix)
    text = str(e.value)
    assert "electra/encoder/layer_9/extra/kernel" in text
    assert "generator/encoder/layer_1/output/LayerNorm/gamma" in text
    assert "electra/encoder/layer_0/attention/self/query/kernel: (64, 16) in the checkpoint, (64, 32)" in text


@pytest.mark.slow
def test_adam_slots_and_step_resume_exactly(tmp_path):
    """A run of this code stops after 2 steps; its state goes to a TF1 checkpoint with upstream names and Adam slots
    and back into a pretraining checkpoint: the state equals the saved-and-resumed run's, and so does the next
    step."""
    config = tiny_config()
    config.model.update(dict(CASES["convbert_projected"], vocab_size=30522))
    config.electra.generator_fraction = 0.5
    mesh = sharding.create_mesh({"data": -1}, jax.devices()[:1])
    trainer = Pretrainer(config, mesh, None)
    rng = np.random.default_rng(0)
    batch = lambda: sharding.shard_batch(
        {k: rng.integers(1, 1000, (8, 64)).astype(np.int32) for k in ("input_ids",)}
        | {"input_mask": np.ones((8, 64), np.int32), "segment_ids": np.zeros((8, 64), np.int32)},
        mesh,
    )
    state = trainer.init(jax.random.PRNGKey(config.seed))
    for _ in range(2):
        state, _ = trainer.train_step(state, batch())
    saved = Checkpointer(str(tmp_path / "run" / "checkpoints"), async_save=False, handle_sigterm=False)
    saved.save(2, state, meta={"step": 2})
    resumed = saved.restore(trainer.abstract_state())[1]
    saved.close()

    adam = next(s for s in state.opt_state if isinstance(s, AdamNoBiasState))
    variables = tf1_setup.upstream_variables(trainer.model(state.params))
    for slot, moments in (("adam_m", adam.mu), ("adam_v", adam.nu)):
        variables.update(tf1_setup.upstream_variables(trainer.model(moments), "/" + slot))
    prefix = tf1_setup.write_tf1(str(tmp_path / "tf1" / "model.ckpt"), variables, step=2)
    model = trainer.model(state.params)
    converted = convert.convert(convert.read_checkpoint(prefix), model.disc_config, model.gen_config, prefix)
    path = convert.write_pretraining_checkpoint(converted, config, str(tmp_path / "converted"), prefix)
    restored = Checkpointer(os.path.dirname(path), handle_sigterm=False)
    step, from_tf1, meta = restored.restore(trainer.abstract_state())
    restored.close()
    assert step == 2 and DataPosition.restored(step, meta, config.batch_size).offset == 0
    for a, b in zip(jax.tree.leaves(from_tf1), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    next_batch = batch()
    after_tf1, _ = trainer.train_step(from_tf1, next_batch)
    after_resume, _ = trainer.train_step(resumed, next_batch)
    for a, b in zip(jax.tree.leaves(after_tf1), jax.tree.leaves(after_resume), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_command_line_electra_without_slots(tmp_path):
    """`python -m convbert.tf1 --size=... --workdir=W` on a checkpoint without Adam slots: the HF pair, and a
    pretraining checkpoint that starts a fresh optimizer state (said in the log)."""
    source = random_pair(CASES["electra"])
    source.disc_config.save(str(tmp_path / "cfg"))
    prefix = tf1_setup.write_tf1(str(tmp_path / "tf1" / "model.ckpt"), tf1_setup.upstream_variables(source), step=5)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "convbert.tf1",
            f"--checkpoint={prefix}",
            f"--config={tmp_path / 'cfg' / 'config.json'}",
            "--generator_fraction=0.5",
            f"--vocab={tf1_setup_vocab(tmp_path)}",
            f"--output_dir={tmp_path / 'out'}",
            f"--workdir={tmp_path / 'work'}",
            "--pretrain_config=configs/pretrain.py:tiny",
        ],
        cwd=REPO,
        env=subprocess_env(num_devices=1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no Adam slots" in done.stderr and "--config.model.conv_type=none" in done.stderr
    assert (tmp_path / "work" / "checkpoints" / "5").is_dir()
    hf_gen = transformers.ElectraForMaskedLM.from_pretrained(str(tmp_path / "out" / "generator")).eval()
    assert max_diff(source.generator_model(), hf_gen, ("logits",)) <= TOL
