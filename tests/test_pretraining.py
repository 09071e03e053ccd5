"""End-to-end pretraining runs (`train_and_evaluate`, `pretrain.py`) on the tiny config shrunk by overrides.

Exactness claims tested here, all on CPU: resuming (after a preemption, a SIGKILL, or from an older checkpoint
when the newest is unreadable) reproduces the uninterrupted run bit for bit; resuming onto another mesh
reproduces it to 1e-5 relative (different reduction order).
"""

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import background
import pretraining_setup as setup
from convbert import config_checks, faults, metric_writer, pretraining, resume, sharding
from convbert.checkpoint import Checkpointer

ONE = jax.devices()[:1]


def train(config, workdir, devices=ONE):
    return pretraining.train_and_evaluate(config, str(workdir), devices=devices)


def steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """8 uninterrupted steps on one device (checkpoints 4, 6, 8 kept): (workdir, losses, final state)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    config = setup.tiny_config()
    train(config, workdir)
    return workdir, setup.losses(workdir), setup.load_state(workdir, 8, config)


def copy_run(straight, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(straight[0], workdir)
    return workdir


@pytest.mark.slow
def test_resume_after_sigterm_is_bitwise(straight, tmp_path, monkeypatch):
    """SIGTERM at step 3 -> checkpoint 3 and a stop that says so (`faults.Preempted`); the restart finishes steps
    4-8 exactly."""
    config, workdir = setup.tiny_config(), str(tmp_path)
    original = Checkpointer.reached_preemption

    def sigterm_at_3(self, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step)

    monkeypatch.setattr(Checkpointer, "reached_preemption", sigterm_at_3)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(faults.Preempted, match="stopped for preemption at step 3 of 8"):
        train(config, workdir)
    assert signal.getsignal(signal.SIGTERM) is handler  # ours is removed at the end
    assert steps(workdir) == [2, 3] and sorted(setup.losses(workdir)) == [1, 2, 3]
    assert not os.path.exists(os.path.join(workdir, "export"))
    monkeypatch.undo()
    train(config, workdir)
    assert setup.losses(workdir) == straight[1]
    assert_trees_equal(setup.load_state(workdir, 8, config), straight[2])


@background.fixture
def sigkill_runs():
    """pretrain.py run uninterrupted, and pretrain.py killed with SIGKILL after its first checkpoint and started
    again (both subprocesses with one CPU device: the in-process runs see 8 devices, which changes XLA's CPU
    threading and the last bits of some sums): {'reference', 'workdir', 'killed': (exit code, steps saved then)}."""
    root = background.directory("sigkill")
    env = setup.subprocess_env(num_devices=1)

    def command(workdir):
        return [sys.executable, "pretrain.py", f"--workdir={workdir}", *setup.cli_flags()]

    def run(workdir):
        done = subprocess.run(command(workdir), cwd=setup.REPO, env=env, capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-3000:]

    reference, workdir = os.path.join(root, "reference"), os.path.join(root, "run")
    run(reference)
    proc = subprocess.Popen(
        command(workdir), cwd=setup.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while not os.path.isdir(os.path.join(workdir, "checkpoints", "2")):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    proc.stderr.close()
    killed = proc.returncode, steps(workdir)
    run(workdir)
    return {"reference": reference, "workdir": workdir, "killed": killed}


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise(sigkill_runs):
    """pretrain.py killed with SIGKILL after its first checkpoint and started again ends exactly where an
    uninterrupted pretrain.py run does (`sigkill_runs`)."""
    reference, workdir = sigkill_runs["reference"], sigkill_runs["workdir"]
    returncode, saved = sigkill_runs["killed"]
    assert returncode == -signal.SIGKILL
    assert 2 in saved and 8 not in saved
    assert setup.losses(workdir) == setup.losses(reference)
    config = setup.tiny_config()
    assert_trees_equal(setup.load_state(workdir, 8, config), setup.load_state(reference, 8, config))


@pytest.mark.slow
def test_unreadable_latest_checkpoint_falls_back(straight, tmp_path):
    """Garbage in checkpoint 8's array files: the run warns, resumes from 6 and redoes 7-8 exactly."""
    workdir = copy_run(straight, tmp_path)
    for f in glob.glob(os.path.join(workdir, "checkpoints", "8", "state", "d", "*")):
        with open(f, "wb") as fh:
            fh.write(b"garbage")
    train(setup.tiny_config(), workdir)
    assert steps(workdir) == [4, 6, 8]
    assert glob.glob(os.path.join(workdir, "checkpoints", "8.unreadable-*"))
    assert_trees_equal(setup.load_state(workdir, 8, setup.tiny_config()), straight[2])


