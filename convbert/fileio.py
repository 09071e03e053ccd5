"""Files written so that a crash never leaves a partial one, and read back: text, JSON, whole directories.

`write_atomic` writes through a temporary file and `os.replace`; `write_dir` runs a writer on a local directory
and copies its files to a remote target (gs://..., through etils.epath); `read_json` is None for a missing file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from etils import epath


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file, so a crash never leaves a partial file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """The JSON document at `path`, or None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: Any, ensure_ascii: bool = True) -> None:
    """`obj` as indented JSON, atomically (`ensure_ascii=False`: non-ASCII text as UTF-8)."""
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=ensure_ascii) + "\n")


def is_remote(path: str) -> bool:
    """Whether `path` names an object store (gs://...) rather than a local or mounted file."""
    return "://" in path


def absolute(path: str) -> str:
    """A local `path` made absolute; a remote one as it is."""
    return path if is_remote(path) else os.path.abspath(path)


def write_dir(target: str, write: Callable[[str], Any]) -> None:
    """Runs `write(directory)` on a local directory: `target` itself, or a temporary one then copied to a
    remote `target` (gs://..., through etils.epath)."""
    if not is_remote(target):
        os.makedirs(target, exist_ok=True)
        write(target)
        return
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                dst = epath.Path(target) / os.path.relpath(os.path.join(root, name), tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(epath.Path(root, name).read_bytes())
