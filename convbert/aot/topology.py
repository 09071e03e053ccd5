"""TPU topologies to compile for without a TPU: the chip table (HBM per chip and its bandwidth, from the vendor
specifications), the topology names (`v5e:4x4`, `v5p:4x4x4`, the Cloud TPU accelerator names `v4-32`, `v5e-256`,
and `cpu:N` for N CPU devices), and the compile-only devices libtpu gives for them
(`jax.experimental.topologies.get_topology_desc`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

import jax


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation: JAX's `device_kind`, HBM per chip, HBM bandwidth (vendor specifications), the number of
    dimensions of its topology names, TensorCores per chip (the unit of its `-N` accelerator names), and the
    inter-chip bandwidth one chip's collectives get (half the bidirectional ICI bandwidth per chip of the Cloud TPU
    pages: v5e 400 GB/s, v5p 1,200, v6e 800; v4, which gives none per chip: its pod's all-reduce bandwidth, 1.1
    PB/s, over 4,096 chips)."""

    device_kind: str
    hbm_gib: float
    hbm_bytes_per_second: float
    dims: int
    cores_per_name_unit: int  # v4-32 / v5p-128 count TensorCores (2 per chip); v5e-256 / v6e-256 count chips
    ici_bytes_per_second: float

    @property
    def hbm_bytes(self) -> int:
        return int(self.hbm_gib * 2**30)


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32, 1.2e12, 3, 2, 0.27e12),
    "v5e": Chip("TPU v5 lite", 16, 0.819e12, 2, 1, 0.2e12),
    "v5p": Chip("TPU v5", 95, 2.76e12, 3, 2, 0.6e12),
    "v6e": Chip("TPU v6 lite", 32, 1.64e12, 2, 1, 0.4e12),
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
    usage = (
        f"--topology={name!r}: expected cpu:N, GEN:AxB (v5e, v6e), GEN:AxBxC (v4, v5p) or GEN-N "
        f"(e.g. v5e-256, v4-32) with GEN in {generations}"
    )
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
            raise ValueError(
                f"--topology={name!r}: {generation} topologies have {chip.dims} positive dimensions "
                f"(e.g. {generation}:{'x'.join(['2'] * chip.dims)})"
            )
        return Topology(name, generation, shape)
    count = int(m.group(3))
    chips, rest = divmod(count, chip.cores_per_name_unit)
    smallest = 4 if chip.dims == 3 else 1
    if rest or chips < smallest or chips & (chips - 1):
        unit = "TensorCores (2 per chip)" if chip.cores_per_name_unit == 2 else "chips"
        raise ValueError(
            f"--topology={name!r}: the number after '-' counts {unit} and must give a power-of-two "
            f"chip count of at least {smallest}; for other shapes use {generation}:"
            f"{'x'.join(['N'] * chip.dims)}"
        )
    return Topology(name, generation, _default_shape(chips, chip.dims))


def topology_devices(topology: Topology) -> list:
    """The devices to compile for: compile-only TPU devices from libtpu, or the first N CPU devices."""
    if topology.generation == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < topology.num_chips:
            raise ValueError(
                f"--topology={topology.name} needs {topology.num_chips} CPU devices but JAX has "
                f"{len(devices)}; set XLA_FLAGS=--xla_force_host_platform_device_count="
                f"{topology.num_chips} before JAX starts (python -m convbert.aot does)"
            )
        return devices[: topology.num_chips]
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(
            f"--topology={topology.name} needs the TPU compiler: pip install -r requirements-tpu.txt "
            "(jax[tpu] at the installed jax version)"
        )
    # Compile only: no metadata server to ask, no TPU workers to find, and other processes may hold libtpu too.
    for name, value in (
        ("TPU_SKIP_MDS_QUERY", "1"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
    ):
        os.environ.setdefault(name, value)
    from jax.experimental import topologies

    extra = {"chip_config_name": "megacore"} if topology.generation == "v4" else {}
    devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name, **extra).devices)
    kind = devices[0].device_kind
    if kind != topology.chip.device_kind or len(devices) != topology.num_chips:
        raise RuntimeError(
            f"libtpu gave {len(devices)} devices of kind {kind!r} for {topology.libtpu_name}; "
            f"expected {topology.num_chips} of {topology.chip.device_kind!r}"
        )
    return devices