@pytest.mark.slow
def test_resume_onto_another_mesh(straight, tmp_path):
    """Checkpoint 6 of the one-device run resumed on a (2, 2, 2) data/fsdp/model mesh of 8 devices."""
    workdir = copy_run(straight, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    config = setup.tiny_config(mesh__data=2, mesh__fsdp=2, mesh__model=2)
    train(config, workdir, devices=jax.devices())
    got = setup.losses(workdir)
    np.testing.assert_allclose([got[7], got[8]], [straight[1][7], straight[1][8]], rtol=1e-5)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6),
        setup.load_state(workdir, 8, config).params,
        straight[2].params,
    )


@pytest.mark.slow
def test_scanned_layers_with_remat_train_resume_and_export(straight, tmp_path, monkeypatch):
    """model.scan_layers=True with remat 'dots' (the same initial parameters, stacked, and the same dropout keys):
    the straight run's losses and parameters; the stacked state checkpoints, resumes after a SIGTERM at step 3
    and restores; the exported discriminator holds the same weights as per-layer tensors."""
    from convbert.hf_io import split_stacked
    from convbert.modeling import ConvBertModel

    config, workdir = setup.tiny_config(model__scan_layers=True, model__remat="dots", export_hf=True), str(tmp_path)
    original = Checkpointer.reached_preemption
    monkeypatch.setattr(Checkpointer, "reached_preemption", lambda self, step: step == 3 or original(self, step))
    with pytest.raises(faults.Preempted):
        train(config, workdir)
    assert steps(workdir) == [2, 3]
    monkeypatch.undo()
    train(config, workdir)
    got = setup.losses(workdir)
    np.testing.assert_allclose([got[s] for s in range(1, 9)], [straight[1][s] for s in range(1, 9)], rtol=1e-5)
    state = setup.load_state(workdir, 8, config)
    assert state.params["discriminator"]["encoder"]["layer"]["output"]["dense"]["kernel"].shape == (1, 512, 128)
    flat = lambda params: split_stacked({p: np.asarray(v) for p, v in nnx.to_flat_state(params)})
    ours, plain = flat(state.params), flat(straight[2].params)
    assert ours.keys() == plain.keys()
    for p in plain:
        np.testing.assert_allclose(ours[p], plain[p], rtol=1e-4, atol=1e-6)
    exported = ConvBertModel.from_pretrained(os.path.join(workdir, "export", "discriminator"))
    np.testing.assert_array_equal(
        exported.encoder.layer[0].output.dense.kernel[...],
        ours[("discriminator", "encoder", "layer", 0, "output", "dense", "kernel")],
    )


def _tree_hash(path):
    h = hashlib.sha256()
    for f in sorted(glob.glob(os.path.join(path, "**"), recursive=True)):
        if os.path.isfile(f):
            h.update(f.encode())
            h.update(Path(f).read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_nan_loss_stops_without_saving(straight, tmp_path, monkeypatch):
    """Parameters poisoned with NaN on restore (step 6): step 7's loss is NaN, the run stops with a clear
    error, and the checkpoints on disk are untouched."""
    workdir = copy_run(straight, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "8"))
    before = _tree_hash(os.path.join(workdir, "checkpoints"))
    original = Checkpointer.restore

    def poisoned(self, *args, **kwargs):
        step, state, meta = original(self, *args, **kwargs)
        return step, state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params)), meta

    monkeypatch.setattr(Checkpointer, "restore", poisoned)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan .* at step 7.*checkpoints/6"):
        train(setup.tiny_config(), workdir)
    assert steps(workdir) == [4, 6]
    assert _tree_hash(os.path.join(workdir, "checkpoints")) == before


@pytest.mark.parametrize(
    "changes, key",
    [
        (dict(mesh__data=3), "config.mesh"),
        (dict(batch_size=6), "config.batch_size"),
        (dict(grad_accum_steps=3), "config.grad_accum_steps"),
        (dict(grad_accum_steps=2), "config.grad_accum_steps"),  # micro-batch 4 over 8 devices
        (dict(model__vocab_size=1000), "config.model.vocab_size"),
        (dict(model__max_position_embeddings=32), "config.model.max_position_embeddings"),
        (dict(max_seq_length=32), "config.max_seq_length"),
    ],
)
def test_config_errors_name_the_key_before_compiling(changes, key, tmp_path, monkeypatch):
    monkeypatch.setattr(pretraining, "Pretrainer", lambda *a: pytest.fail("reached the model"))
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        train(setup.tiny_config(**changes), tmp_path, devices=jax.devices())


