"""Ahead-of-time compilation of the training step for a TPU topology (or N fake CPU devices), on any machine.

  python -m convbert.aot --config=configs/pretrain.py:base --topology=v5e:4x4
  python -m convbert.aot --config=configs/pretrain.py:base --topology=v5e-256 --config.mesh.data=1 \
      --config.mesh.fsdp=-1 --json_out=base_v5e-256.json
  python -m convbert.aot --config=configs/finetune_glue.py:mnli,base --topology=v4-32 --step=finetune
  python -m convbert.aot --config=configs/pretrain.py:tiny --topology=cpu:8     # no libtpu needed

Compiles the very `jax.jit` the trainer runs (`Pretrainer.train_step`: same in/out shardings, the state donated)
against ShapeDtypeStructs, with the TPU compiler of `libtpu` (`pip install -r requirements-tpu.txt`) for the
devices of `jax.experimental.topologies.get_topology_desc`; no accelerator, data or tokenizer is needed. It reports
per-device memory (XLA's `memory_analysis`) against the chip's HBM, FLOPs and bytes accessed per device
(`cost_analysis`), the collectives of one step (parsed from the optimised HLO), the compile time, and a roofline
ESTIMATE of the step time: max(FLOPs / peak FLOP/s, bytes accessed / HBM bandwidth) per chip, i.e. a lower bound
that leaves out communication and assumes perfect overlap; tokens/s and MFU are derived from that estimate.
A config that does not fit exits with status 1 after printing the numbers and the knobs that would help; bad
input (topology, mesh, batch) exits with status 2 before anything is compiled.

Topologies: `v4:2x2x4`, `v5e:16x16`, `v5p:4x4x4`, `v6e:8x8` (chips per dimension), or the Cloud TPU accelerator
names `v4-32`, `v5p-128` (TensorCores: two per chip) and `v5e-256`, `v6e-256` (chips); `cpu:N` for N CPU
devices. v4 is compiled as megacore (one device per chip, as JAX runs it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from convbert import flops, kernels, metrics, pretraining, sharding, validation
from convbert.config import ConvBertConfig

STEPS = ("pretrain", "finetune")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
ESTIMATE_NOTE = ("ESTIMATE (roofline): max(FLOPs / peak, bytes accessed / HBM bandwidth) per chip; communication "
                 "and imperfect overlap are left out, so real steps are slower")


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: JAX's `device_kind`, HBM per chip, HBM bandwidth (vendor specifications), the number of
    dimensions of its topology names, and TensorCores per chip (the unit of its `-N` accelerator names)."""

    device_kind: str
    hbm_gib: float
    hbm_bytes_per_second: float
    dims: int
    cores_per_name_unit: int  # v4-32 / v5p-128 count TensorCores (2 per chip); v5e-256 / v6e-256 count chips

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32, 1.2e12, 3, 2),
    "v5e": Chip("TPU v5 lite", 16, 0.819e12, 2, 1),
    "v5p": Chip("TPU v5", 95, 2.76e12, 3, 2),
    "v6e": Chip("TPU v6 lite", 32, 1.64e12, 2, 1),
}
ALIASES = {"v5litepod": "v5e"}  # the Cloud TPU accelerator-type spelling


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    generation: str  # a key of CHIPS, or "cpu"
    shape: tuple[int, ...]  # chips per dimension ((N,) for cpu:N)

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def chip(self) -> Chip | None:
        return CHIPS.get(self.generation)

    @property
    def libtpu_name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"


