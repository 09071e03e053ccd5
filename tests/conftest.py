"""Test setup: CPU only, 8 simulated devices for sharding tests; set before jax initialises. Fixtures shared by
several test modules."""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def plays(tmp_path):
    """Six short plays, one file each (six units with `prepare_setup.FAST`): test_prepare's and test_units'."""
    from prepare_setup import PLAYS, play

    root = tmp_path / "plays"
    root.mkdir()
    for name in PLAYS:
        (root / f"{name}.txt").write_text(play(name, 150))
    return root
