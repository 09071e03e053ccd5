"""GLUE fine-tuning: config, optimizer multipliers, losses, checkpoint sources, an end-to-end tiny run that
learns, and the `all` run's skip-after-crash behaviour (docs/recipes.md#glue-fine-tuning)."""

import csv
import json
import os
import shutil
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convbert import ConvBertForPreTraining, ConvBertForSequenceClassification, ConvBertModel, finetuning, hf_io
from convbert.glue import finetune
from convbert.glue.submission import SUBMISSION_FILES
from convbert.glue.tasks import TASKS
from convbert.tokenization import ConvBertTokenizer
from helpers import ONE_DEVICE, TINY_ENCODER, randomize, save_random_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "glue")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import finetune_glue as glue_config  # noqa: E402

TINY = TINY_ENCODER


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny encoder (N(0, 0.02) weights) in Hugging Face format, with the BERT uncased vocab."""
    return save_random_encoder(str(tmp_path_factory.mktemp("ckpt")))


def tiny_config(task, checkpoint, data_dir=FIXTURES, **overrides):
    c = glue_config.get_config(f"{task},tiny")
    c.update(init_checkpoint=checkpoint, data_dir=data_dir, **overrides)
    return c


def read_tsv(path):
    with open(path) as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ---- config, optimizer, loss --------------------------------------------------------------------


def test_config_recipe_per_size_and_task():
    for size, lr in (("small", 3e-4), ("medium_small", 3e-4), ("base", 1e-4)):
        c = glue_config.get_config(f"rte,{size}")
        assert (c.learning_rate, c.batch_size, c.max_seq_length, c.num_train_epochs) == (lr, 32, 128, 10)
        assert (c.layerwise_lr_decay, c.warmup_proportion, c.weight_decay, c.loss_reduction) == (0.8, 0.1, 0.01, "sum")
    assert glue_config.get_config("cola,base").num_train_epochs == 3
    assert glue_config.get_config("all,base").num_train_epochs == -1  # per task: 3, RTE / STS-B 10
    assert finetune.task_epochs(TASKS["stsb"], glue_config.get_config("all,base")) == 10
    assert glue_config.get_config("all,base").init_checkpoint == "YituTech/conv-bert-base"
    with pytest.raises(ValueError, match="unknown task 'glue'; valid tasks: cola, sst2"):
        glue_config.get_config("glue,base")
    large = glue_config.get_config("rte,large")  # ELECTRA-large's fine-tuning recipe
    assert (large.learning_rate, large.layerwise_lr_decay) == (5e-5, 0.9)
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        glue_config.get_config("rte,huge")


@pytest.mark.parametrize("scan_layers", [False, True])
def test_layerwise_lr_per_parameter_of_the_classification_model(scan_layers):
    """With Adam's first step (no bias correction) every update is the same size, so update / head update is
    each parameter's multiplier: embeddings 0.8^4, layer 0 0.8^3, layer 1 0.8^2, head 1 (L = 2,
    docs/recipes.md#layer-wise-learning-rate-decay); the same per layer for stacked layers (scan_layers)."""
    config = TINY.replace(classifier_head="hf", scan_layers=scan_layers)
    model = nnx.eval_shape(lambda: ConvBertForSequenceClassification(config, rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape), nnx.state(model, nnx.Param))
    c = glue_config.get_config("sst2,base")
    c.update(weight_decay=0.0, warmup_proportion=0.0)
    tx, _ = finetuning.make_optimizer(c, params, num_layers=2, total_steps=10**9)
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(jax.tree.map(jnp.ones_like, params), params)
    updates = hf_io.split_stacked({p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(updates)})
    first = {tuple(map(str, p)): float(u.reshape(-1)[0]) for p, u in updates.items()}
    ratios = {path: u / first["classifier", "out_proj", "kernel"] for path, u in first.items()}
    assert len(ratios) == len(hf_io.split_stacked({p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(params)}))
    for path, ratio in ratios.items():
        if path[:2] == ("convbert", "embeddings") or path[:2] == ("convbert", "embeddings_project"):
            expected = 0.8**4
        elif path[:2] == ("convbert", "encoder"):
            expected = 0.8 ** (3 - int(path[3]))
        else:
            assert path[0] == "classifier"  # dense and out_proj of the HF head
            expected = 1.0
        assert ratio == pytest.approx(expected, rel=1e-4), path


