"""The resume contract (`convbert.resume`): a restart's config against the checkpoint's, the data position across
a batch-size change, the prepared data against the config's inputs, config.json's history of starts, and
fine-tuning reruns (issue 14, cases 1, 3 and 7)."""

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import pretraining_setup as setup
from convbert import config_file, pretrain_setup, pretraining, resume
from convbert.checkpoint import Checkpointer
from convbert.data import loader, prepare
from convbert.data.sources import DEMO_CORPUS_DIR

ONE = jax.devices()[:1]


def train(config, workdir):
    return pretraining.train_and_evaluate(config, str(workdir), devices=ONE)


def steps(workdir):
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def starts(workdir):
    return json.load(open(os.path.join(workdir, "config.json")))["starts"]


def meta(workdir, step):
    return json.load(open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")))


def fake_checkpoint(workdir, config, step=2):
    """A checkpoint whose meta records `config` (the state is a stand-in: the contract reads only the meta)."""
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), handle_sigterm=False)
    checkpoints.save(step, {"x": np.zeros(2)}, meta={"step": step, "config": config_file.to_json(config)})
    checkpoints.close()


# ---- the contract on a checkpoint's recorded config ----------------------------------------------


def test_changes_a_resume_may_not_make_are_listed_with_the_way_on(tmp_path):
    """Issue 14 case 1: batch size, model depth and corpus changed on restart: one error lists each change with
    its old and new value and says how to go on; run-length and logging changes pass and are returned."""
    fake_checkpoint(tmp_path, setup.tiny_config())
    changed = setup.tiny_config(
        batch_size=16, model__num_hidden_layers=2, data__corpus="other.txt", num_train_steps=20, log_every_steps=5
    )
    with pytest.raises(ValueError) as error:
        resume.check_config(changed, str(tmp_path))
    assert str(error.value) == (
        f"{tmp_path}/checkpoints/2 was written with another config; resuming with this one would change:\n"
        "  config.batch_size: 8 -> 16: changes what a step reads; if allowed, the data position is converted so "
        "that no example is skipped or repeated\n"
        "  config.data.corpus: 'data/pretrain_corpus' -> 'other.txt': changes the data\n"
        "  config.model.num_hidden_layers: 1 -> 2: changes the model\n"
        "Nothing was written. To go on: rerun with the checkpoint's values, start a new --workdir, or accept the "
        "changes with --config.resume.allow_changes=batch_size,data.corpus,model.num_hidden_layers"
    )
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]

    changed.resume.allow_changes = "batch_size, data ,model.num_hidden_layers"
    accepted = resume.check_config(changed, str(tmp_path))
    assert accepted.step == 2 and accepted.allows("data.corpus") and accepted.allows("data")
    assert [c.key for c in accepted.changes] == [
        "batch_size",
        "data.corpus",
        "log_every_steps",
        "model.num_hidden_layers",
        "num_train_steps",
        "resume.allow_changes",
    ]
    changed.resume.allow_changes = "batch_sise"
    with pytest.raises(
        ValueError,
        match=r"config\.resume\.allow_changes='batch_sise': config\.batch_sise is not a "
        r"key of this config; the nearest valid key is config\.batch_size",
    ):
        resume.check_config(changed, str(tmp_path))
    assert resume.check_config(setup.tiny_config(), str(tmp_path / "fresh")) is None
    assert not os.path.exists(tmp_path / "fresh")


def test_data_position_of_older_checkpoints():
    """Checkpoints written before the position was recorded read one global batch (their batch size) per step
    from example 0; newer ones say how many examples were read."""
    old = resume.DataPosition.restored(6, {"config": {"batch_size": 8}}, batch_size=4)
    assert old == resume.DataPosition(48, 6, 4) and old.meta(9, {"m": 1})["examples_read"] == 60
    new = resume.DataPosition.restored(9, {"data": old.meta(9, {"m": 1})}, batch_size=16)
    assert new == resume.DataPosition(60, 9, 16)


# ---- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """4 steps of batch 8 (checkpoints 2 and 4): (workdir, losses)."""
    workdir = str(tmp_path_factory.mktemp("first") / "run")
    train(setup.tiny_config(num_train_steps=4), workdir)
    return workdir, setup.losses(workdir)


