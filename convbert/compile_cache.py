"""JAX's persistent compilation cache, on by default for every entry point (docs/finetuning.md#compile-once).

The second run of a config (and every later fine-tuning process of the same shapes) reads its compiled programs
from disk instead of compiling again. Where it lives, first match wins:

  --compilation_cache=DIR | off                    the entry point's flag
  $CONVBERT_JAX_COMPILATION_CACHE=DIR | off        also what child processes (ablate.py's stages) inherit
  ~/.cache/convbert-jax/xla                        the default

`off` disables it. Every program is cached whatever its compile time. JAX writes each entry atomically (a
temporary file renamed into place) and keys it by the program, the backend and the JAX version, so several
processes may share a directory; in a multi-process run only the processes that compile write, and a shared
or `gs://` directory serves every host.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from convbert import fileio

ENV = "CONVBERT_JAX_COMPILATION_CACHE"
DEFAULT = os.path.join("~", ".cache", "convbert-jax", "xla")
OFF = "off"


def resolve(value: str | None = None) -> str | None:
    """The cache directory for `value` (a flag's value, else $CONVBERT_JAX_COMPILATION_CACHE, else `DEFAULT`);
    None for 'off'."""
    value = value or os.environ.get(ENV) or DEFAULT
    if value.lower() == OFF:
        return None
    return fileio.absolute(os.path.expanduser(value))


def enable(value: str | None = None) -> str | None:
    """Turns the cache on at `resolve(value)` (before the first compile) and exports the choice to child
    processes; returns the directory, None when off."""
    path = resolve(value)
    os.environ[ENV] = path or OFF
    if path is None:
        logging.info("compilation cache: off")
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    logging.info("compilation cache: %s (--compilation_cache=off to disable)", path)
    return path


def define_flag() -> None:
    flags.DEFINE_string(
        "compilation_cache",
        None,
        f"Persistent XLA compilation cache directory, or 'off' (default: ${ENV}, else {DEFAULT}).",
    )


def enable_from_flags() -> str | None:
    return enable(flags.FLAGS.compilation_cache)
