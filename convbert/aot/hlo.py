"""Reading a compiled step: the collectives one run of its optimised HLO executes, per-device bytes of sharded
arrays, XLA's memory and cost analyses, and the memory figures of the TPU compiler's out-of-memory message.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


_BYTES = {
    "pred": 1,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLEES = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation|branch_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)"
)
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}")


def _type_bytes(hlo_type: str) -> int:
    """Bytes of an HLO result type (an array or a tuple of arrays; f8 types count 1 byte)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(hlo_type):
        size = _BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
        if size is not None:
            total += size * math.prod(int(d) for d in dims.split(",") if d)
    return int(total)


def _group_size(attributes: str) -> int:
    """Devices per replica group: `[groups,size]<=[...]`, `{{0,1,..},..}` or `mesh['a'=2,'b'=4] {'b'}`."""
    iota, listed, mesh = (p.search(attributes) for p in (_GROUPS_IOTA, _GROUPS_LIST, _GROUPS_MESH))
    if iota:
        return int(iota.group(2))
    if listed:
        return len(listed.group(1).split(","))
    if mesh:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", mesh.group(1)))
        return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", mesh.group(2)))
    return 1


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{kind: {"count", "bytes"}} of the collectives one run of the optimised HLO module executes.

    Instructions in a loop body count once per iteration (known trip counts; e.g. the grad-accumulation scan).
    Asynchronous pairs count once (at `-done`). `bytes` is the data each device contributes or receives per op:
    the result for all-reduce, all-gather, all-to-all and collective-permute, the input (result x group size) for
    reduce-scatter. The TPU compiler emits its reduce-scatters as `all-reduce-scatter` fusions around an
    all-reduce; those are counted as reduce-scatter.
    """
    computations: dict[str, list[tuple[str, str, str]]] = {}  # name -> [(opcode, result type, rest of line)]
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(2)
            computations[current] = []
            entry = current if m.group(1) else entry
            continue
        m = _INSTRUCTION.match(line)
        if m and current is not None:
            computations[current].append((m.group(3), m.group(2), m.group(4)))
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    calls: dict[str, list[tuple[str, int]]] = {name: [] for name in computations}  # callee -> [(caller, factor)]
    for caller, instructions in computations.items():
        for opcode, _, rest in instructions:
            trips = _TRIP_COUNT.search(rest)
            for attr, target in _CALLEES.findall(rest):
                factor = int(trips.group(1)) if opcode == "while" and attr == "body" and trips else 1
                for callee in re.findall(r"%?([\w.\-]+)", target):
                    if callee in calls:
                        calls[callee].append((caller, factor))

    runs: dict[str, int] = {}

    def times(name: str) -> int:
        if name not in runs:
            runs[name] = 1 if name == entry else sum(times(caller) * f for caller, f in calls[name])
        return runs[name]

    out = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
    for name, instructions in computations.items():
        for opcode, result, rest in instructions:
            kind = opcode.removesuffix("-done")
            if kind not in out or opcode.endswith("-start"):
                continue
            size = _type_bytes(result)
            if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
                kind = "reduce-scatter"
            elif kind == "reduce-scatter":
                size *= _group_size(rest)
            n = times(name)
            out[kind]["count"] += n
            out[kind]["bytes"] += n * size
    return out


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (the largest shard of each array)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def cost(compiled) -> dict[str, float]:
    """XLA's cost analysis of a compiled program ('flops', 'bytes accessed', ...; per device). A loop body counts
    once, whatever its trip count."""
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis) or {}


def memory_bytes(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled program (XLA's memory analysis): arguments, outputs, temporaries, aliased
    (outputs written in place of donated arguments), generated_code, and the total that must fit: arguments +
    outputs - aliased + temporaries + generated_code."""
    mem = compiled.memory_analysis()
    out = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "temporaries": mem.temp_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,
        "generated_code": mem.generated_code_size_in_bytes,
    }
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["generated_code"]
    return out


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\)")


def refused_bytes(message: str, argument_bytes: int) -> dict[str, int | None]:
    """Per-device memory from the TPU compiler's out-of-memory message (its sizes are binary: G = GiB): 'Used X of
    Y hbm', or 'HLO temporaries (X)' beside the arguments (computed from their shardings); None where unknown."""
    out = dict.fromkeys(("arguments", "outputs", "temporaries", "aliased", "generated_code", "total"))
    out["arguments"] = argument_bytes
    used, temporaries = _USED.search(message), _TEMPORARIES.search(message)
    if temporaries:
        out["temporaries"] = int(float(temporaries.group(1)) * _UNITS[temporaries.group(2)])
        out["total"] = argument_bytes + out["temporaries"]
    if used:
        out["total"] = int(float(used.group(1)) * _UNITS[used.group(2)])
    return out