@pytest.mark.slow
def test_smoke_prepares_data_evaluates_exports(tmp_path):
    """Default data path (corpus -> workdir/data), eval, profile trace, all outputs; the exported discriminator
    loads in transformers and computes what ours does."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from convbert.data.sources import DEMO_CORPUS_DIR
    from convbert.modeling import ConvBertModel

    corpus = ",".join(os.path.join(DEMO_CORPUS_DIR, f) for f in ("macbeth.txt", "tempest.txt"))
    config = setup.tiny_config(
        data__data_dir="",
        data__corpus=corpus,
        data__eval_fraction=0.5,
        num_eval_steps=2,
        eval_every_steps=4,
        export_hf=True,
        profile__start_step=3,
        profile__num_steps=2,
    )
    result = train(config, tmp_path)
    losses = setup.losses(tmp_path)
    assert np.mean([losses[7], losses[8]]) < np.mean([losses[1], losses[2]]) - 2.0, losses
    assert np.isfinite(result["eval/loss"]) and result["eval/loss"] < losses[1]

    assert resume.latest_config(str(tmp_path / "config.json"))["batch_size"] == 8
    assert os.path.isfile(tmp_path / "data" / "manifest.json")
    assert os.path.isfile(tmp_path / "tokenizer" / "text_tokenizer.json")
    assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"train/gen_loss", "train/disc_accuracy", "perf/tokens_per_sec_per_device", "perf/mfu"} <= set(
        records[-2]
    ) and [r["step"] for r in records if "eval/loss" in r] == [4, 8]
    assert steps(tmp_path) == [4, 6, 8]

    disc = str(tmp_path / "export" / "discriminator")
    hf = transformers.ConvBertModel.from_pretrained(disc).eval()
    ours = ConvBertModel.from_pretrained(disc)
    ids = np.random.default_rng(0).integers(200, 3000, (2, 16))
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(ours(ids).last_hidden_state), expected, atol=1e-4)
    assert transformers.ConvBertTokenizer.from_pretrained(disc).convert_tokens_to_ids("[MASK]") == 103
    assert "convbert_jax.safetensors" in (tmp_path / "export" / "generator" / "README.txt").read_text()


def test_bfloat16_compute_with_float32_state():
    """model.dtype=bfloat16: the step's matmuls run in bfloat16; parameters and Adam moments stay float32."""
    mesh = sharding.create_mesh({}, ONE)
    trainer = pretraining.Pretrainer(
        setup.tiny_config(model__dtype="bfloat16"), mesh, {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    )
    state = trainer.abstract_state()
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.opt_state) if x.ndim} == {jnp.dtype("float32")}
    jaxpr = str(jax.make_jaxpr(trainer.train_step)(state, trainer.abstract_batch(trainer.batch_shapes)))
    assert "dot_general" in jaxpr and "bf16[8,64,128]" in jaxpr


def test_throughput_and_mfu(monkeypatch):
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(metric_writer.time, "perf_counter", lambda: next(clock))
    rates = metric_writer.Throughput(tokens_per_step=1000, flops_per_step=1e12, num_train_steps=100)
    rates.restart(1)
    out = rates(21)  # 20 steps in 10 s on 8 CPU devices of one process (185 GFLOP/s in all)
    assert out["perf/tokens_per_sec"] == 2000 and out["perf/tokens_per_sec_per_device"] == 250
    assert out["perf/eta_seconds"] == pytest.approx(39.5)
    assert out["perf/mfu"] == pytest.approx(2e12 / 185e9)


@pytest.mark.slow
def test_mlm_objective_learns_and_exports_an_encoder_fine_tuning_finds(tmp_path):
    """objective='mlm': one encoder of the discriminator's size, masked-LM loss only; its export is what a
    fine-tuning run of this workdir loads."""
    from convbert import ConvBertForMaskedLM, finetuning, flops

    config = setup.tiny_config(
        objective="mlm",
        export_hf=True,
        num_train_steps=12,
        eval_every_steps=12,
        num_eval_steps=1,
        **{"optimizer__learning_rate": 1e-3},
    )
    result = train(config, tmp_path)
    losses = setup.losses(tmp_path)
    assert np.mean([losses[11], losses[12]]) < np.mean([losses[1], losses[2]]) - 0.5, losses
    assert "eval/gen_accuracy" in result and not any(k.startswith("eval/disc") for k in result)
    assert sorted(os.listdir(tmp_path / "export")) == ["mlm"]
    model = ConvBertForMaskedLM.from_pretrained(str(tmp_path / "export" / "mlm"))
    assert model.config.hidden_size == config.model.hidden_size
    assert finetuning.resolve_source(str(tmp_path)).model_dir == str(tmp_path / "export" / "mlm")
    disc, gen = flops.configs_from(config)
    electra_config = setup.tiny_config()
    assert gen is None and flops.training_flops_per_step(disc, None, 8, 64) < flops.training_flops_per_step(
        *flops.configs_from(electra_config), 8, 64
    )
    with pytest.raises(ValueError, match=r"config\.objective='bert'"):
        config_checks.check_pretraining(setup.tiny_config(objective="bert"))
