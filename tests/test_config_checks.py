"""Checks before any work (`convbert.config_checks`, `convbert.config_file`): ranges, model and objective errors by
config key, unknown `--config.*` keys, the eval split, and messages that name the file or key and the fix (issue 14,
cases 2, 4, 6)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import pretraining_setup as setup
from convbert import config_checks, config_file, finetuning, pretraining
from convbert.data import prepare
from convbert.data.sources import DEMO_CORPUS_DIR
from convbert.glue import finetune


@pytest.fixture
def no_preparation(monkeypatch):
    setup.demo_data_dir()  # the tests' shared data (prepared once) before preparation is forbidden
    monkeypatch.setattr(prepare, "prepare_corpus", lambda *a, **kw: pytest.fail("reached data preparation"))


def corpus_config(**changes):
    """The tiny test config preparing its data into the workdir (so a check that came late would write there)."""
    return setup.tiny_config(data__data_dir="", data__corpus=os.path.join(DEMO_CORPUS_DIR, "macbeth.txt"), **changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(optimizer__learning_rate=-1e-4), r"config\.optimizer\.learning_rate=-0\.0001 must be a number > 0$"),
        (
            dict(optimizer__warmup_steps=100),
            r"config\.optimizer\.warmup_steps=100 exceeds config\.num_train_steps=8: the "
            r"learning rate would never reach its peak; set .* to at most 8$",
        ),
        (
            dict(batch_size=0, optimizer__b2=1.0, data__eval_fraction=0.9),
            r"config\.batch_size=0 must be an integer >= 1; config\.optimizer\.b2=1\.0 must be a number in \[0, 1\); "
            r"config\.data\.eval_fraction=0\.9 must be a number in \[0, 0\.5\]$",
        ),
        (dict(model__hidden_dropout_prob=1.0), r"^config\.model\.hidden_dropout_prob must be in \[0, 1\), got 1\.0$"),
        (
            dict(model__num_attention_heads=3),
            r"^config\.model\.hidden_size \(128\) must be divisible by num_attention_heads \(3\)$",
        ),
        (dict(electra__mask_prob=0.0), r"^config\.electra\.mask_prob must be in \(0, 1\], got 0\.0$"),
        (
            dict(electra__generator_fraction=0.75),
            r"^config\.electra\.generator_fraction: generator fraction 0\.75 gives "
            r"1\.5 heads",
        ),
        (dict(resume__allow_changes="modle"), r"config\.resume\.allow_changes='modle': config\.modle is not a key"),
    ],
)
def test_bad_values_stop_the_run_before_any_write(changes, message, tmp_path, no_preparation):
    """Issue 14 cases 2 and 6: a negative learning rate (before: gradient ascent, exit 0, an export), a warmup
    longer than the run, out-of-range values (all listed at once), model and objective errors named by config key
    (before: `ConvBertConfig.X`, after data preparation had written to the workdir): each stops the run before
    data preparation, and the workdir is never created."""
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        pretraining.train_and_evaluate(corpus_config(**changes), str(workdir), devices=jax.devices()[:1])
    assert not workdir.exists()


def test_a_warmup_over_most_of_the_run_is_warned_about(caplog):
    with caplog.at_level("WARNING"):
        config_checks.check_pretraining(setup.tiny_config(optimizer__warmup_steps=2))
    assert not caplog.records
    with caplog.at_level("WARNING"):
        config_checks.check_pretraining(setup.tiny_config(optimizer__warmup_steps=6))
    assert (
        "config.optimizer.warmup_steps=6 of config.num_train_steps=8: the learning rate warms up over 75% of "
        "training" in caplog.text
    )


def test_finetuning_values_are_checked_before_any_write(tmp_path):
    from configs.finetune_glue import get_config
    from configs.finetune_squad import get_config as squad_config
    from convbert.squad import finetune as squad

    config = get_config("sst2,tiny")
    config.update(learning_rate=-1.0, warmup_proportion=1.5, num_seeds=0)
    with pytest.raises(
        ValueError,
        match=r"^config\.learning_rate=-1\.0 must be a number > 0; config\."
        r"warmup_proportion=1\.5 must be a number in \[0, 1\]; config\.num_seeds=0",
    ):
        finetune.run(config, str(tmp_path / "glue"))
    config = squad_config("v1,tiny")
    config.doc_stride = 0
    with pytest.raises(ValueError, match=r"^config\.doc_stride=0 must be an integer >= 1$"):
        squad.run(config, str(tmp_path / "squad"))
    assert os.listdir(tmp_path) == []


# ---- unknown keys on the command line ------------------------------------------------------------


def test_unknown_key_is_one_line_naming_the_nearest_key(tmp_path):
    """Issue 14 case 6: `--config.model.nonexistent=1` printed a 30-frame traceback without the key's path."""
    done = subprocess.run(
        [sys.executable, "pretrain.py", f"--workdir={tmp_path / 'run'}", "--config.optimizer.learning_rat=1e-4"],
        cwd=setup.REPO,
        capture_output=True,
        text=True,
        env=setup.subprocess_env(num_devices=1),
        timeout=300,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "FATAL Flags parsing error: --config.optimizer.learning_rat: config.optimizer.learning_rat is not a key of "
        "this config (config.optimizer has no field 'learning_rat'); the nearest valid key is "
        "config.optimizer.learning_rate (configs/pretrain.py:tiny)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--config.model.nonexistent=1"],
            r"--config\.model\.nonexistent: .*config\.model has no field 'nonexistent'\); "
            r"the nearest valid key is config\.model\.\w+ \(configs/pretrain\.py:tiny\)$",
        ),
        (
            ["--config=configs/pretrain.py:small", "--config.bach_size", "4"],
            r"--config\.bach_size: .*the nearest valid key is config\.batch_size \(configs/pretrain\.py:small\)$",
        ),
        (
            ["--noconfig.export_hf", "--config.model.hidden_size.x=2"],
            r"--config\.model\.hidden_size\.x: .*\(config\.model\.hidden_size is a value, not a section\)",
        ),
        (
            ["--config=configs/pretrain.py:huge", "--config.batch_size=4"],
            r"--config=configs/pretrain\.py:huge: ValueError: configs/pretrain\.py: unknown size 'huge'",
        ),
    ],
)
def test_overrides_are_checked_against_the_config_file(argv, message):
    with pytest.raises(SystemExit, match=r"^FATAL Flags parsing error: " + message):
        config_file.check_overrides(["pretrain.py", *argv], "configs/pretrain.py:tiny")
    config_file.check_overrides(
        [
            "pretrain.py",
            "--config.model.hidden_size=64",
            "--noconfig.export_hf",
            "--config.resume.allow_changes=batch_size",
        ],
        "configs/pretrain.py:tiny",
    )