def _default_shape(num_chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape of a power-of-two chip count, as Cloud TPU lays them out: 2-D from 1x1 (v5e-16 = 4x4,
    v5e-256 = 16x16), 3-D from 2x2x1 (v4-32 = 2x2x4, v5p-128 = 4x4x4); each doubling doubles the last of the
    smallest dimensions."""
    shape = [1] * dims if dims == 2 else [2, 2, 1]
    while math.prod(shape) < num_chips:
        i = max(j for j, s in enumerate(shape) if s == min(shape))
        shape[i] *= 2
    return tuple(shape)


def parse_topology(name: str) -> Topology:
    """`cpu:N`, `GEN:AxB[xC]` or `GEN-N` (GEN in v4, v5e, v5p, v6e; also v5litepod) -> `Topology`."""
    generations = ", ".join(CHIPS)
    usage = (f"--topology={name!r}: expected cpu:N, GEN:AxB (v5e, v6e), GEN:AxBxC (v4, v5p) or GEN-N "
             f"(e.g. v5e-256, v4-32) with GEN in {generations}")
    m = re.fullmatch(r"cpu:(\d+)", name)
    if m:
        if int(m.group(1)) < 1:
            raise ValueError(usage)
        return Topology(name, "cpu", (int(m.group(1)),))
    m = re.fullmatch(r"([a-z0-9]+)(?::(\d+(?:x\d+)*)|-(\d+))", name)
    if not m:
        raise ValueError(usage)
    generation = ALIASES.get(m.group(1), m.group(1))
    chip = CHIPS.get(generation)
    if chip is None:
        raise ValueError(f"--topology={name!r}: unknown TPU generation {m.group(1)!r}; choose from {generations}")
    if m.group(2):
        shape = tuple(int(s) for s in m.group(2).split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise ValueError(f"--topology={name!r}: {generation} topologies have {chip.dims} positive dimensions "
                             f"(e.g. {generation}:{'x'.join(['2'] * chip.dims)})")
        return Topology(name, generation, shape)
    count = int(m.group(3))
    chips, rest = divmod(count, chip.cores_per_name_unit)
    smallest = 4 if chip.dims == 3 else 1
    if rest or chips < smallest or chips & (chips - 1):
        unit = "TensorCores (2 per chip)" if chip.cores_per_name_unit == 2 else "chips"
        raise ValueError(f"--topology={name!r}: the number after '-' counts {unit} and must give a power-of-two "
                         f"chip count of at least {smallest}; for other shapes use {generation}:"
                         f"{'x'.join(['N'] * chip.dims)}")
    return Topology(name, generation, _default_shape(chips, chip.dims))


def topology_devices(topology: Topology) -> list:
    """The devices to compile for: compile-only TPU devices from libtpu, or the first N CPU devices."""
    if topology.generation == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topology.num_chips:
            raise ValueError(f"--topology={topology.name} needs {topology.num_chips} CPU devices but JAX has "
                             f"{len(devices)}; set XLA_FLAGS=--xla_force_host_platform_device_count="
                             f"{topology.num_chips} before JAX starts (python -m convbert.aot does)")
        return devices[:topology.num_chips]
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"--topology={topology.name} needs the TPU compiler: pip install -r requirements-tpu.txt "
                         "(jax[tpu] at the installed jax version)")
    # Compile only: no metadata server to ask, no TPU workers to find, and other processes may hold libtpu too.
    for name, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")):
        os.environ.setdefault(name, value)
    from jax.experimental import topologies

    extra = {"chip_config_name": "megacore"} if topology.generation == "v4" else {}
    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                                **extra).devices)
    kind = devices[0].device_kind
    if kind != topology.chip.device_kind or len(devices) != topology.num_chips:
        raise RuntimeError(f"libtpu gave {len(devices)} devices of kind {kind!r} for {topology.libtpu_name}; "
                           f"expected {topology.num_chips} of {topology.chip.device_kind!r}")
    return devices


# ------------------------------------------------------------------------------------------------
# The steps


@dataclasses.dataclass
class Step:
    """A jitted step and the abstract arguments to lower it with."""

    jitted: Any  # a jax.jit-wrapped function
    args: tuple
    state: Any  # the donated train state among `args` (its per-device bytes are reported)
    global_batch: int
    seq_len: int
    model_flops: float | None  # matmul FLOPs of one step (convbert.flops), for the MFU estimate
    description: str
    model_config: ConvBertConfig  # the model compiled, its kernels resolved for the mesh's platform


def _sds(shape, dtype, sharding_) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding_)


def pretrain_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Step:
    """`Pretrainer.train_step` on `Pretrainer.abstract_state()` and an int32 [batch, seq] batch split over the
    batch axes (the arrays `convbert.data.loader` feeds)."""
    from convbert.data.example_builder import FIELDS

    # Special ids None: ElectraConfig's, those of the BERT uncased vocab. They enter the step only as constants (no
    # shape or cost depends on them), so no tokenizer or prepared corpus is needed.
    trainer = pretraining.Pretrainer(config, mesh, None)
    b, t = config.batch_size, config.max_seq_length
    batch = {k: _sds((b, t), jnp.int32, sharding.batch_sharding(mesh)) for k in FIELDS}
    state = trainer.abstract_state()
    model_flops = flops.model_flops_per_step(*flops.configs_from(config), b, t,
                                             config.electra.max_predictions_per_seq)
    return Step(trainer.train_step, (state, batch), state, b, t, model_flops,
                f"pretraining step ({config.objective})", trainer.model_config)


def finetune_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Step:
    """The GLUE fine-tuning step of a `configs/finetune_glue.py` config (its first task for 'all' / 'transfer' /
    'ax'): `glue.finetune.TaskTrainer.train_step` with the task's head. The encoder's architecture comes from
    `config.init_checkpoint` when that is a local directory (its config.json), else from the released ConvBERT of
    `config.size`; no weights are read."""
    from convbert.config import SIZES, size_config
    from convbert.glue import data, finetune, tasks

    task = tasks.get_task(tasks.task_names(config.task)[0])
    source = config.init_checkpoint.removeprefix(finetune.RANDOM_INIT)
    if os.path.isdir(source):
        model_config = ConvBertConfig.load(finetune.resolve_source(source).model_dir)
    elif config.size in SIZES:
        model_config = size_config(config.size)
    else:
        raise ValueError(f"config.init_checkpoint={config.init_checkpoint!r} is not a local directory; the "
                         f"finetune step needs its config.json (size {config.size!r} has no released model)")
    encoder = finetune.Encoder(model_config.resolve_kernels(mesh), None, config.classifier_head)
    b, t = config.batch_size, config.max_seq_length
    # One epoch of one batch: the row count only sets the learning-rate schedule's length.
    trainer = finetune.TaskTrainer(task, encoder, config, mesh, finetune.TaskData({"labels": np.zeros(b)}, {}, {}))
    shapes = {**{k: ((b, t), np.int32) for k in data.FEATURES},
              "labels": ((b,), np.float32 if task.labels is None else np.int32)}
    state = trainer.abstract_state()
    return Step(trainer.train_step, (state, trainer.abstract_batch(shapes)), state, b, t, None,
                f"GLUE fine-tuning step ({task.name})", trainer.model_config)


STEP_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, jax.sharding.Mesh], Step]] = {
    "pretrain": pretrain_step, "finetune": finetune_step}


# ------------------------------------------------------------------------------------------------
# Reading the compiled step


_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLEES = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation|branch_computations)="
                      r"(\{[^}]*\}|%?[\w.\-]+)")
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


def _cost(compiled) -> dict[str, float]:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


# ------------------------------------------------------------------------------------------------
# The report


def compile_report(config: ml_collections.ConfigDict, topology: Topology, step: str = "pretrain") -> dict[str, Any]:
    """Compiles `step` ('pretrain' | 'finetune') of `config` for `topology` and returns the report (see the module
    doc; the keys scripts read: fits, per_device_bytes.total, hbm_bytes, flops_per_device,
    bytes_accessed_per_device, compile_seconds, estimated_step_seconds, estimated_mfu, collectives). Bad input
    raises ValueError before compiling. When the TPU compiler refuses the program for lack of HBM, the report
    has fits False, the compiler's message and the memory figures it gives; the cost fields are None."""
    if step not in STEPS:
        raise ValueError(f"--step={step!r}: choose from {', '.join(STEPS)}")
    if step == "pretrain":
        pretraining.check_config(config)
    devices = topology_devices(topology)
    mesh = sharding.create_mesh(config.mesh.to_dict(), devices)
    accum = config.get("grad_accum_steps", 1)
    sharding.check_batch_size(config.batch_size, mesh, grad_accum_steps=accum)
    hosts = len({d.process_index for d in devices})
    if config.batch_size % hosts:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {hosts} hosts of "
                         f"{topology.name} (every host feeds its own rows)")
    built = STEP_BUILDERS[step](config, mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    chip = topology.chip
    peak_flops = metrics.peak_flops_per_device(devices[0]) if chip else None
    report = {
        "step": step, "description": built.description, "topology": topology.name,
        "platform": devices[0].platform, "chip": devices[0].device_kind, "num_chips": len(devices), "num_hosts": hosts,
        "mesh": dict(mesh.shape), "global_batch": built.global_batch, "seq_len": built.seq_len,
        "grad_accum_steps": accum, "per_device_batch": built.global_batch // batch_shards,
        "per_device_micro_batch": built.global_batch // accum // batch_shards,
        "state_bytes_per_device": per_device_bytes(built.state), "hbm_bytes": chip.hbm_bytes if chip else None,
        **model_knobs(built.model_config),
    }

    start = time.perf_counter()
    lowered = built.jitted.lower(*built.args)
    report["lower_seconds"] = time.perf_counter() - start
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if not str(e).startswith("RESOURCE_EXHAUSTED"):
            raise
        report.update(compile_seconds=time.perf_counter() - start, compile_cpu_seconds=time.process_time() - cpu_start,
                      fits=False, compile_error=str(e).strip(),
                      per_device_bytes=_refused_bytes(str(e), per_device_bytes(built.args)),
                      flops_per_device=None, bytes_accessed_per_device=None, collectives=None)
        report.update(estimate(report, chip, peak_flops, built.model_flops), hints=hints(config, report))
        return report
    report.update(compile_seconds=time.perf_counter() - start, compile_cpu_seconds=time.process_time() - cpu_start)

    mem = compiled.memory_analysis()
    nbytes = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
              "temporaries": mem.temp_size_in_bytes, "aliased": mem.alias_size_in_bytes,
              "generated_code": mem.generated_code_size_in_bytes}
    # What must fit: inputs, plus outputs not written in place of a donated input, temporaries and the program.
    nbytes["total"] = (nbytes["arguments"] + nbytes["outputs"] - nbytes["aliased"] + nbytes["temporaries"]
                       + nbytes["generated_code"])
    cost = _cost(compiled)
    report.update(per_device_bytes=nbytes, fits=nbytes["total"] <= chip.hbm_bytes if chip else None,
                  flops_per_device=cost.get("flops"), bytes_accessed_per_device=cost.get("bytes accessed"),
                  collectives=collectives(compiled.as_text()))
    report.update(estimate(report, chip, peak_flops, built.model_flops))
    report["hints"] = hints(config, report) if report["fits"] is False else []
    return report


