"""The training steps `python -m convbert.aot` compiles (the trainers' own `jax.jit`s on abstract arguments), their
compilation for a topology, and the report: memory per device against the chip's HBM, XLA's cost analysis, the
collectives, the compile time, and a roofline ESTIMATE of the step time with the tokens/s and MFU it implies.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from convbert import config_checks, flops, kernels, metric_writer, pretraining, sharding
from convbert.aot.hlo import collectives, cost, memory_bytes, per_device_bytes, refused_bytes
from convbert.aot.topology import Chip, Topology, topology_devices
from convbert.config import ConvBertConfig

STEPS = ("pretrain", "finetune")
ESTIMATE_NOTE = (
    "ESTIMATE (roofline): max(FLOPs / peak, bytes accessed / HBM bandwidth) per chip; communication "
    "(estimated apart: collective traffic / inter-chip bandwidth) and imperfect overlap are left out, so "
    "real steps are slower"
)
# Bytes each device sends per byte of a collective's `bytes` (convbert.aot.hlo.collectives), ring algorithms over
# large groups: an all-reduce is a reduce-scatter then an all-gather.
TRAFFIC = {"all-reduce": 2.0, "all-gather": 1.0, "reduce-scatter": 1.0, "all-to-all": 1.0, "collective-permute": 1.0}


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
    model_flops = flops.model_flops_per_step(*flops.configs_from(config), b, t, config.electra.max_predictions_per_seq)
    return Step(
        trainer.train_step,
        (state, batch),
        state,
        b,
        t,
        model_flops,
        f"pretraining step ({config.objective})",
        trainer.model_config,
    )


def finetune_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Step:
    """The GLUE fine-tuning step of a `configs/finetune_glue.py` config (its first task for 'all' / 'transfer' /
    'ax'): `glue.finetune.TaskTrainer.train_step` with the task's head, vectorised over the seeds trained together
    (`config.parallel_seeds`, 0: `config.num_seeds`; a probe with cached features: the head alone). The encoder's
    architecture comes from `config.init_checkpoint` when that is a local directory (its config.json), else from
    the released ConvBERT of `config.size`; no weights are read."""
    from convbert import finetuning
    from convbert.config import SIZES, size_config
    from convbert.glue import data, finetune, tasks

    task = tasks.get_task(tasks.task_names(config.task)[0])
    source = config.init_checkpoint.removeprefix(finetuning.RANDOM_INIT)
    if os.path.isdir(source):
        model_config = ConvBertConfig.load(finetuning.resolve_source(source).model_dir)
    elif config.size in SIZES:
        model_config = size_config(config.size)
    else:
        raise ValueError(
            f"config.init_checkpoint={config.init_checkpoint!r} is not a local directory; the "
            f"finetune step needs its config.json (size {config.size!r} has no released model)"
        )
    encoder = finetuning.Encoder(model_config.resolve_kernels(mesh), None, config.classifier_head)
    b, t = config.batch_size, config.max_seq_length
    # One epoch of one batch: the row count only sets the learning-rate schedule's length.
    copies = config.parallel_seeds or config.num_seeds
    trainer = finetune.TaskTrainer(
        task, encoder, config, mesh, finetune.TaskData({"labels": np.zeros(b)}, {}, {}), copies
    )
    inputs = (
        {"cls": ((b, 1, model_config.hidden_size), np.float32)}
        if trainer.cached
        else {k: ((b, t), np.int32) for k in data.FEATURES}
    )
    shapes = {**inputs, "labels": ((b,), np.float32 if task.labels is None else np.int32)}
    state = trainer.abstract_state()
    return Step(
        trainer.train_step,
        (state, trainer.abstract_batch(shapes)),
        state,
        b,
        t,
        None,
        f"GLUE fine-tuning step ({task.name}, {copies} seed{'s' * (copies > 1)} together)",
        trainer.model_config,
    )


STEP_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, jax.sharding.Mesh], Step]] = {
    "pretrain": pretrain_step,
    "finetune": finetune_step,
}


def compile_report(config: ml_collections.ConfigDict, topology: Topology, step: str = "pretrain") -> dict[str, Any]:
    """Compiles `step` ('pretrain' | 'finetune') of `config` for `topology` and returns the report (see the module
    doc; the keys scripts read: fits, per_device_bytes.total, hbm_bytes, flops_per_device,
    bytes_accessed_per_device, compile_seconds, estimated_step_seconds, estimated_mfu, collectives). Bad input
    raises ValueError before compiling. When the TPU compiler refuses the program for lack of HBM, the report
    has fits False, the compiler's message and the memory figures it gives; the cost fields are None."""
    if step not in STEPS:
        raise ValueError(f"--step={step!r}: choose from {', '.join(STEPS)}")
    if step == "pretrain":
        config_checks.check_pretraining(config)
    devices = topology_devices(topology)
    mesh = sharding.create_mesh(config.mesh.to_dict(), devices)
    accum = config.get("grad_accum_steps", 1)
    sharding.check_batch_size(config.batch_size, mesh, grad_accum_steps=accum)
    hosts = len({d.process_index for d in devices})
    if config.batch_size % hosts:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the {hosts} hosts of "
            f"{topology.name} (every host feeds its own rows)"
        )
    built = STEP_BUILDERS[step](config, mesh)
    batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    chip = topology.chip
    peak_flops = metric_writer.peak_flops_per_device(devices[0]) if chip else None
    report = {
        "step": step,
        "description": built.description,
        "topology": topology.name,
        "platform": devices[0].platform,
        "chip": devices[0].device_kind,
        "num_chips": len(devices),
        "num_hosts": hosts,
        "mesh": dict(mesh.shape),
        "global_batch": built.global_batch,
        "seq_len": built.seq_len,
        "grad_accum_steps": accum,
        "per_device_batch": built.global_batch // batch_shards,
        "per_device_micro_batch": built.global_batch // accum // batch_shards,
        "state_bytes_per_device": per_device_bytes(built.state),
        "hbm_bytes": chip.hbm_bytes if chip else None,
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
        report.update(
            compile_seconds=time.perf_counter() - start,
            compile_cpu_seconds=time.process_time() - cpu_start,
            fits=False,
            compile_error=str(e).strip(),
            per_device_bytes=refused_bytes(str(e), per_device_bytes(built.args)),
            flops_per_device=None,
            bytes_accessed_per_device=None,
            collectives=None,
        )
        report.update(estimate(report, chip, peak_flops, built.model_flops), hints=hints(config, report))
        return report
    report.update(compile_seconds=time.perf_counter() - start, compile_cpu_seconds=time.process_time() - cpu_start)

    nbytes, analysis = memory_bytes(compiled), cost(compiled)
    report.update(
        per_device_bytes=nbytes,
        fits=nbytes["total"] <= chip.hbm_bytes if chip else None,
        flops_per_device=analysis.get("flops"),
        bytes_accessed_per_device=analysis.get("bytes accessed"),
        collectives=collectives(compiled.as_text()),
    )
    report.update(estimate(report, chip, peak_flops, built.model_flops))
    report["hints"] = hints(config, report) if report["fits"] is False else []
    return report


def model_knobs(config: ConvBertConfig) -> dict[str, Any]:
    """The compute knobs of the compiled model: `kernels` as resolved for the platform (e.g. 'tpu'), the
    implementation that selects per kernel (`kernel_impls`), `remat` and `scan_layers`."""
    return {
        "kernels": config.kernels,
        "kernel_impls": {name: kernels.resolve_impl(config.kernels, name) for name in kernels.KERNELS},
        "remat": config.remat,
        "scan_layers": config.scan_layers,
    }


def estimate(
    report: Mapping[str, Any], chip: Chip | None, peak_flops: float | None, model_flops: float | None
) -> dict[str, Any]:
    """Roofline ESTIMATE of the step time per chip and the tokens/s and MFU it implies (None without chip figures
    or without a cost analysis).

    XLA's cost analysis counts a loop body once, so with grad_accum_steps = k the FLOPs and bytes cover one
    micro-batch plus the update; the estimate multiplies them by k (an over-count of the update). With scan_layers
    the layers' loop counts once too: the note says the estimate covers one layer per network."""
    flops_, bytes_ = report["flops_per_device"], report["bytes_accessed_per_device"]
    out = dict(
        estimate_note=ESTIMATE_NOTE,
        peak_flops_per_second=peak_flops,
        hbm_bytes_per_second=chip.hbm_bytes_per_second if chip else None,
        ici_bytes_per_second=chip.ici_bytes_per_second if chip else None,
        estimated_step_seconds=None,
        estimated_bound=None,
        estimated_tokens_per_second=None,
        estimated_mfu=None,
        estimated_communication_seconds=None,
        model_flops_per_step=model_flops,
    )
    if chip is None or not peak_flops:
        return {**out, "estimate_note": "no chip figures for this platform: no step-time estimate"}
    if flops_ is None or bytes_ is None:
        return {**out, "estimate_note": "no cost analysis (the program did not compile): no step-time estimate"}
    if report["scan_layers"]:
        out["estimate_note"] += (
            "; UNDERESTIMATE: with scan_layers XLA's cost analysis counts one layer per network "
            "(compile with --config.model.scan_layers=False for the estimate)"
        )
    k = report["grad_accum_steps"]
    compute, memory = k * flops_ / peak_flops, k * bytes_ / chip.hbm_bytes_per_second
    seconds = max(compute, memory)
    return {
        **out,
        "estimated_step_seconds": seconds,
        "estimated_bound": "compute" if compute >= memory else "memory",
        "estimated_tokens_per_second": report["global_batch"] * report["seq_len"] / seconds,
        "estimated_mfu": model_flops / (seconds * peak_flops * report["num_chips"]) if model_flops else None,
        "estimated_communication_seconds": communication_seconds(report["collectives"], chip),
    }


def communication_seconds(collectives_: Mapping[str, Mapping[str, int]], chip: Chip) -> float:
    """ESTIMATE of one step's time in collectives per chip: the bytes each chip sends (`TRAFFIC` x the bytes of
    `convbert.aot.hlo.collectives`) over the chip's inter-chip bandwidth. It does not overlap with the roofline
    estimate here; on a TPU, XLA overlaps asynchronous collectives with compute, so roofline + this is an upper
    estimate and the larger of the two a lower one. Trip counts of loops are included (the collectives are)."""
    return sum(TRAFFIC[kind] * c["bytes"] for kind, c in collectives_.items()) / chip.ici_bytes_per_second


def hints(config: ml_collections.ConfigDict, report: Mapping[str, Any]) -> list[str]:
    """The knobs that cut per-device memory, for a config that does not fit."""
    out = []
    mesh, accum, micro = report["mesh"], report["grad_accum_steps"], report["per_device_micro_batch"]
    if micro > 1:
        out.append(
            f"--config.grad_accum_steps={accum * 2}: half the activations (per-device micro-batch {micro} -> "
            f"{micro // 2}), same global batch; or a smaller --config.batch_size"
        )
    if mesh["fsdp"] == 1 and report["num_chips"] > 1:
        out.append(
            f"--config.mesh.data=1 --config.mesh.fsdp=-1: FSDP splits the parameters and optimizer state "
            f"({format_bytes(report['state_bytes_per_device'])} per device now) over all {report['num_chips']} "
            "devices"
        )
    if "remat" in config.get("model", {}):
        out.append(f"--config.model.remat=...: recompute activations in the backward pass (now {config.model.remat!r})")
    return out


def format_bytes(n: float | None) -> str:
    """n bytes as GiB or MiB; '?' for None."""
    return "?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
