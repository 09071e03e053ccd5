"""`python -m convbert.aot`: the command line and the console report (see `convbert.aot`)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
from absl import app, flags

from convbert import config_file
from convbert.aot.steps import STEPS, compile_report, format_bytes
from convbert.aot.topology import parse_topology


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
        + (
            f" ({r['grad_accum_steps']} micro-batches of {r['per_device_micro_batch']})"
            if r["grad_accum_steps"] > 1
            else ""
        ),
        "memory per device: "
        + ", ".join(f"{k} {format_bytes(v)}" for k, v in b.items() if k != "total")
        + f" (train state {format_bytes(r['state_bytes_per_device'])})",
        f"  total {format_bytes(b['total'])}"
        + (
            f" of {format_bytes(r['hbm_bytes'])} HBM: {'fits' if r['fits'] else 'DOES NOT FIT'}"
            if r["hbm_bytes"]
            else " (no device memory limit for this platform)"
        ),
    ]
    if r.get("compile_error"):
        lines.append(f"the TPU compiler refused the program: {r['compile_error'].splitlines()[0]}")
    else:
        lines += [
            f"per device: {r['flops_per_device']:.3e} FLOPs, {r['bytes_accessed_per_device']:.3e} bytes accessed "
            "(XLA cost analysis)",
            "collectives per step: "
            + (
                ", ".join(
                    f"{k} {v['count']} ({format_bytes(v['bytes'])})" for k, v in r["collectives"].items() if v["count"]
                )
                or "none"
            ),
        ]
    lines.append(
        f"compile: {r['compile_seconds']:.1f} s ({r['compile_cpu_seconds']:.1f} s of CPU time; + "
        f"{r['lower_seconds']:.1f} s tracing and lowering)"
    )
    if r["estimated_step_seconds"] is not None:
        lines += [
            f"{r['estimate_note']}; peaks used: {r['peak_flops_per_second'] / 1e12:.0f} TFLOP/s, "
            f"{r['hbm_bytes_per_second'] / 1e12:.3f} TB/s",
            f"  estimated step {r['estimated_step_seconds'] * 1e3:.2f} ms ({r['estimated_bound']}-bound), "
            f"estimated {r['estimated_tokens_per_second']:,.0f} tokens/s"
            + (f", estimated MFU {r['estimated_mfu']:.1%}" if r["estimated_mfu"] is not None else ""),
            f"  estimated communication {r['estimated_communication_seconds'] * 1e3:.2f} ms per step (collective "
            f"traffic / {r['ici_bytes_per_second'] / 1e9:.0f} GB/s inter-chip bandwidth; not overlapped above)",
        ]
    else:
        lines.append(r["estimate_note"])
    if r["hints"]:
        lines += ["does not fit; what would help:"] + [f"  {h}" for h in r["hints"]]
    return "\n".join(lines)


def _define_flags() -> None:
    config_file.define(
        "configs/pretrain.py:tiny",
        "Config file (file:arg), e.g. configs/pretrain.py:base or configs/finetune_glue.py:mnli,base.",
    )
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