def model_knobs(config: ConvBertConfig) -> dict[str, Any]:
    """The compute knobs of the compiled model: `kernels` as resolved for the platform (e.g. 'tpu'), the
    implementation that selects per kernel (`kernel_impls`), `remat` and `scan_layers`."""
    return {"kernels": config.kernels, "kernel_impls": {name: kernels.resolve_impl(config.kernels, name)
                                                        for name in kernels.KERNELS},
            "remat": config.remat, "scan_layers": config.scan_layers}


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)\)")


def _refused_bytes(message: str, argument_bytes: int) -> dict[str, int | None]:
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


def estimate(report: Mapping[str, Any], chip: Chip | None, peak_flops: float | None,
             model_flops: float | None) -> dict[str, Any]:
    """Roofline ESTIMATE of the step time per chip and the tokens/s and MFU it implies (None without chip figures
    or without a cost analysis).

    XLA's cost analysis counts a loop body once, so with grad_accum_steps = k the FLOPs and bytes cover one
    micro-batch plus the update; the estimate multiplies them by k (an over-count of the update)."""
    flops_, bytes_ = report["flops_per_device"], report["bytes_accessed_per_device"]
    out = dict(estimate_note=ESTIMATE_NOTE, peak_flops_per_second=peak_flops,
               hbm_bytes_per_second=chip.hbm_bytes_per_second if chip else None, estimated_step_seconds=None,
               estimated_bound=None, estimated_tokens_per_second=None, estimated_mfu=None,
               model_flops_per_step=model_flops)
    if chip is None or not peak_flops:
        return {**out, "estimate_note": "no chip figures for this platform: no step-time estimate"}
    if flops_ is None or bytes_ is None:
        return {**out, "estimate_note": "no cost analysis (the program did not compile): no step-time estimate"}
    k = report["grad_accum_steps"]
    compute, memory = k * flops_ / peak_flops, k * bytes_ / chip.hbm_bytes_per_second
    seconds = max(compute, memory)
    return {**out, "estimated_step_seconds": seconds, "estimated_bound": "compute" if compute >= memory else "memory",
            "estimated_tokens_per_second": report["global_batch"] * report["seq_len"] / seconds,
            "estimated_mfu": model_flops / (seconds * peak_flops * report["num_chips"]) if model_flops else None}


