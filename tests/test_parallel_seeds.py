"""Seeds trained together (`config.parallel_seeds`), batches grouped by length and cut (`config.group_by_length`,
on in the tiny recipe these tests run), probes on cached features, a non-finite loss that stops one seed, and the
persistent compilation cache (docs/finetuning.md)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from convbert import finetuning
from convbert.glue import finetune
from convbert.glue.tasks import TASKS
from helpers import ONE_DEVICE, save_random_encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "glue_sample")
sys.path.insert(0, os.path.join(ROOT, "configs"))
import finetune_glue as glue_config  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_random_encoder(str(tmp_path_factory.mktemp("ckpt")))


def sst2_config(checkpoint, **overrides):
    """One epoch of 15 steps (batch 16) on the SST-2 sample, losses logged every step."""
    c = glue_config.get_config("sst2,tiny")
    c.update(init_checkpoint=checkpoint, data_dir=SAMPLE, batch_size=16, eval_batch_size=16, num_train_epochs=1)
    c.update(log_every_steps=1, **overrides)
    return c


def losses(workdir, seed):
    path = os.path.join(workdir, "sst2", f"seed_{seed}", "metrics.jsonl")
    with open(path) as f:
        return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


def dev(summary):
    return {s["seed"]: s["accuracy"] for s in summary["tasks"]["sst2"]["seeds"]}


@pytest.mark.slow
def test_seeds_together_match_seeds_one_at_a_time_and_an_interrupted_group_restarts(tmp_path, checkpoint, monkeypatch):
    alone = finetune.run(sst2_config(checkpoint, num_seeds=3, parallel_seeds=1), str(tmp_path / "alone"), ONE_DEVICE)

    real, calls = finetune.train_group, []

    def interrupted(trainer, task_data, seeds, task_dir):
        calls.append(seeds)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second group dies mid-run
        return real(trainer, task_data, seeds, task_dir)

    together = str(tmp_path / "together")
    monkeypatch.setattr(finetune, "train_group", interrupted)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(sst2_config(checkpoint, num_seeds=3, parallel_seeds=2), together, ONE_DEVICE)
    assert calls == [[0, 1], [2]]
    assert os.path.isfile(os.path.join(together, "sst2", "seed_1", "result.json"))
    assert not os.path.exists(os.path.join(together, "sst2", "seed_2", "result.json"))
    summary = finetune.run(sst2_config(checkpoint, num_seeds=3, parallel_seeds=2), together, ONE_DEVICE)
    assert calls[2:] == [[2]]  # finished seeds read back, the interrupted group trained again
    for seed in range(3):
        np.testing.assert_allclose(losses(together, seed), losses(str(tmp_path / "alone"), seed), rtol=2e-5)
    assert dev(summary) == dev(alone)
    assert summary["tasks"]["sst2"]["median"] == alone["tasks"]["sst2"]["median"]


def _trainer(source, **overrides):
    """A TaskTrainer of two seeds on the SST-2 sample, batch 8."""
    config = sst2_config(source, batch_size=8, eval_batch_size=8, num_seeds=2, **overrides)
    src = finetuning.resolve_source(config.init_checkpoint)
    task = TASKS["sst2"]
    task_data = finetune.prepare_task(task, config, finetune.load_tokenizer(src.tokenizer_dir), [])
    mesh = finetune.sharding.create_mesh(config.mesh.to_dict(), ONE_DEVICE)
    return finetune.TaskTrainer(task, finetuning.load_encoder(src, config), config, mesh, task_data, 2), task_data


def _flat(params, name):
    return {p: np.asarray(v) for p, v in nnx.to_flat_state(params[name])}


@pytest.mark.slow
@pytest.mark.parametrize("control", [False, True])
def test_a_probe_on_cached_features_is_the_step_by_step_probe_and_leaves_the_encoder_alone(
    tmp_path, checkpoint, control
):
    """Two seeds; the control (`random:`) caches features per seed, a loaded encoder once for all."""
    source = (finetuning.RANDOM_INIT if control else "") + checkpoint
    runs = {}
    for probe in ("cached", "per_step"):
        trainer, task_data = _trainer(source, freeze_encoder=True, probe=probe)
        state = trainer.init_state([0, 1])
        encoder = _flat(state.params, "convbert")
        train = [task_data.train] * 2
        if trainer.cached:
            features = finetune.data.FEATURES
            train = trainer.cached_features(state, task_data.train, features, str(tmp_path), trainer.lengths(train[0]))
            assert train[0]["cls"].shape == (len(task_data.train["labels"]), 1, 64)
            assert (train[0] is train[1]) != control
        step_losses = []
        for step in range(4):
            rows = [np.arange(step * 8, (step + 1) * 8), np.arange(40 - step * 8, 48 - step * 8)]
            state, out = trainer.train_step(state, trainer.batch(train, rows, (*trainer.input_keys, "labels")))
            step_losses.append(np.asarray(out["loss"])[:, 0])
        after = _flat(state.params, "convbert")
        assert all(np.array_equal(encoder[k], after[k]) for k in encoder)  # untouched, bit for bit
        runs[probe] = np.array(step_losses), _flat(state.params, "classifier")
    np.testing.assert_allclose(runs["cached"][0], runs["per_step"][0], rtol=1e-5)
    assert not np.allclose(runs["cached"][0][:, 0], runs["cached"][0][:, 1])  # the two seeds differ
    for k, v in runs["per_step"][1].items():
        np.testing.assert_allclose(runs["cached"][1][k], v, rtol=1e-4, atol=1e-6)


def test_row_lengths_reach_past_the_last_real_token_in_multiples_of_16():
    mask = np.zeros((5, 64), np.int32)
    for i, n in enumerate([1, 8, 9, 60, 0]):
        mask[i, :n] = 1
    np.testing.assert_array_equal(finetuning.row_lengths(mask, 8), [16, 16, 32, 64, 16])
    np.testing.assert_array_equal(finetuning.row_lengths(mask, 0), [16, 16, 16, 64, 16])


def test_length_grouped_batches_give_every_seed_the_same_lengths_and_its_own_rows():
    lengths = np.random.default_rng(0).choice([16, 32, 48, 64], size=100)
    orders = [np.random.default_rng(seed).permutation(100) for seed in range(3)]
    plain = finetuning.trainer.epoch_batches(orders, 8, 1)  # consecutive slices, not cut
    assert [(rows[0].tolist(), length) for rows, length in plain[:2]] == [
        (orders[0][:8].tolist(), None),
        (orders[0][8:16].tolist(), None),
    ]
    steps = finetuning.trainer.epoch_batches(orders, 8, 1, lengths)
    alone = finetuning.trainer.epoch_batches(orders[2:], 8, 1, lengths)
    assert len(steps) == len(alone) == 12
    for (rows, length), (rows_alone, length_alone) in zip(steps, alone, strict=True):
        assert length == length_alone and np.array_equal(rows[2], rows_alone[0])  # as the seed draws alone
        assert [lengths[r].max() for r in rows] == [length] * 3  # cut to each copy's longest row
    for c in range(3):  # each copy's rows once in the epoch, random within a length
        seen = np.concatenate([rows[c] for rows, _ in steps])
        assert len(set(seen.tolist())) == 96
    assert len({tuple(steps[0][0][c]) for c in range(3)}) == 3
    schedule = [length for _, length in steps]
    assert sorted(schedule) == np.sort(lengths)[7::8].tolist() and schedule != sorted(schedule)
    assert schedule != [length for _, length in finetuning.trainer.epoch_batches(orders, 8, 2, lengths)]


def test_batches_cut_past_the_reach_give_the_logits_of_the_padded_batch(checkpoint):
    """Rows of 3 to 64 tokens, batches of 8 (the last filled up); cut without the convolutions' reach, the
    last tokens of the longest rows would see past a cut and the logits would change."""
    trainer, _ = _trainer(checkpoint)
    rng = np.random.default_rng(0)
    n, t = 36, 64
    real = rng.integers(3, t + 1, n)
    mask = (np.arange(t) < real[:, None]).astype(np.int32)
    features = {
        "input_ids": np.where(mask, rng.integers(1000, 2000, (n, t)), 0).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": ((np.arange(t) >= real[:, None] // 2) & (mask == 1)).astype(np.int32),
    }
    params = trainer.init_state([0, 1]).params
    full = finetuning.predict(trainer, params, [features] * 2)
    assert full.shape == (2, n, 2)
    lengths = trainer.lengths(features)
    assert trainer.model_config.conv_reach == 8 and len(set(lengths.tolist())) == 4
    np.testing.assert_allclose(finetuning.predict(trainer, params, [features] * 2, lengths), full, rtol=1e-5, atol=1e-6)
    no_reach = finetuning.predict(trainer, params, [features] * 2, finetuning.row_lengths(mask, 0))
    assert not np.allclose(no_reach, full, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_diverging_seed_stops_alone_and_the_others_finish_as_they_would_alone(tmp_path, checkpoint, monkeypatch):
    with pytest.raises(
        finetuning.SeedsDiverged, match=r"sst2 seed 0 \(step \d+\), sst2 seed 1 \(step \d+\).*learning_rate"
    ):
        finetune.run(sst2_config(checkpoint, num_seeds=2, learning_rate=1e6), str(tmp_path / "nan"), ONE_DEVICE)
    assert not os.path.exists(tmp_path / "nan" / "sst2" / "seed_0" / "result.json")
    assert not os.path.exists(tmp_path / "nan" / "submission" / "SST-2.tsv")

    alone = finetune.run(sst2_config(checkpoint, num_seeds=1, seed=1), str(tmp_path / "alone"), ONE_DEVICE)
    init_state = finetuning.Trainer.init_state

    def poisoned(self, seeds):  # seed 0's head starts at NaN: its first loss is not finite
        state = init_state(self, seeds)
        kernel = state.params["classifier"]["out_proj"]["kernel"]
        kernel.set_value(kernel.get_value().at[seeds.index(0)].set(np.nan))
        return state

    monkeypatch.setattr(finetuning.Trainer, "init_state", poisoned)
    workdir = str(tmp_path / "group")
    with pytest.raises(finetuning.SeedsDiverged, match=r"no results for sst2 seed 0 \(step 1\)\.") as e:
        finetune.run(sst2_config(checkpoint, num_seeds=2), workdir, ONE_DEVICE)
    assert e.value.exit_code == 65 and e.value.failed == {"sst2 seed 0": 1}
    result = json.loads((tmp_path / "group" / "sst2" / "result.json").read_text())
    assert [s["seed"] for s in result["seeds"]] == [1] and result["diverged"] == {"0": 1}
    assert result["submission_seed"] == 1 and os.path.isfile(tmp_path / "group" / "submission" / "SST-2.tsv")
    assert not os.path.exists(tmp_path / "group" / "sst2" / "seed_0" / "result.json")
    np.testing.assert_allclose(losses(workdir, 1), losses(str(tmp_path / "alone"), 1), rtol=2e-5)
    assert result["seeds"][0]["dev"]["accuracy"] == alone["tasks"]["sst2"]["seeds"][0]["accuracy"]


CACHE_PROBE = """
import sys
import jax, jax.numpy as jnp
from jax._src import monitoring
from convbert import compile_cache
hits = []
monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
print(compile_cache.enable(sys.argv[1] if len(sys.argv) > 1 else None))
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
print(len(hits))
"""


@pytest.mark.slow
def test_the_compilation_cache_is_written_then_hit_and_can_be_turned_off(tmp_path):
    def run(*args, env=None):
        proc = subprocess.run(
            [sys.executable, "-c", CACHE_PROBE, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
            check=True,
        )
        return proc.stdout.split()

    cache = tmp_path / "xla"
    assert run(env={"CONVBERT_JAX_COMPILATION_CACHE": str(cache)}) == [str(cache), "0"]  # compiled, written
    assert os.listdir(cache)
    path, hits = run(str(cache))  # the flag's value: read back
    assert path == str(cache) and int(hits) > 0
    assert run("off", env={"CONVBERT_JAX_COMPILATION_CACHE": str(cache)}) == ["None", "0"]
