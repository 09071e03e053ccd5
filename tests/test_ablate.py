"""Ablation studies (`ablate.py`, `convbert.ablation`): the shipped study files resolve into valid driver commands,
bad variants are reported by name before anything runs, the results table and plots from finished runs, and a
two-variant tiny study (plus its no-pretraining control) end to end: table, plots, a rerun that does no work,
`--dry_run`'s commands, and a run killed mid-pretraining that resumes from its checkpoint."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

import background
import pretraining_setup as setup
from convbert import config_file
from convbert.ablation import results, runner
from convbert.ablation import study as study_lib
from convbert.ablation.study import StudyError
from convbert.fileio import read_json
from convbert.glue.tasks import PAPER_TASKS, TRANSFER_TASKS

REPO = setup.REPO
STUDIES = ("head_ratio", "conv_type", "kernel_size", "components", "generator_size")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # study files name their configs and data relative to the repository


def assert_png(path):
    """A PNG file that decodes to an image of a readable size."""
    from matplotlib import image

    assert Path(path).read_bytes()[:8] == PNG
    height, width, _ = image.imread(path).shape
    assert height >= 400 and width >= 600


def load_study(name: str, scale: str = "tiny") -> ml_collections.ConfigDict:
    return config_file.load(f"configs/ablations/{name}.py:{scale}")


def shrunk_study_file(path) -> str:
    """The head_ratio study's tiny variants γ = 1, 2 and its control, pretrained for 6 steps (1 layer, batch 8 x
    64 tokens on two bundled plays, WordPiece as the other pretraining tests), fine-tuned on the SST-2 sample for
    1 epoch, 2 seeds."""
    overrides = {
        "model": {"num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": setup.SMALL["model.vocab_size"]},
        "batch_size": 8,
        "max_seq_length": 64,
        "num_train_steps": 6,
        "log_every_steps": 1,
        "checkpoint_every_steps": 2,
        "eval_every_steps": 3,
        "num_eval_steps": 1,
        "export_every_steps": 0,
        "optimizer": {"warmup_steps": 2},
        "data": {"data_dir": setup.demo_data_dir(), "tokenizer": setup.SMALL["data.tokenizer"]},
    }
    path.write_text(f"""
from configs.ablations import head_ratio
from convbert.ablation.study import variants


def get_config(arg="tiny"):
    c = head_ratio.get_config(arg)
    c.pretrain.overrides = {overrides!r}
    c.variants = variants(**{{k: c.variants[k].to_dict() for k in ("gamma_1", "gamma_2", "no_pretraining")}})
    c.finetune.config = "configs/finetune_glue.py:sst2,tiny"
    c.finetune.tasks = ("sst2",)
    c.finetune.data_dir = "data/glue_sample"
    c.finetune.overrides = {{"num_train_epochs": 1, "batch_size": 32, "eval_batch_size": 32}}
    c.num_seeds = 2
    return c
