"""Multi-process start-up: `jax.distributed.initialize` when needed, a topology log line, and timed barriers.

One process per host (TPU VM worker, GPU node or SLURM task); every process runs the same program. Must run
before anything touches a JAX backend (`jax.devices()`, array creation), i.e. first thing in `main`.

Timeouts (`config.distributed`, `default_config`): `jax.distributed.initialize` waits `initialization_timeout_s`
for every process to join, declares a process lost after `heartbeat_timeout_s` without a heartbeat and waits
`shutdown_timeout_s` for the others at exit. A lost heartbeat aborts the runtime from inside (SIGABRT and a
faulthandler trace on every process; it cannot be caught, only given more or less time). The project's own
waits (`barrier`, `agree`) go through the coordination service with `barrier_timeout_s` (or
`prepare_timeout_s` while process 0 prepares the data), and a timeout there is one line
(`faults.BarrierTimeout`, exit 69) naming the process, the barrier and the key to raise.
"""

from __future__ import annotations

import itertools

import jax
import ml_collections
from absl import logging

from convbert import compile_cache, faults

# `config.distributed`: jax.distributed.initialize's defaults, and the project's own barriers'.
DEFAULTS = dict(
    initialization_timeout_s=300,
    heartbeat_timeout_s=100,
    shutdown_timeout_s=300,
    barrier_timeout_s=600,
    prepare_timeout_s=24 * 3600,
)
_calls = itertools.count()  # barrier ids are unique per call (every process calls the same barriers in order)


def default_config() -> ml_collections.ConfigDict:
    """`config.distributed` of every driver's config (`DEFAULTS`, in seconds)."""
    return ml_collections.ConfigDict(DEFAULTS)


def _client():
    from jax._src import distributed  # the coordination service's client (no public accessor in jax 0.10)

    return distributed.global_state.client


def _timed_out(name: str, timeout_s: float, key: str, error: Exception) -> faults.BarrierTimeout:
    return faults.BarrierTimeout(
        f"process {jax.process_index()} of {jax.process_count()}: not every process reached barrier {name!r} "
        f"within {timeout_s:g} s (config.distributed.{key}): a process stalled or was lost (see the other "
        f"processes' logs), or is slower than that; raise --config.distributed.{key} for a slow host "
        f"({type(error).__name__}: {str(error).split('. ')[0]})"
    )


def barrier(name: str, timeout_s: float, key: str = "barrier_timeout_s") -> None:
    """Every process waits here for the others, at most `timeout_s` (`faults.BarrierTimeout`); a no-op in a
    single-process run."""
    if jax.process_count() == 1:
        return
    try:
        _client().wait_at_barrier(f"convbert_{name}_{next(_calls)}", int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - jaxlib's XlaRuntimeError (DEADLINE_EXCEEDED), reported as one line
        raise _timed_out(name, timeout_s, key, e) from None


def agree(name: str, ok: bool, timeout_s: float, key: str = "barrier_timeout_s") -> bool:
    """Process 0's `ok`, on every process: the others wait for it at most `timeout_s` (`faults.BarrierTimeout`)."""
    if jax.process_count() == 1:
        return ok
    kv = f"convbert_{name}_{next(_calls)}"
    if jax.process_index() == 0:
        _client().key_value_set(kv, str(int(ok)))
        return ok
    try:
        return _client().blocking_key_value_get(kv, int(timeout_s * 1000)) == "1"
    except Exception as e:  # noqa: BLE001 - as in `barrier`
        raise _timed_out(name, timeout_s, key, e) from None


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeouts: ml_collections.ConfigDict | None = None,
) -> None:
    """Starts the JAX distributed runtime with the timeouts of `timeouts` (`config.distributed`; default
    `DEFAULTS`).

    Explicit arguments (`--coordinator_address=host:port --num_processes=N --process_id=i`) win. Without them,
    JAX's cluster auto-detection is tried (Cloud TPU pod slices, SLURM `srun`, Open MPI, Kubernetes JobSet);
    where it finds no cluster this is a single-process run and nothing is started.
    """
    if jax.distributed.is_initialized():
        return
    t = timeouts or default_config()
    kwargs = dict(
        initialization_timeout=int(t.initialization_timeout_s),
        heartbeat_timeout_seconds=int(t.heartbeat_timeout_s),
        shutdown_timeout_seconds=int(t.shutdown_timeout_s),
    )
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("pass all of --coordinator_address, --num_processes and --process_id, or none of them")
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **kwargs)
        return
    try:
        jax.distributed.initialize(**kwargs)
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
    maybe_initialize(f.coordinator_address, f.num_processes, f.process_id, f[config_flag].value.distributed)
    logging.info(
        "config %s, overrides %s",
        config_flags.get_config_filename(f[config_flag]),
        config_flags.get_override_values(f[config_flag]),
    )