# ---- messages that name the file and the fix -------------------------------------------------------


def test_pretraining_workdir_without_export_is_named(tmp_path):
    """Issue 14 case 6: a pretraining workdir whose export/ was deleted was reported as "vocab file not found"."""
    workdir = tmp_path / "pretrain"
    (workdir / "checkpoints" / "4500").mkdir(parents=True)
    (workdir / "tokenizer").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=rf"config\.init_checkpoint={workdir} is a pretraining workdir without "
        rf"{workdir}/export/discriminator or {workdir}/export/mlm \(deleted, "
        r"or the run has not finished.*to finish and export$",
    ):
        finetuning.resolve_source(str(workdir))
    for step in (300, 1500):
        (workdir / "export" / f"step_{step}" / "discriminator").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError,
        match=rf"or pass an intermediate export such as "
        rf"{workdir}/export/step_1500/discriminator$",
    ):
        finetuning.resolve_source("random:" + str(workdir))


@pytest.mark.slow
def test_an_eval_split_smaller_than_a_batch_disables_evaluation_before_training(tmp_path, caplog):
    """Issue 14 case 4: one 200 KB file is one document, all of it training data; the run said nothing and failed
    at its final evaluation ("0 examples, fewer than one global batch"). Now it says before training that
    evaluation is disabled and why, and finishes."""
    corpus = tmp_path / "one_file.txt"
    corpus.write_text(
        Path(DEMO_CORPUS_DIR, "hamlet.txt").read_text() + Path(DEMO_CORPUS_DIR, "tempest.txt").read_text()[:30_000]
    )
    assert 190_000 < corpus.stat().st_size < 210_000
    config = setup.tiny_config(
        data__data_dir="",
        data__corpus=str(corpus),
        num_train_steps=2,
        num_eval_steps=2,
        eval_every_steps=1,
        checkpoint_every_steps=2,
    )
    with caplog.at_level("INFO"):
        result = pretraining.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:1])
    messages = [r.getMessage() for r in caplog.records]
    disabled = next(i for i, m in enumerate(messages) if m.startswith("evaluation is disabled"))
    assert disabled < next(i for i, m in enumerate(messages) if m.startswith("initialised"))
    assert (
        f"the eval split of {tmp_path / 'run' / 'data'} has 0 examples, fewer than one global batch of "
        "config.batch_size=8" in messages[disabled]
    ) and "corpus has 1 training document(s)" in messages[disabled]
    assert sorted(result) and not any(k.startswith("eval/") for k in result)
