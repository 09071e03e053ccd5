"""SQuAD fine-tuning (convbert.squad.finetune): the recipes, the loss, a tiny end-to-end run on the committed
fixture that beats the trivial baselines and writes valid files, and a v2.0 run with its null odds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import background
from convbert.squad import data, finetune, metrics
from helpers import ONE_DEVICE, save_random_encoder
from pretraining_setup import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "squad")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import finetune_squad as squad_config  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random tiny encoder (N(0, 0.02) weights) in Hugging Face format, with the BERT uncased vocab."""
    return save_random_encoder(str(tmp_path_factory.mktemp("ckpt")))


def tiny_config(version, checkpoint, **overrides):
    c = squad_config.get_config(f"{version},tiny")
    c.update({"init_checkpoint": checkpoint, "data_dir": FIXTURES, **overrides})
    return c


def test_config_recipe_per_size():
    for size, lr in (("small", 3e-4), ("medium_small", 3e-4), ("base", 1e-4)):
        c = squad_config.get_config(f"v2,{size}")
        assert (c.learning_rate, c.layerwise_lr_decay, c.num_train_epochs, c.batch_size) == (lr, 0.8, 2, 32)
        assert (c.max_seq_length, c.doc_stride, c.max_query_length, c.max_answer_length) == (512, 128, 64, 30)
        assert c.init_checkpoint == f"YituTech/conv-bert-{size.replace('_', '-')}" and c.data_dir == ""
    tiny = squad_config.get_config("v1,tiny")
    assert (tiny.max_seq_length, tiny.doc_stride, tiny.max_query_length) == (128, 32, 24)
    with pytest.raises(ValueError, match="unknown version 'v3'"):
        squad_config.get_config("v3,base")
    large = squad_config.get_config("v1,large")  # ELECTRA-large's fine-tuning recipe
    assert (large.learning_rate, large.layerwise_lr_decay, large.init_checkpoint) == (
        5e-5,
        0.9,
        "workdirs/pretrain_large",
    )
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        squad_config.get_config("v1,huge")


def test_loss_is_the_mean_span_cross_entropy_plus_the_weighted_answerability_loss():
    start = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    end = jnp.log(jnp.array([[0.1, 0.1, 0.8]]))
    batch = {"start_positions": jnp.array([1]), "end_positions": jnp.array([2]), "is_impossible": jnp.array([1])}
    span = (-np.log(0.25) - np.log(0.8)) / 2
    out = finetune.example_losses({"start_logits": start, "end_logits": end}, batch, 0.5)
    np.testing.assert_allclose(out, [span], rtol=1e-6)
    out = finetune.example_losses(
        {"start_logits": start, "end_logits": end, "null_logits": jnp.array([0.3])}, batch, 0.5
    )
    np.testing.assert_allclose(out, [span + 0.5 * np.log1p(np.exp(-0.3))], rtol=1e-6)


def baselines(version):
    """EM / F1 of answering every dev question with the passage's first (or last) speaker."""
    dev = data.load_json(os.path.join(FIXTURES, data.FILES[version]["dev"]), version)
    gold = {ex.qid: [t for t, _ in ex.answers] for ex in dev}
    out = {}
    for name, pick in (("first", lambda c: c.split(".")[0]), ("last", lambda c: c.split("\n")[-1].split(".")[0])):
        out[name] = metrics.evaluate_v1(gold, {ex.qid: pick(ex.context) for ex in dev})
    return gold, out


def run_driver(workdir, version: str, optimized: bool = False, **flags) -> subprocess.CompletedProcess:
    """`python finetune_squad.py --config=configs/finetune_squad.py:VERSION,tiny --config.KEY=VALUE...` on 8 CPU
    devices; `optimized`: LLVM optimizes as for users (not the tests' -O0: tests/conftest.py), for a long run."""
    command = [sys.executable, os.path.join(ROOT, "finetune_squad.py"), f"--workdir={workdir}"]
    command += [f"--config={os.path.join(ROOT, 'configs', 'finetune_squad.py')}:{version},tiny"]
    command += [f"--config.{k}={v}" for k, v in flags.items()]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=subprocess_env(8, optimized))


@background.fixture
def squad_v1_run():
    """(checkpoint, workdir, the driver's process) of `finetune_squad.py` on the v1.1 fixture: a random tiny encoder,
    data parallel over 8 CPU devices, 10 epochs of 29 steps."""
    root = background.directory("squad_v1")
    checkpoint = save_random_encoder(os.path.join(root, "ckpt"))
    workdir = os.path.join(root, "v1")
    return checkpoint, workdir, run_driver(workdir, "v1", optimized=True, init_checkpoint=checkpoint, data_dir=FIXTURES)