def hints(config: ml_collections.ConfigDict, report: Mapping[str, Any]) -> list[str]:
    """The knobs that cut per-device memory, for a config that does not fit."""
    out = []
    mesh, accum, micro = report["mesh"], report["grad_accum_steps"], report["per_device_micro_batch"]
    if micro > 1:
        out.append(f"--config.grad_accum_steps={accum * 2}: half the activations (per-device micro-batch {micro} -> "
                   f"{micro // 2}), same global batch; or a smaller --config.batch_size")
    if mesh["fsdp"] == 1 and report["num_chips"] > 1:
        out.append(f"--config.mesh.data=1 --config.mesh.fsdp=-1: FSDP splits the parameters and optimizer state "
                   f"({_size(report['state_bytes_per_device'])} per device now) over all {report['num_chips']} "
                   "devices")
    if "remat" in config.get("model", {}):
        out.append(f"--config.model.remat=...: recompute activations in the backward pass (now "
                   f"{config.model.remat!r})")
    return out


def _size(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def format_report(r: Mapping[str, Any]) -> str:
    """The report as the console lines `python -m convbert.aot` prints."""
    b = r["per_device_bytes"]
    lines = [
        f"{r['description']} on {r['topology']}: {r['num_chips']} x {r['chip']} ({r['num_hosts']} hosts), "
        f"mesh {r['mesh']}",
        f"model: kernels {r['kernels']} ("
        + ", ".join(f"{k} {v}" for k, v in r["kernel_impls"].items())
        + f"), remat {r['remat']}, layers {'scanned' if r['scan_layers'] else 'unrolled'}",
        f"batch: global {r['global_batch']} x {r['seq_len']} tokens, per device {r['per_device_batch']}"
        + (f" ({r['grad_accum_steps']} micro-batches of {r['per_device_micro_batch']})" if r["grad_accum_steps"] > 1
           else ""),
        "memory per device: " + ", ".join(f"{k} {_size(v)}" for k, v in b.items() if k != "total")
        + f" (train state {_size(r['state_bytes_per_device'])})",
        f"  total {_size(b['total'])}"
        + (f" of {_size(r['hbm_bytes'])} HBM: {'fits' if r['fits'] else 'DOES NOT FIT'}" if r["hbm_bytes"]
           else " (no device memory limit for this platform)"),
    ]
    if r.get("compile_error"):
        lines.append(f"the TPU compiler refused the program: {r['compile_error'].splitlines()[0]}")
    else:
        lines += [
            f"per device: {r['flops_per_device']:.3e} FLOPs, {r['bytes_accessed_per_device']:.3e} bytes accessed "
            "(XLA cost analysis)",
            "collectives per step: " + (", ".join(f"{k} {v['count']} ({_size(v['bytes'])})"
                                                  for k, v in r["collectives"].items() if v["count"]) or "none")]
    lines.append(f"compile: {r['compile_seconds']:.1f} s ({r['compile_cpu_seconds']:.1f} s of CPU time; + "
                 f"{r['lower_seconds']:.1f} s tracing and lowering)")
    if r["estimated_step_seconds"] is not None:
        lines += [
            f"{r['estimate_note']}; peaks used: {r['peak_flops_per_second'] / 1e12:.0f} TFLOP/s, "
            f"{r['hbm_bytes_per_second'] / 1e12:.3f} TB/s",
            f"  estimated step {r['estimated_step_seconds'] * 1e3:.2f} ms ({r['estimated_bound']}-bound), "
            f"estimated {r['estimated_tokens_per_second']:,.0f} tokens/s"
            + (f", estimated MFU {r['estimated_mfu']:.1%}" if r["estimated_mfu"] is not None else ""),
        ]
    else:
        lines.append(r["estimate_note"])
    if r["hints"]:
        lines += ["does not fit; what would help:"] + [f"  {h}" for h in r["hints"]]
    return "\n".join(lines)


def _define_flags() -> None:
    validation.define_config_file("configs/pretrain.py:tiny", "Config file (file:arg), e.g. "
                                  "configs/pretrain.py:base or configs/finetune_glue.py:mnli,base.")
    flags.DEFINE_string("topology", "v5e:2x2", "v5e:4x4, v5e-256, v4-32, v5p:4x4x4, v6e:16x16, ... or cpu:N.")
    flags.DEFINE_enum("step", "pretrain", STEPS, "The train step to compile.")
    flags.DEFINE_string("json_out", "", "Also write the report as JSON here.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    try:
        topology = parse_topology(f.topology)
        # Before anything starts a JAX backend: CPU only (TPU devices here are compile-only), N host devices.
        jax.config.update("jax_platforms", "cpu")
        if topology.generation == "cpu":
            jax.config.update("jax_num_cpu_devices", topology.num_chips)
        report = {"config": f["config"].config_filename, **compile_report(f.config, topology, f.step)}
    except (ValueError, FileNotFoundError) as e:
        print(f"convbert.aot: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_report(report))
    if f.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(f.json_out)), exist_ok=True)
        with open(f.json_out, "w") as out:
            json.dump(report, out, indent=2)
    if report["fits"] is False:
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