def copy_of(first_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(first_run[0], workdir)
    return workdir


@pytest.mark.slow
def test_batch_size_change_is_refused_then_converted(first_run, tmp_path, monkeypatch):
    """Issue 14 case 1: `--config.batch_size=4` on restart stops before anything is built or written; with
    `--config.resume.allow_changes=batch_size` the run reads on from example 32 (4 steps x 8; before, it resumed at
    batch 4 of the new size, example 16, and read 16-31 twice), and config.json records both starts."""
    workdir = copy_of(first_run, tmp_path)
    before = Path(workdir, "config.json").read_text()
    changed = setup.tiny_config(num_train_steps=6, batch_size=4)
    with monkeypatch.context() as m:
        m.setattr(pretraining, "Pretrainer", lambda *a: pytest.fail("reached the model"))
        with pytest.raises(ValueError, match=r"(?s)config\.batch_size: 8 -> 4: .*allow_changes=batch_size$"):
            train(changed, workdir)
    assert Path(workdir, "config.json").read_text() == before and steps(workdir) == [2, 4]

    offsets = []
    make_iterator = loader.make_iterator
    monkeypatch.setattr(
        loader, "make_iterator", lambda *a, **kw: offsets.append(kw.get("example_offset")) or make_iterator(*a, **kw)
    )
    changed.resume.allow_changes = "batch_size"
    train(changed, workdir)
    assert offsets[0] == 32 and meta(workdir, 6)["data"]["examples_read"] == 32 + 2 * 4
    assert meta(workdir, 6)["data"]["batch_size"] == 4 and steps(workdir) == [2, 4, 6]
    history = starts(workdir)
    assert [s["step"] for s in history] == [0, 4] and history[0]["config"]["batch_size"] == 8
    assert history[1]["changes"] == {
        "batch_size": [8, 4],
        "num_train_steps": [4, 6],
        "resume.allow_changes": ["", "batch_size"],
    }


@pytest.mark.slow
def test_changed_model_is_a_config_diff_not_an_unreadable_checkpoint(first_run, tmp_path):
    """Issue 14 case 1: two layers instead of one is reported as a config change before anything is restored;
    forced through allow_changes, the restore names the other model; nothing is renamed or written."""
    workdir = copy_of(first_run, tmp_path)
    with pytest.raises(ValueError, match=r"config\.model\.num_hidden_layers: 1 -> 2: changes the model"):
        train(setup.tiny_config(model__num_hidden_layers=2), workdir)
    with pytest.raises(
        ValueError,
        match=r"checkpoints/4 holds another model than this config builds: \d+ arrays "
        r"of the model are not in it \(e\.g\. .*layer\.1\.",
    ):
        train(setup.tiny_config(model__num_hidden_layers=2, resume__allow_changes="model"), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"] and len(starts(workdir)) == 1


@pytest.mark.slow
def test_checkpoint_without_data_position_resumes_exactly(first_run, tmp_path):
    """A checkpoint of an earlier version (no data position in its meta) resumes at step x batch size: steps 3-4
    redone from checkpoint 2 give the first run's losses bit for bit."""
    workdir = copy_of(first_run, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    path = os.path.join(workdir, "checkpoints", "2", "meta", "metadata")
    old = {k: v for k, v in json.loads(Path(path).read_text()).items() if k != "data"}
    with open(path, "w") as f:
        json.dump(old, f)
    train(setup.tiny_config(num_train_steps=4), workdir)
    assert setup.losses(workdir) == first_run[1]


# ---- prepared data against the config ----------------------------------------------------------


def test_prepared_data_is_rebuilt_or_refused_when_its_inputs_change(tmp_path, caplog, monkeypatch):
    """Issue 14 case 3: WORKDIR/data is reused while its inputs are the config's; another corpus (or a changed
    file) is prepared again with a warning naming the change, or, when a checkpoint was trained on the data,
    refused unless data changes are allowed."""
    plays = [os.path.join(DEMO_CORPUS_DIR, f) for f in ("macbeth.txt", "tempest.txt")]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for play in plays:
        shutil.copy(play, corpus)
    config = setup.tiny_config(data__data_dir="", data__corpus=str(corpus), data__eval_fraction=0.5)
    workdir = str(tmp_path / "run")
    data_dir = pretrain_setup.prepare_data(config, workdir)
    first = loader.load_manifest(data_dir)
    built = []
    original = prepare.prepare_corpus
    monkeypatch.setattr(prepare, "prepare_corpus", lambda *a, **kw: built.append(a[0]) or original(*a, **kw))
    assert pretrain_setup.prepare_data(config, workdir) == data_dir and built == []  # reused
    with open(corpus / "tempest.txt", "a") as f:
        f.write("A line added after the preparation.\n")
    with pytest.raises(
        ValueError,
        match=rf"{data_dir} was prepared from other inputs than the config names: "
        rf"input {corpus}: 2 files of [\d,]+ bytes -> 2 files of [\d,]+ bytes\. "
        r"The checkpoints were trained on it: .*allow_changes=data$",
    ):
        pretrain_setup.prepare_data(config, workdir, resume.Resume(2, {}, (), ()))
    assert built == [] and loader.load_manifest(data_dir) == first
    other = setup.tiny_config(data__data_dir="", data__corpus=plays[0], data__eval_fraction=0.5)
    with caplog.at_level("WARNING"):
        pretrain_setup.prepare_data(other, workdir)
    assert built == [plays[0]] and f"input {plays[0]} added" in caplog.text
    assert loader.load_manifest(data_dir)["fingerprint"] == prepare.fingerprint(
        plays[0], max_seq_length=64, eval_fraction=0.5, seed=0, sp_vocab_size=other.data.sp_vocab_size
    )
    pretrain_setup.prepare_data(config, workdir, resume.Resume(2, {}, (), ("data",)))
    assert built == [plays[0], str(corpus)]
    with pytest.raises(
        ValueError,
        match=rf"{data_dir} holds other prepared data than checkpoint step 2 was trained "
        r"on .*allow_changes=data$",
    ):
        resume.check_data(
            resume.Resume(2, {"data": {"manifest": resume.manifest_id(first)}}, (), ()),
            loader.load_manifest(data_dir),
            data_dir,
        )


# ---- config.json and fine-tuning reruns ------------------------------------------------------------


def test_history_keeps_every_start_and_converts_the_old_form(tmp_path):
    path = str(tmp_path / "config.json")
    with open(path, "w") as f:
        json.dump({"batch_size": 8, "model": {"hidden_size": 128}}, f)  # config.json of an earlier version
    changes = resume.record_start(path, {"batch_size": 16, "model": {"hidden_size": 128}}, step=4)
    assert [str(c) for c in changes] == ["config.batch_size: 8 -> 16"]
    history = json.loads(Path(path).read_text())["starts"]
    assert history[0] == {"started": None, "changes": {}, "config": {"batch_size": 8, "model": {"hidden_size": 128}}}
    assert history[1]["step"] == 4 and history[1]["changes"] == {"batch_size": [8, 16]}
    assert resume.latest_config(path) == {"batch_size": 16, "model": {"hidden_size": 128}}
    assert resume.latest_config(str(tmp_path / "none.json")) is None


@pytest.mark.slow
def test_finetuning_rerun_records_its_config_and_an_interrupted_seed_logs_afresh(tmp_path, caplog):
    """Issue 14 case 7: a seed interrupted before its result.json left metrics.jsonl lines; its rerun starts the
    file afresh. A later rerun with another learning rate skips the finished seed and adds a start to config.json
    (the results still came from the first), with a warning."""
    from configs.finetune_glue import get_config
    from convbert.glue import finetune
    from helpers import ONE_DEVICE, save_random_encoder

    config = get_config("sst2,tiny")
    config.update(
        init_checkpoint=save_random_encoder(str(tmp_path / "encoder")),
        num_train_epochs=1,
        data_dir=os.path.join(setup.REPO, "data", "glue_sample"),
        batch_size=16,
        eval_batch_size=16,
    )
    workdir = tmp_path / "glue"
    (workdir / "sst2" / "seed_0").mkdir(parents=True)
    (workdir / "sst2" / "seed_0" / "metrics.jsonl").write_text('{"step": 500, "train/loss": 9.9}\n')
    finetune.run(config, str(workdir), ONE_DEVICE)
    seed_dir = workdir / "sst2" / "seed_0"
    logged = [json.loads(line)["step"] for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged and max(logged) == json.loads((seed_dir / "result.json").read_text())["train_steps"]

    config.learning_rate = 1e-3
    with caplog.at_level("WARNING"):
        finetune.run(config, str(workdir), ONE_DEVICE)
    history = starts(workdir)
    assert len(history) == 2 and history[1]["changes"] == {"learning_rate": [5e-4, 1e-3]}
    assert history[0]["config"]["learning_rate"] == 5e-4
    assert "the config changed since the last start (config.learning_rate: 0.0005 -> 0.001)" in caplog.text