def test_a_probe_trains_the_head_at_the_probe_learning_rate():
    model = nnx.eval_shape(lambda: ConvBertForSequenceClassification(TINY, rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda x: jnp.zeros(x.shape), nnx.state(model, nnx.Param))
    c = glue_config.get_config("sst2,tiny")
    c.warmup_proportion = 0.0
    assert c.probe_learning_rate != c.learning_rate
    for freeze, peak in ((False, c.learning_rate), (True, c.probe_learning_rate)):
        c.freeze_encoder = freeze
        _, schedule = finetuning.make_optimizer(c, params, num_layers=2, total_steps=100)
        assert float(schedule(0)) == pytest.approx(peak)


def test_loss_is_summed_over_the_batch_by_default():
    logits = jnp.log(jnp.array([[0.5, 0.5], [0.25, 0.75]]))
    losses = finetune.example_losses(logits, jnp.array([0, 1]), regression=False)
    np.testing.assert_allclose(losses, [np.log(2), -np.log(0.75)], rtol=1e-6)
    np.testing.assert_allclose(
        finetune.example_losses(jnp.array([[0.5], [0.1]]), jnp.array([0.2, 0.4]), True), [0.09, 0.09], rtol=1e-5
    )
    assert glue_config.get_config("sst2,small").loss_reduction == "sum"


# ---- checkpoint sources --------------------------------------------------------------------------


def test_pretraining_workdir_and_hf_head_detection(tmp_path, checkpoint):
    workdir = tmp_path / "pretrain"
    pretrained = randomize(nnx.eval_shape(lambda: ConvBertForPreTraining(TINY, rngs=nnx.Rngs(0))))
    with pytest.warns(UserWarning, match="transformers has no ConvBertForPreTraining"):
        pretrained.save_pretrained(str(workdir / "export" / "discriminator"))
    ConvBertTokenizer().save(str(workdir / "tokenizer"))
    source = finetuning.resolve_source(str(workdir))
    assert source == finetuning.Source(str(workdir / "export" / "discriminator"), str(workdir / "tokenizer"))
    tokenizer = finetune.load_tokenizer(source.tokenizer_dir)
    assert tokenizer.encode_batch(["hello world"]) == [[7592, 2088]] and tokenizer.cls_token_id == 101
    config = tiny_config("sst2", str(workdir))
    encoder = finetuning.load_encoder(source, config)
    assert encoder.head == "original" and encoder.config.hidden_size == 64
    hf_dir = str(tmp_path / "hf_classifier")
    randomize(
        nnx.eval_shape(lambda: ConvBertForSequenceClassification(TINY.replace(classifier_head="hf"), rngs=nnx.Rngs(0)))
    ).save_pretrained(hf_dir)
    assert finetuning.load_encoder(finetuning.Source(hf_dir, checkpoint), config).head == "hf"
    assert finetuning.resolve_source(checkpoint, tokenizer="vocab.txt").tokenizer_dir == "vocab.txt"


# ---- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_finetune_learns_the_sample_task(tmp_path, checkpoint):
    """A random tiny encoder on the bundled SST-2 sample, data parallel over 8 CPU devices: 6 epochs of 15
    steps (batch 16, lr 1e-3: fewer steps than the tiny config) gave 81-86% dev accuracy for seeds 1-5."""
    workdir = str(tmp_path / "run")
    config = tiny_config(
        "sst2",
        checkpoint,
        data_dir=os.path.join(ROOT, "data", "glue_sample"),
        batch_size=16,
        eval_batch_size=16,
        learning_rate=1e-3,
        num_train_epochs=6,
    )
    summary = finetune.run(config, workdir)
    assert jax.device_count() == 8
    accuracy = summary["tasks"]["sst2"]["median"]["accuracy"]
    assert accuracy > 70.0, accuracy  # chance: 50%
    rows = read_tsv(os.path.join(workdir, "submission", "SST-2.tsv"))
    assert rows[0] == ["index", "prediction"] and len(rows) == 41
    assert {r[1] for r in rows[1:]} <= {"0", "1"} and [r[0] for r in rows[1:]] == [str(i) for i in range(40)]
    seed_dir = os.path.join(workdir, "sst2", "seed_0")
    history = json.loads(Path(seed_dir, "result.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == list(range(1, config.num_train_epochs + 1))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(seed_dir))
    logged = [json.loads(line) for line in Path(seed_dir, "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in logged) and any("dev/accuracy" in r for r in logged)
    assert "| SST-2 | acc* |" in Path(workdir, "results.md").read_text()


# ---- the `all` run with a stand-in trainer ---------------------------------------------------------


class Crash(RuntimeError):
    pass


@pytest.fixture
def fake_training(monkeypatch):
    """Replaces the trainer: groups of 2 seeds, dev metrics 50 + seed, all-zero test predictions; `crash_on`
    raises there."""
    calls = []
    state = types.SimpleNamespace(crash_on=None, calls=calls)

    def train_group(trainer, task_data, seeds, task_dir):
        calls.extend((trainer.task.name, seed) for seed in seeds)
        if trainer.task.name == state.crash_on:
            raise Crash(trainer.task.name)
        return {
            seed: (
                {"seed": seed, "dev": {k: 50.0 + seed for k in trainer.task.metric_keys()}},
                {n: np.zeros(len(ix)) for n, (_, ix) in task_data.test.items()},
            )
            for seed in seeds
        }, {}

    monkeypatch.setattr(finetune, "TaskTrainer", lambda task, *args: types.SimpleNamespace(task=task))
    monkeypatch.setattr(finetune, "load_encoder", lambda *args: None)
    monkeypatch.setattr(finetune, "group_size", lambda *args: 2)
    monkeypatch.setattr(finetune, "train_group", train_group)
    return state


def test_all_keeps_finished_tasks_after_a_crash_and_skips_them(tmp_path, checkpoint, fake_training):
    workdir = str(tmp_path / "all")
    config = tiny_config("all", checkpoint, num_seeds=2, batch_size=8)
    fake_training.crash_on = "mnli"
    with pytest.raises(Crash):
        finetune.run(config, workdir)
    done = ["cola", "sst2", "mrpc", "stsb", "qqp"]
    assert all(os.path.isfile(os.path.join(workdir, t, "result.json")) for t in done)
    assert not os.path.exists(os.path.join(workdir, "mnli", "result.json"))

    fake_training.crash_on, fake_training.calls[:] = None, []
    summary = finetune.run(config, workdir)
    assert {t for t, _ in fake_training.calls} == {"mnli", "qnli", "rte", "wnli"}
    assert summary["glue_score"] == pytest.approx(50.5) and summary["leaderboard_score"] == pytest.approx(50.5)
    assert summary["glue_score_per_seed"] == [50.0, 51.0]
    submission = os.path.join(workdir, "submission")
    for name in SUBMISSION_FILES:
        rows = read_tsv(os.path.join(submission, name))
        task, split = next((t, s) for t in TASKS.values() for n, s in t.test.items() if n == name)
        assert rows[0] == ["index", "prediction"]
        assert len(rows) - 1 == len(read_tsv(os.path.join(FIXTURES, split.file))) - 1, name
        labels = {"0.000"} if task.labels is None else set(task.labels)
        assert {r[1] for r in rows[1:]} <= labels, name
    assert os.path.isfile(os.path.join(submission, "submission.zip"))
    assert "GLUE score (paper: 8 tasks, no WNLI) |  | 50.0 | 51.0 | 50.5 |" in Path(workdir, "results.md").read_text()


def test_ax_needs_the_diagnostic_set_and_missing_files_fail_first(tmp_path, checkpoint, fake_training):
    data_dir = shutil.copytree(FIXTURES, tmp_path / "glue")
    os.remove(data_dir / "diagnostic" / "diagnostic.tsv")
    summary = finetune.run(tiny_config("mnli", checkpoint, data_dir=str(data_dir), batch_size=8), str(tmp_path / "m"))
    assert "mnli" in summary["tasks"] and not os.path.exists(tmp_path / "m" / "submission" / "AX.tsv")
    with pytest.raises(FileNotFoundError, match=r"diagnostic/diagnostic.tsv"):
        finetune.run(tiny_config("ax", checkpoint, data_dir=str(data_dir), batch_size=8), str(tmp_path / "m"))
    finetune.run(tiny_config("ax", checkpoint, batch_size=8), str(tmp_path / "ax"))
    assert len(read_tsv(tmp_path / "ax" / "submission" / "AX.tsv")) == 5
    os.remove(data_dir / "WNLI" / "train.tsv")
    fake_training.calls[:] = []
    with pytest.raises(FileNotFoundError, match=r"WNLI/train.tsv"):
        finetune.run(tiny_config("all", checkpoint, data_dir=str(data_dir), batch_size=8), str(tmp_path / "x"))
    assert fake_training.calls == []  # checked before any training


# ---- the no-pretraining control and the frozen-encoder probe ----------------------------------------


def _sst2_trainer(source, **overrides):
    config = tiny_config("sst2", source, data_dir=os.path.join(ROOT, "data", "glue_sample"), **overrides)
    src = finetuning.resolve_source(config.init_checkpoint)
    task = TASKS["sst2"]
    task_data = finetune.prepare_task(task, config, finetune.load_tokenizer(src.tokenizer_dir), [])
    mesh = finetune.sharding.create_mesh(config.mesh.to_dict(), ONE_DEVICE)
    copies = config.parallel_seeds or config.num_seeds
    trainer = finetune.TaskTrainer(task, finetuning.load_encoder(src, config), config, mesh, task_data, copies)
    return trainer, task_data, src


def _encoder_arrays(params, copy=0):
    return {p: np.asarray(v)[copy] for p, v in nnx.to_flat_state(params["convbert"])}


@pytest.mark.slow
def test_random_init_starts_from_fresh_weights_with_the_same_config_and_tokenizer(checkpoint):
    pretrained, _, src = _sst2_trainer(checkpoint)
    control, _, random_src = _sst2_trainer(finetuning.RANDOM_INIT + checkpoint)
    assert random_src.random_init and not src.random_init
    assert (random_src.model_dir, random_src.tokenizer_dir) == (src.model_dir, src.tokenizer_dir)
    assert control.encoder.params is None and control.encoder.config == pretrained.encoder.config
    ours, fresh, fresh_again = (
        _encoder_arrays(t.init_state([seed]).params) for t, seed in ((pretrained, 0), (control, 0), (control, 1))
    )
    assert ours.keys() == fresh.keys() and all(ours[k].shape == fresh[k].shape for k in ours)
    kernels = [k for k in ours if k[-1] == "kernel"]
    assert kernels and not any(np.array_equal(ours[k], fresh[k]) for k in kernels)  # not the checkpoint's weights
    assert not any(np.array_equal(fresh[k], fresh_again[k]) for k in kernels)  # every seed draws its own encoder
    expected = ConvBertModel.from_pretrained(checkpoint)
    np.testing.assert_array_equal(
        ours[("encoder", "layer", 0, "attention", "self", "query", "kernel")],
        np.asarray(expected.encoder.layer[0].attention.self.query.kernel[...]),
    )


def test_random_init_results_say_so(tmp_path, checkpoint, fake_training):
    summary = finetune.run(
        tiny_config("sst2", finetuning.RANDOM_INIT + checkpoint, data_dir=os.path.join(ROOT, "data", "glue_sample")),
        str(tmp_path / "r"),
    )
    assert (summary["init"], summary["freeze_encoder"]) == ("random", False)
    assert "random initialisation" in (tmp_path / "r" / "results.md").read_text()


@pytest.mark.slow
def test_frozen_encoder_stays_bit_for_bit_and_the_head_trains(checkpoint):
    """The frozen encoder run in the step (probe 'per_step_dropout', the earlier probe), 2 seeds together."""
    trainer, task_data, _ = _sst2_trainer(
        checkpoint, freeze_encoder=True, probe="per_step_dropout", batch_size=8, num_seeds=2
    )
    state = trainer.init_state([0, 1])
    before = _encoder_arrays(state.params)
    head_before = {p: np.asarray(v) for p, v in nnx.to_flat_state(state.params["classifier"])}
    for step in range(3):
        rows = [np.arange(step * 8, (step + 1) * 8)] * 2
        state, _ = trainer.train_step(
            state, trainer.batch([task_data.train] * 2, rows, trainer.input_keys + ("labels",))
        )
    for copy in (0, 1):
        after = _encoder_arrays(state.params, copy)
        assert all(np.array_equal(before[k], after[k]) for k in before)
    head_after = {p: np.asarray(v) for p, v in nnx.to_flat_state(state.params["classifier"])}
    assert any(not np.array_equal(head_before[k], head_after[k]) for k in head_before)