@pytest.mark.slow
def test_tiny_finetune_beats_the_trivial_baselines_and_writes_valid_files(squad_v1_run):
    """`squad_v1_run` (finetune_squad.py): more than 3 F1 above always answering the first or the last speaker."""
    checkpoint, workdir, done = squad_v1_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(Path(workdir, "results.json").read_text(encoding="utf-8"))
    gold, trivial = baselines("v1")
    best_trivial_f1 = max(b["f1"] for b in trivial.values())
    assert results["f1"] > best_trivial_f1 + 3.0, (results, trivial)
    predictions = json.loads(Path(workdir, "predictions.json").read_text(encoding="utf-8"))
    assert set(predictions) == set(gold) and all(isinstance(v, str) for v in predictions.values())
    assert metrics.evaluate_v1(gold, predictions)["f1"] == pytest.approx(results["f1"])
    assert {"exact_match", "f1", "seeds", "median"} <= set(results) and results["answer_mismatches"] == {
        "train": 0,
        "dev": 0,
    }
    assert "| ours, median of 1 |" in Path(workdir, "results.md").read_text()
    seed_dir = os.path.join(workdir, "seed_0")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(seed_dir))
    logged = [json.loads(line) for line in Path(seed_dir, "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in logged) and any("dev/f1" in r for r in logged)
    # a rerun reads the finished seed back instead of training
    os.remove(os.path.join(seed_dir, "metrics.jsonl"))
    assert finetune.run(tiny_config("v1", checkpoint), workdir)["f1"] == results["f1"]
    assert not os.path.exists(os.path.join(seed_dir, "metrics.jsonl"))


@pytest.mark.slow
def test_v2_writes_null_odds_and_the_threshold_numbers(tmp_path, checkpoint):
    """One epoch of a freshly initialised encoder (random:SRC) at length 64 on the v2.0 fixture: the files."""
    workdir = str(tmp_path / "v2")
    summary = finetune.run(
        tiny_config(
            "v2",
            f"random:{checkpoint}",
            num_train_epochs=1,
            batch_size=32,
            eval_batch_size=64,
            max_seq_length=64,
            doc_stride=16,
            max_query_length=16,
        ),
        workdir,
        ONE_DEVICE,
    )
    predictions = json.loads(Path(workdir, "predictions.json").read_text(encoding="utf-8"))
    odds = json.loads(Path(workdir, "null_odds.json").read_text(encoding="utf-8"))
    assert set(predictions) == set(odds) and all(isinstance(v, float) for v in odds.values())
    assert all(v == "" for q, v in predictions.items() if odds[q] > summary["null_threshold"])
    for key in ("exact_match", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1"):
        assert key in summary, key
    # every plain threshold answers a prefix of the questions sorted by odds, which the best-threshold sweep visits
    assert summary["best_f1"] >= summary["f1"] - 1e-9 and summary["best_exact"] >= summary["exact_match"] - 1e-9


def test_missing_files_and_bad_keys_fail_before_training(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match=r"train-v2.0.json, .*dev-v2.0.json"):
        finetune.run(tiny_config("v2", checkpoint, data_dir=str(tmp_path)), str(tmp_path / "w"))
    config = tiny_config("v1", checkpoint)
    config.version = "v3"
    with pytest.raises(ValueError, match=r"config\.version must be one of v1, v2"):
        finetune.run(config, str(tmp_path / "w"))
    with pytest.raises(ValueError, match="max_seq_length=256 exceeds the checkpoint's max_position_embeddings=128"):
        finetune.run(tiny_config("v1", checkpoint, max_seq_length=256), str(tmp_path / "w"))


@pytest.mark.slow
def test_a_diverging_run_exits_65_without_results(tmp_path, checkpoint):
    """SQuAD at a huge learning rate, 2 seeds together: both stop at their first non-finite loss, no files."""
    workdir = tmp_path / "nan"
    config = tiny_config(
        "v1", checkpoint, num_seeds=2, num_train_epochs=1, learning_rate=1e6, max_seq_length=64, doc_stride=16
    )
    config.update(max_query_length=16, warmup_proportion=0.0)
    keys = ("init_checkpoint", "num_seeds", "num_train_epochs", "learning_rate", "max_seq_length", "doc_stride")
    proc = run_driver(workdir, "v1", **{k: config[k] for k in (*keys, "max_query_length", "warmup_proportion")})
    assert proc.returncode == 65, proc.stderr[-2000:]
    assert "finetune_squad.py: SeedsDiverged: non-finite loss, no results for SQuAD seed 0 (step" in proc.stderr
    assert "SQuAD seed 1 (step" in proc.stderr and "config.learning_rate" in proc.stderr
    assert not (workdir / "results.json").exists() and not (workdir / "seed_0" / "result.json").exists()


@pytest.mark.slow
def test_finetunes_from_a_sentencepiece_checkpoint(tmp_path):
    """Issue 23 case 6: a checkpoint with the project's SentencePiece tokenizer (the tiny recipe's) fine-tunes on
    SQuAD (before: "sentencepiece tokenizers give no character offsets; SQuAD needs WordPiece"), and every
    prediction is a span of its context, the non-ASCII paragraph's included."""
    from convbert.data.sources import DEMO_CORPUS_DIR
    from convbert.tokenization import train_sentencepiece

    source = str(tmp_path / "ckpt")
    save_random_encoder(source)
    os.remove(os.path.join(source, "vocab.txt"))
    sp = train_sentencepiece([os.path.join(DEMO_CORPUS_DIR, "hamlet.txt")], str(tmp_path / "sp"), vocab_size=400)
    sp.save(source)
    workdir = str(tmp_path / "v1")
    config = tiny_config(
        "v1", f"random:{source}", num_train_epochs=1, batch_size=32, eval_batch_size=64, max_seq_length=64
    )
    config.update(doc_stride=16, max_query_length=16)
    finetune.run(config, workdir, ONE_DEVICE)
    predictions = json.loads(Path(workdir, "predictions.json").read_text(encoding="utf-8"))
    dev = data.load_json(os.path.join(FIXTURES, data.FILES["v1"]["dev"]), "v1")
    assert set(predictions) == {ex.qid for ex in dev}
    assert all(predictions[ex.qid] in ex.context for ex in dev)