""")
    return str(path)


# ---- the study files -------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["tiny", "small"])
def test_shipped_studies_resolve_into_driver_commands(scale, tmp_path):
    for name in STUDIES:
        study = load_study(name, scale)
        plan = study_lib.resolve(study, str(tmp_path))
        tasks = study_lib.tasks_of(study)
        assert study.reference in plan and list(plan)[-1] == "no_pretraining" and plan["no_pretraining"].random_init
        for v in plan.values():
            assert [s.name for s in v.stages] == ([] if v.random_init else ["pretrain"]) + list(tasks)
            for stage in v.finetune:
                assert stage.argv[:2] == ("python", "finetune_glue.py") and f"--config.task={stage.name}" in stage.argv
            if not v.random_init:
                assert v.pretrain.argv[:3] == ("python", "pretrain.py", f"--config={study.pretrain.config}")
                assert v.pretrain.workdir == os.path.join(str(tmp_path), v.name, "pretrain")
        ref = os.path.join(str(tmp_path), study.reference, "pretrain")
        assert plan["no_pretraining"].finetune[0].config.init_checkpoint == "random:" + ref
        if scale == "small":
            assert tasks == (*PAPER_TASKS, *TRANSFER_TASKS) and study_lib.headline_tasks(study) == PAPER_TASKS
            assert plan[study.reference].pretrain_config.num_train_steps == 1_000_000
            assert plan[study.reference].finetune[-1].config.data_dir == "data/transfer"
        else:
            assert plan[study.reference].pretrain_config.num_train_steps == study_lib.TINY_PRETRAIN_STEPS
    head_ratio = study_lib.resolve(load_study("head_ratio", scale), str(tmp_path))
    assert {n: v.knob for n, v in head_ratio.items()} == {
        "gamma_1": 1,
        "gamma_2": 2,
        "gamma_4": 4,
        "no_pretraining": None,
    }
    assert {v.pretrain_config.model.num_attention_heads for v in head_ratio.values()} == {4}
    components = study_lib.resolve(load_study("components", scale), str(tmp_path))
    assert [
        (m.conv_type, m.head_ratio, m.num_groups)
        for m in (components[n].pretrain_config.model for n in ("self_attention", "bnk", "bnk_gl", "convbert"))
    ] == [("none", 1, 1), ("none", 2, 1), ("none", 2, 2), ("sdconv", 2, 2)]


def test_variant_order_and_overrides_reach_the_command(tmp_path):
    study = load_study("kernel_size")
    assert list(study.variants) == ["k_1", "k_3", "k_5", "k_9", "k_15", "no_pretraining"]
    study.pretrain.overrides.num_train_steps = 20
    study.pretrain.overrides.optimizer = {"warmup_steps": 2}
    study.variants.k_3.model.conv_kernel_size = 7
    plan = study_lib.resolve(study, str(tmp_path))
    argv = plan["k_3"].pretrain.argv
    assert "--config.num_train_steps=20" in argv and "--config.model.conv_kernel_size=7" in argv
    assert plan["k_3"].pretrain_config.model.conv_kernel_size == 7 and plan["k_3"].knob == 7
    assert shlex.split(plan["k_3"].pretrain.command) == list(argv)


def test_bad_variants_are_reported_by_name_before_anything_runs(tmp_path):
    study = load_study("head_ratio")
    study.variants = study_lib.variants(
        gamma_2={},
        gamma_8={"model": {"head_ratio": 8}},
        typo={"model": {"head_ration": 2}},
        wrong_type={"model": {"conv_type": 3}},
        odd_generator={"electra": {"generator_fraction": 0.3}},
        no_pretraining=study_lib.CONTROL,
    )
    workdir = tmp_path / "study"
    with pytest.raises(StudyError) as e:
        runner.run(study, "configs/ablations/head_ratio.py:tiny", str(workdir))
    lines = str(e.value).splitlines()
    assert len(lines) == 4, lines
    assert "variant 'gamma_8'" in lines[0] and "head_ratio (8) is larger than num_attention_heads (4)" in lines[0]
    assert lines[1] == (
        "variant 'typo': config.model.head_ration is not a key of this config (config.model has no "
        "field 'head_ration'); the nearest valid key is config.model.head_ratio"
    )
    assert "variant 'wrong_type'" in lines[2] and "model.conv_type" in lines[2]
    assert "variant 'odd_generator'" in lines[3] and "generator fraction 0.3" in lines[3]
    assert not workdir.exists()

    study = load_study("head_ratio")
    study.variants.no_pretraining = {"init": "random", "model": {"head_ratio": 1}}
    study.finetune.overrides = {"num_seeds": 5}
    with pytest.raises(StudyError, match=r"(?s)finetune.overrides sets num_seeds.*"):
        study_lib.resolve(study, str(workdir))
    study = load_study("head_ratio")
    study.variants.no_pretraining = {"init": "random", "model": {"head_ratio": 1}}
    with pytest.raises(StudyError, match=r"variant 'no_pretraining': 'init' only takes 'random' and stands alone"):
        study_lib.resolve(study, str(workdir))
    study = load_study("head_ratio")
    study.finetune.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(StudyError, match=r"transfer-suite tasks are read from config\.data_dir only|not found"):
        study_lib.resolve(study, str(workdir))
    with pytest.raises(StudyError, match="--only: unknown variant"):
        study_lib.select(study_lib.resolve(load_study("head_ratio"), str(workdir)), ["gamma_3"])


def test_a_failing_stage_stops_the_run_with_its_log_and_is_not_finished(tmp_path, capfd):
    stage = study_lib.Stage(
        "gamma_2",
        "pretrain",
        str(tmp_path / "gamma_2" / "pretrain"),
        ("python", "-c", "import sys; print('boom'); sys.exit(3)"),
        ml_collections.ConfigDict(),
    )
    with pytest.raises(runner.StageFailed, match=r"gamma_2/pretrain failed \(exit code 3\); its output is in"):
        runner.run_stage(str(tmp_path), stage)
    log = Path(study_lib.log_path(str(tmp_path), stage, ".log")).read_text()
    assert "boom" in capfd.readouterr().out and "boom" in log
    assert read_json(study_lib.log_path(str(tmp_path), stage, ".json"))["returncode"] == 3
    assert not study_lib.is_done(str(tmp_path), stage)


# ---- results from finished runs ---------------------------------------------------------------------


def fake_runs(plan, workdir, scores):
    """metrics.jsonl of each pretrained variant and the fine-tuning driver's result.json per task, as the drivers
    write them: `scores` = {variant: [dev accuracy per seed]}."""
    for i, (name, v) in enumerate(plan.items()):
        if v.pretrain:
            os.makedirs(v.pretrain.workdir)
            with open(os.path.join(v.pretrain.workdir, "metrics.jsonl"), "w") as f:
                for step in (1, 2, 3, 4, 5, 6):
                    f.write(
                        json.dumps(
                            {
                                "step": step,
                                "train/loss": 40.0 - step - i,
                                "perf/tokens_per_sec": 1000.0 * (i + 1) + step,
                            }
                        )
                        + "\n"
                    )
                    if step % 3 == 0:
                        f.write(
                            json.dumps(
                                {
                                    "step": step,
                                    "eval/loss": 39.0 - step,
                                    "eval/gen_accuracy": 0.1 * i,
                                    "eval/disc_accuracy": 0.85,
                                    "eval/disc_precision": 0.5,
                                    "eval/disc_recall": 0.1,
                                    "eval/disc_auc": 0.6 + 0.01 * step,
                                }
                            )
                            + "\n"
                        )
        for stage in v.finetune:
            seeds = [{"seed": s, "dev": {"accuracy": a}} for s, a in enumerate(scores[name])]
            path = study_lib.finetune_result_path(stage)
            os.makedirs(os.path.dirname(path))
            with open(path, "w") as f:
                json.dump({"task": stage.name, "seeds": seeds}, f)


def test_results_table_json_and_plots_from_finished_runs(tmp_path):
    study = config_file.load(shrunk_study_file(tmp_path / "study.py"))
    workdir = str(tmp_path / "run")
    plan = study_lib.resolve(study, workdir)
    fake_runs(plan, workdir, {"gamma_1": [60.0, 64.0], "gamma_2": [50.0, 52.0], "no_pretraining": [48.0, 49.0]})
    out = results.write(study, "study.py", plan, workdir)

    saved = json.loads(Path(workdir, "results.json").read_text())
    assert saved == json.loads(json.dumps(out)) and list(saved["variants"]) == ["gamma_1", "gamma_2", "no_pretraining"]
    g1, g2, control = (saved["variants"][n] for n in ("gamma_1", "gamma_2", "no_pretraining"))
    sst2 = g1["tasks"]["sst2"]
    assert sst2["seeds"] == [60.0, 64.0] and sst2["median"] == 62.0 and sst2["mean"] == 62.0
    assert sst2["std"] == pytest.approx(np.std([60.0, 64.0], ddof=1))
    assert sst2["source"] == os.path.join(workdir, "gamma_1", "sst2", "sst2", "result.json")
    assert g1["headline"] == 62.0 and g1["headline_seeds"] == [60.0, 64.0] and g1["delta_vs_reference"] == 11.0
    assert sst2["delta_vs_reference"]["gap"] == 11.0 and g2["delta_vs_reference"] == 0.0
    assert control["delta_vs_reference"] == -2.5 and control["flops_per_step"] == 0.0
    assert g1["params"] > g2["params"] == control["params"]  # γ = 1: twice the attention width
    assert g1["flops_per_step"] > g2["flops_per_step"] > 0
    assert g1["pretrain_flops"] == pytest.approx(6 * g1["flops_per_step"])
    assert g1["knob"] == 1 and control["knob"] is None
    assert g2["pretrain"]["eval_step"] == 6 and g2["pretrain"]["eval"]["disc_auc"] == pytest.approx(0.66)
    assert g2["pretrain"]["tokens_per_sec"] == pytest.approx(2003.5)  # median of the logged intervals
    assert saved["not_run"] == []

    md = Path(workdir, "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Variant"))
    assert header.split(" | ")[1:] == [
        "model.head_ratio",
        "Params",
        "Train FLOPs / step",
        "Pretrain tokens/s",
        "Gen MLM acc",
        "Disc acc",
        "Disc prec",
        "Disc rec",
        "Disc AUC",
        "SST-2 median (mean ± std)",
        "Headline",
        "Δ vs gamma_2 |",
    ]
    assert "| 62.0 (62.0 ± 2.8) | 62.0 ± 2.8 | +11.0 |" in md and "| **gamma_2** | 2 |" in md
    assert "| no_pretraining | – |" in md and "0 (not pretrained)" in md
    assert os.path.join(workdir, "gamma_2", "sst2", "sst2", "result.json") in md  # traceable
    for path in out["plots"]:
        assert_png(path)


# ---- end to end -------------------------------------------------------------------------------------


def ablate(*args, timeout=900, **kw):
    return subprocess.run(
        [sys.executable, "ablate.py", *args],
        cwd=REPO,
        env=setup.subprocess_env(num_devices=1),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


@background.fixture
def finished():
    """(study file, workdir, output) of the shrunk study run to the end by ablate.py."""
    root = Path(background.directory("ablate_finished"))
    spec, workdir = shrunk_study_file(root / "study.py"), str(root / "run")
    done = ablate(f"--config={spec}", f"--workdir={workdir}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return spec, workdir, done.stdout


@pytest.mark.slow
def test_study_end_to_end_table_and_plots(finished):
    _, workdir, output = finished
    saved = json.loads(Path(workdir, "results.json").read_text())
    assert list(saved["variants"]) == ["gamma_1", "gamma_2", "no_pretraining"]
    for row in saved["variants"].values():
        assert len(row["tasks"]["sst2"]["seeds"]) == 2 and row["headline"] is not None
        assert {"params", "flops_per_step", "delta_vs_reference"} <= set(row)
    for name in ("gamma_1", "gamma_2"):
        pre = saved["variants"][name]["pretrain"]
        assert pre["steps"] == 6 and pre["eval_step"] == 6 and pre["tokens_per_sec"] > 0
        assert set(pre["eval"]) == set(results.EVAL_KEYS) and 0.0 <= pre["eval"]["disc_auc"] <= 1.0
    md = Path(workdir, "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and all(r.count(" | ") == rows[0].count(" | ") for r in rows)
    for path in saved["plots"]:
        assert_png(path)
    assert md in output  # printed at the end
    assert os.path.isfile(os.path.join(workdir, "gamma_1", "logs", "pretrain.log"))


@pytest.mark.slow
def test_dry_run_prints_the_commands_that_ran_and_a_rerun_does_no_work(finished):
    spec, workdir, _ = finished
    dry = ablate(f"--config={spec}", f"--workdir={workdir}", "--dry_run", timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    printed = dry.stdout.strip().splitlines()
    ran = [
        json.loads(Path(workdir, v, "logs", f"{s}.json").read_text())["command"]
        for v, s in (
            ("gamma_1", "pretrain"),
            ("gamma_1", "sst2"),
            ("gamma_2", "pretrain"),
            ("gamma_2", "sst2"),
            ("no_pretraining", "sst2"),
        )
    ]
    assert printed[:-1] == ran  # exactly the commands the run ran (with this interpreter for `python`)
    assert printed[-1] == f"python ablate.py --config={spec} --workdir={workdir}"
    script = Path(workdir, "commands.sh").read_text().splitlines()
    assert [line for line in script if line.startswith("python ")] == printed
    for name in ("commands.sh", "slurm.sh"):
        assert subprocess.run(["bash", "-n", os.path.join(workdir, name)]).returncode == 0

    metrics = os.path.join(workdir, "gamma_1", "pretrain", "metrics.jsonl")
    before = os.stat(metrics).st_mtime_ns, os.path.getsize(metrics)
    rerun = subprocess.run(
        shlex.split(printed[-1].replace("python", sys.executable, 1)),
        cwd=REPO,
        env=setup.subprocess_env(num_devices=1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "python pretrain.py" not in rerun.stdout and "python finetune_glue.py" not in rerun.stdout
    assert rerun.stdout.count("finished before") == 5
    assert (os.stat(metrics).st_mtime_ns, os.path.getsize(metrics)) == before


@pytest.mark.slow
def test_bad_variant_on_the_command_line_fails_before_anything_runs(finished, tmp_path):
    spec, _, _ = finished
    bad = ablate(
        f"--config={spec}", f"--workdir={tmp_path / 'bad'}", "--config.variants.gamma_1.model.head_ratio=8", timeout=300
    )
    assert bad.returncode == 1 and not (tmp_path / "bad").exists()
    assert "variant 'gamma_1'" in bad.stderr and "head_ratio (8) is larger than num_attention_heads (4)" in bad.stderr


@background.fixture
def killed_study():
    """ablate.py and its pretraining driver killed together (SIGKILL to the process group) after the first
    checkpoint of gamma_2, then the same command again: {'workdir', 'recorded_after_kill': whether the stage's
    record existed after the kill, 'rerun': the second run}."""
    root = Path(background.directory("ablate_killed"))
    spec, workdir = shrunk_study_file(root / "study.py"), str(root / "run")
    args = [
        sys.executable,
        "ablate.py",
        f"--config={spec}",
        f"--workdir={workdir}",
        "--only=gamma_2",
        "--config.pretrain.overrides.num_train_steps=100",
        "--config.pretrain.overrides.checkpoint_every_steps=10",
        "--config.pretrain.overrides.eval_every_steps=50",
    ]
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=setup.subprocess_env(num_devices=1),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = os.path.join(workdir, "gamma_2", "pretrain", "checkpoints", "10")
    deadline = time.time() + 600
    while not os.path.isdir(checkpoint):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    recorded = os.path.isfile(os.path.join(workdir, "gamma_2", "logs", "pretrain.json"))
    done = subprocess.run(
        args, cwd=REPO, env=setup.subprocess_env(num_devices=1), capture_output=True, text=True, timeout=900
    )
    return {"workdir": workdir, "recorded_after_kill": recorded, "rerun": done}


@pytest.mark.slow
def test_killed_study_resumes_from_the_checkpoint(killed_study):
    """`killed_study`: the same command resumes that pretraining from the checkpoint and finishes."""
    workdir, done = killed_study["workdir"], killed_study["rerun"]
    assert not killed_study["recorded_after_kill"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout
    metrics = Path(workdir, "gamma_2", "pretrain", "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics if "train/loss" in line]
    assert steps.count(1) == 1 and max(steps) == 100  # not started over
    saved = json.loads(Path(workdir, "results.json").read_text())
    assert list(saved["variants"]) == ["gamma_2"] and saved["not_run"] == ["gamma_1", "no_pretraining"]
    assert saved["variants"]["gamma_2"]["pretrain"]["eval_step"] == 100


def test_a_run_of_an_older_code_version_is_not_another_configuration(tmp_path):
    """A stage's config.json written before a config key existed (e.g. `init_from`) still matches; a changed
    value does not."""
    from convbert import resume

    config = ml_collections.ConfigDict({"model": {"head_ratio": 2}, "init_from": ""})
    stage = study_lib.Stage("v", study_lib.PRETRAIN, str(tmp_path), ("python",), config)
    resume.record_start(str(tmp_path / "config.json"), {"model": {"head_ratio": 2}})
    assert study_lib.config_mismatch(stage) is None
    resume.record_start(str(tmp_path / "config.json"), {"model": {"head_ratio": 1}})
    assert "model.head_ratio: 1 there, 2 now" in study_lib.config_mismatch(stage)


@background.fixture
def preempted_study():
    """Issue 23 case 2: SIGTERM to ablate.py (a preempted job) mid-pretraining of gamma_2, then the same command
    again: {'workdir', 'preempted': (exit code, stdout, stderr), 'record', 'finished': the stage's record and
    whether it counted as finished after the SIGTERM, 'rerun': the second run}."""
    root = Path(background.directory("ablate_preempted"))
    spec, workdir = shrunk_study_file(root / "study.py"), str(root / "run")
    args = [
        sys.executable,
        "ablate.py",
        f"--config={spec}",
        f"--workdir={workdir}",
        "--only=gamma_2",
        "--config.pretrain.overrides.num_train_steps=40",
        "--config.pretrain.overrides.checkpoint_every_steps=100",
        "--config.pretrain.overrides.eval_every_steps=0",
    ]
    env = setup.subprocess_env(num_devices=1)
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(workdir, "gamma_2", "pretrain", "metrics.jsonl")
    deadline = time.time() + 600
    while not (metrics.is_file() and metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline, "no metrics"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the runner passes it on to the driver
    out, err = proc.communicate(timeout=300)
    stage = study_lib.Stage(
        "gamma_2", study_lib.PRETRAIN, str(metrics.parent), tuple(args), ml_collections.ConfigDict()
    )
    record = read_json(study_lib.log_path(workdir, stage, ".json"))
    finished = study_lib.is_done(workdir, stage)
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return {
        "workdir": workdir,
        "preempted": (proc.returncode, out, err),
        "record": record,
        "finished": finished,
        "rerun": done,
    }


@pytest.mark.slow
def test_preempted_study_exits_75_and_resumes(preempted_study):
    """`preempted_study`: its pretraining driver saves a checkpoint, both exit 75, the stage's record says 75
    (unfinished, where before it said 0 and every rerun skipped it); the same command resumes that pretraining and
    finishes the study."""
    workdir, done = preempted_study["workdir"], preempted_study["rerun"]
    returncode, out, err = preempted_study["preempted"]
    assert returncode == 75, out[-3000:] + err[-3000:]
    assert err.strip().splitlines()[-1].startswith("ablate.py: Preempted: ")
    assert preempted_study["record"]["returncode"] == 75
    assert not preempted_study["finished"]

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed from" in done.stdout
    metrics = Path(workdir, "gamma_2", "pretrain", "metrics.jsonl")
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert steps.count(1) == 1 and max(steps) == 40  # not started over
    assert json.loads(Path(workdir, "gamma_2", "logs", "pretrain.json").read_text())["returncode"] == 0
