"""Multi-process start-up: `jax.distributed.initialize` when needed, and a topology log line.

One process per host (TPU VM worker, GPU node or SLURM task); every process runs the same program. Must run
before anything touches a JAX backend (`jax.devices()`, array creation), i.e. first thing in `main`.
"""

from __future__ import annotations

import jax
from absl import logging

from convbert import compile_cache


def maybe_initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Starts the JAX distributed runtime.

    Explicit arguments (`--coordinator_address=host:port --num_processes=N --process_id=i`) win. Without them,
    JAX's cluster auto-detection is tried (Cloud TPU pod slices, SLURM `srun`, Open MPI, Kubernetes JobSet);
    where it finds no cluster this is a single-process run and nothing is started.
    """
    if jax.distributed.is_initialized():
        return
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("pass all of --coordinator_address, --num_processes and --process_id, or none of them")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return
    try:
        jax.distributed.initialize()
    except ValueError as e:
        if "coordinator_address" not in str(e):  # a cluster was detected but is misconfigured
            raise
        logging.info("no multi-process cluster detected: single-process run")


def log_topology() -> dict:
    """Logs and returns process / device counts and the device kind."""
    info = dict(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_devices=jax.local_device_count(),
        devices=jax.device_count(),
        device_kind=jax.devices()[0].device_kind,
        platform=jax.default_backend(),
    )
    logging.info(
        "topology: process %(process_index)d/%(process_count)d, %(local_devices)d local of %(devices)d "
        "devices, %(device_kind)s (%(platform)s)",
        info,
    )
    return info


def define_flags() -> None:
    """The multi-process and compilation-cache flags shared by `pretrain.py`, `finetune_glue.py` and
    `finetune_squad.py`."""
    from absl import flags

    compile_cache.define_flag()
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (multi-process runs without auto-detection)."
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def initialize_from_flags(argv, config_flag: str = "config") -> None:
    """Entry-point prologue: tunes host malloc (`convbert.host_malloc`), rejects stray arguments, turns the
    compilation cache on (`convbert.compile_cache`), joins the process group, logs the config and overrides."""
    from absl import app, flags
    from ml_collections import config_flags

    from convbert import host_malloc

    host_malloc.tune()

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    compile_cache.enable_from_flags()
    maybe_initialize(f.coordinator_address, f.num_processes, f.process_id)
    logging.info(
        "config %s, overrides %s",
        config_flags.get_config_filename(f[config_flag]),
        config_flags.get_override_values(f[config_flag]),
    )
