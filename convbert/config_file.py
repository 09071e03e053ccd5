"""Config files and their keys: the one layer every driver, the comparison and the study runner use.

* `load("configs/pretrain.py:tiny")`: the file's `get_config("tiny")` (`get_config()` without `:arg`), as
  ml_collections' config flag loads it; no `sys.path` edit.
* `flatten` / `lookup` / `apply_overrides` / `unknown_key`: dotted keys (`model.head_ratio`) over a ConfigDict or a
  JSON dict; an unknown key is one message naming it and the nearest valid key.
* `define`: the entry points' `--config` flag (`config_flags.DEFINE_config_file`, locked), every `--config.KEY`
  checked against the config file first, so an unknown key is one line naming it and the nearest valid key.
* `as_flags` / `override_flags` / `to_json`: a config (or its overrides) as command-line flags or as the JSON the
  checkpoints and `config.json` store.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags


def load(spec: str) -> ml_collections.ConfigDict:
    """`path.py:arg` -> that file's `get_config(arg)`; `path.py` -> `get_config()`."""
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found (paths are relative to the repository root)")
    module_spec = importlib.util.spec_from_file_location(f"_config_file_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if sep else module.get_config()


def flatten(tree: Mapping[str, Any] | ml_collections.ConfigDict | None, prefix: str = "") -> dict[str, Any]:
    """{'model': {'head_ratio': 1}} -> {'model.head_ratio': 1} (ConfigDicts and dicts; dotted keys kept)."""
    out = {}
    for key, value in (tree or {}).items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def lookup(config: ml_collections.ConfigDict | Mapping[str, Any], dotted: str) -> Any:
    """config["a"]["b"] for "a.b"."""
    for name in dotted.split("."):
        config = config[name]
    return config


def _keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of `config`, sections included."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _keys(value, f"{prefix}{key}.")
    return keys


def unknown_key(config: ml_collections.ConfigDict, key: str) -> str | None:
    """None when the dotted `key` (optionally with [i] indices) names a field of `config`, else a message naming
    it and the nearest valid key."""
    node, parents = config, []
    for part in key.split("."):
        name = re.sub(r"\[.*\]$", "", part)
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            break
        node, parents = node[name], parents + [name]
    else:
        return None
    prefix = ".".join(parents)
    keys = _keys(config)
    siblings = [k for k in keys if prefix and k.startswith(prefix + ".")] or keys
    nearest = difflib.get_close_matches(key, siblings, n=1, cutoff=0.0)
    where = (
        ""
        if not prefix
        else f" (config.{prefix} is a value, not a section)"
        if not isinstance(node, ml_collections.ConfigDict)
        else f" (config.{prefix} has no field {key[len(prefix) + 1 :].split('.')[0]!r})"
    )
    return f"config.{key} is not a key of this config{where}" + (
        f"; the nearest valid key is config.{nearest[0]}" if nearest else ""
    )


def apply_overrides(config: ml_collections.ConfigDict, flat: Mapping[str, Any], where: str) -> list[str]:
    """Sets every dotted key of `flat` in `config` (which must have it, with a compatible type); returns the
    problems, each naming `where` and the key (an unknown key with the nearest valid one)."""
    errors = []
    for key, value in flat.items():
        if (unknown := unknown_key(config, key)) is not None:
            errors.append(f"{where}: {unknown}")
            continue
        *parents, leaf = key.split(".")
        node = lookup(config, ".".join(parents)) if parents else config
        if isinstance(node[leaf], ml_collections.ConfigDict):
            errors.append(f"{where}: {key!r} is a group; set its fields ({key}.FIELD)")
        elif not isinstance(value, (bool, int, float, str)):
            errors.append(f"{where}: {key!r}: only single values can be set, got {value!r}")
        else:
            try:
                node[leaf] = value
            except TypeError as e:
                errors.append(f"{where}: {key!r}: {e}")
    return errors


def to_json(config: ml_collections.ConfigDict) -> dict:
    """The config as the JSON the checkpoints and config.json store (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def flag_value(value: bool | int | float | str) -> str:
    """A value as `config_flags` reads it back (floats by repr, so they round-trip)."""
    return repr(value) if isinstance(value, float) else str(value)


def as_flags(flat: Mapping[str, Any], name: str = "config") -> list[str]:
    """{'model.head_ratio': 1} -> ['--config.model.head_ratio=1']."""
    return [f"--{name}.{key}={flag_value(value)}" for key, value in flat.items()]


def override_flags(holder: flags.FlagHolder) -> list[str]:
    """The `--config.KEY=VALUE` overrides given on the command line, as flags again (tuples as repeated flags)."""
    out = []
    for key, value in config_flags.get_override_values(flags.FLAGS[holder.name]).items():
        for v in value if isinstance(value, tuple) else (value,):
            out.append(f"--{holder.name}.{key}={flag_value(v)}")
    return out


# ------------------------------------------------------------------------------------------------
# The --config flag of the entry points


def check_overrides(argv: Sequence[str], default: str | None, name: str = "config") -> None:
    """Exits with one line (status 1) when the config file of `--<name>` (default `default`) cannot be loaded,
    or a `--<name>.KEY` override names no key of it."""
    spec, overrides = default, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if m := re.match(rf"^--?{name}(?:=(.*))?$", arg):
            spec = m[1] if m[1] is not None else (args[i + 1] if i + 1 < len(args) else spec)
        elif m := re.match(rf"^--?(?:no)?{name}\.([^=]+)", arg):
            overrides.append(m[1])
    if not overrides or spec is None:
        return
    try:
        config = load(spec)
    except Exception as e:  # noqa: BLE001 - any failure to load is reported as one line
        sys.exit(f"FATAL Flags parsing error: --{name}={spec}: {type(e).__name__}: {e}")
    for key in overrides:
        if (message := unknown_key(config, key)) is not None:
            sys.exit(f"FATAL Flags parsing error: --{name}.{key}: {message} ({spec})")


def define(default: str | None, help_string: str, name: str = "config") -> flags.FlagHolder:
    """`config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)`, after `check_overrides` on
    `sys.argv`: ml_collections reads the command line's overrides when the flag is defined (an unknown key is a
    long traceback there), so the check runs first, here."""
    check_overrides(sys.argv, default, name)
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
