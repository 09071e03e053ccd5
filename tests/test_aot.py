"""Ahead-of-time compilation (`convbert.aot`): topology names, the HLO collective count, clear errors before
compiling, the tiny model's train step on 8 CPU devices in three layouts (in process and through the command
line), the GLUE step, and the tiny step on a TPU v5e 2x2 topology with libtpu's compiler (skipped where libtpu is
not installed)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

import background
import pretraining_setup as setup
from configs.finetune_glue import get_config as glue_config
from configs.pretrain import get_config
from convbert import kernels, sharding
from convbert.aot import hlo as aot_hlo
from convbert.aot import steps as aot_compile
from convbert.aot import topology as aot_topology
from helpers import TINY_ENCODER

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
JSON_KEYS = (
    "fits",
    "per_device_bytes",
    "hbm_bytes",
    "flops_per_device",
    "bytes_accessed_per_device",
    "compile_seconds",
    "estimated_step_seconds",
    "estimated_mfu",
    "collectives",
    "kernels",
    "kernel_impls",
    "remat",
    "scan_layers",
    "compile_cpu_seconds",
)


@pytest.mark.parametrize(
    "name, generation, shape",
    [
        ("v5e-16", "v5e", (4, 4)),
        ("v5e-256", "v5e", (16, 16)),
        ("v5litepod-8", "v5e", (2, 4)),
        ("v6e-256", "v6e", (16, 16)),
        ("v4-8", "v4", (2, 2, 1)),
        ("v4-32", "v4", (2, 2, 4)),
        ("v5p-128", "v5p", (4, 4, 4)),
        ("v5p-1024", "v5p", (8, 8, 8)),
        ("v4:2x2x1", "v4", (2, 2, 1)),
        ("v5e:16x16", "v5e", (16, 16)),
        ("v6e:8x8", "v6e", (8, 8)),
        ("cpu:8", "cpu", (8,)),
    ],
)
def test_parse_topology(name, generation, shape):
    t = aot_topology.parse_topology(name)
    assert (t.generation, t.shape) == (generation, shape)
    if generation != "cpu":
        assert t.libtpu_name == f"{generation}:{'x'.join(map(str, shape))}"


@pytest.mark.parametrize(
    "name, message",
    [
        ("v3-8", "unknown TPU generation 'v3'"),
        ("v5e:4x4x4", "v5e topologies have 2 positive dimensions"),
        ("v4-6", "counts TensorCores"),
        ("v5e-12", "power-of-two chip count"),
        ("v5p-4", "at least 4"),
        ("tpu", "expected cpu:N"),
        ("cpu:0", "expected cpu:N"),
    ],
)
def test_parse_topology_errors(name, message):
    with pytest.raises(ValueError, match=message):
        aot_topology.parse_topology(name)


HLO = """HloModule jit_step, entry_computation_layout={(f32[16]{0})->f32[16]{0}}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.1 = f32[] add(%a, %b)
}

%all-reduce-scatter.3.clone (input_0: f32[8,128]) -> f32[4,128] {
  %input_0 = f32[8,128]{1,0:T(8,128)} parameter(0)
  %all-reduce.7 = f32[8,128]{1,0:T(8,128)} all-reduce(%input_0), channel_id=3, replica_groups=[2,2]<=[4], to_apply=%add
  ROOT %dynamic-slice.1 = f32[4,128]{1,0} dynamic-slice(%all-reduce.7, %c, %c), dynamic_slice_sizes={4,128}
}

%body (p: (s32[], f32[16])) -> (s32[], f32[16]) {
  %p = (s32[], f32[16]{0}) parameter(0)
  %g = f32[16]{0} get-tuple-element(%p), index=1
  %all-reduce.2 = (f32[16]{0}, /*index=1*/bf16[8]{0}) all-reduce(%g, %h), replica_groups={{0,1},{2,3}}, to_apply=%add
  %all-gather-start.1 = (f32[4]{0}, f32[16]{0}) all-gather-start(%g), replica_groups=[1,4]<=[4], dimensions={0}
  %all-gather-done.1 = f32[16]{0} all-gather-done(%all-gather-start.1)
  ROOT %t = (s32[], f32[16]{0}) tuple(%i, %all-gather-done.1)
}

%cond (p: (s32[], f32[16])) -> pred[] {
  %p = (s32[], f32[16]{0}) parameter(0)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (x: f32[16]) -> f32[16] {
  %x = f32[16]{0} parameter(0)
  %while = (s32[], f32[16]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %fusion = f32[4,128]{1,0} fusion(%y), kind=kCustom, calls=%all-reduce-scatter.3.clone
  %reduce-scatter.1 = bf16[2,64]{1,0} reduce-scatter(%z), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}
  %collective-permute-start = (bf16[8]{0}, bf16[8]{0}, u32[], u32[]) collective-permute-start(%w)
  %collective-permute-done = bf16[8]{0} collective-permute-done(%collective-permute-start)
  ROOT %all-to-all = (f32[2,4]{1,0}, f32[2,4]{1,0}) all-to-all(%a, %b), replica_groups={{0,1}}
}
"""


def test_collectives_count_loops_async_pairs_and_fused_reduce_scatter():
    assert aot_hlo.collectives(HLO) == {
        "all-reduce": {"count": 3, "bytes": 3 * (64 + 16)},  # in a loop of 3; a combined (tuple) all-reduce
        "all-gather": {"count": 3, "bytes": 3 * 64},  # async: counted at -done, the gathered result
        "reduce-scatter": {"count": 2, "bytes": 8 * 128 * 4 + 2 * 64 * 2 * 4},  # TPU fusion; the input of 4 x result
        "all-to-all": {"count": 1, "bytes": 64},
        "collective-permute": {"count": 1, "bytes": 16},
    }


def test_bad_input_errors_before_compiling():
    config = get_config("tiny")
    config.mesh.update(data=3)
    with pytest.raises(ValueError, match=r"config\.mesh: .* has 3 devices but 8"):
        aot_compile.compile_report(config, aot_topology.parse_topology("cpu:8"))
    config = get_config("tiny")
    config.batch_size = 12
    with pytest.raises(ValueError, match=r"config\.batch_size=12 is not divisible by the data x fsdp mesh size 8"):
        aot_compile.compile_report(config, aot_topology.parse_topology("cpu:8"))
    with pytest.raises(ValueError, match="needs 16 CPU devices but JAX has 8"):
        aot_compile.compile_report(get_config("tiny"), aot_topology.parse_topology("cpu:16"))
    with pytest.raises(ValueError, match="--step='eval'"):
        aot_compile.compile_report(get_config("tiny"), aot_topology.parse_topology("cpu:8"), step="eval")


def test_tpu_topology_without_libtpu_says_what_to_install(monkeypatch):
    monkeypatch.setattr(aot_topology.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"--topology=v5e-16 needs the TPU compiler: pip install -r requirements-tpu"):
        aot_topology.topology_devices(aot_topology.parse_topology("v5e-16"))


def test_refused_bytes_reads_both_out_of_memory_messages():
    temporaries = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
        "(57.08G) exceeds available HBM (15.75G)."
    )
    b = aot_hlo.refused_bytes(temporaries, 2**20)
    assert b["arguments"] == 2**20 and b["temporaries"] == int(57.08 * 2**30)
    assert b["total"] == 2**20 + b["temporaries"] and b["outputs"] is None
    used = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.25G of 15.75G hbm. Exceeded by 4.5G."
    assert aot_hlo.refused_bytes(used, 2**20)["total"] == int(20.25 * 2**30)


def check_report(r: dict, num_chips: int) -> None:
    """The fields scripts read, and that the donated train state is updated in place."""
    assert set(JSON_KEYS) <= set(r)
    assert r["num_chips"] == num_chips and r["compile_seconds"] > 0
    b = r["per_device_bytes"]
    assert b["total"] == b["arguments"] + b["outputs"] - b["aliased"] + b["temporaries"] + b["generated_code"]
    assert r["state_bytes_per_device"] <= b["aliased"] <= b["arguments"]  # the donated state is aliased
    assert r["flops_per_device"] > 0 and r["bytes_accessed_per_device"] > 0
    assert set(r["collectives"]) == set(aot_hlo.COLLECTIVES)
    platform = "tpu" if r["platform"] == "tpu" else "cpu"  # the kernels 'auto' resolves to for the devices
    assert r["kernels"] == platform and r["kernel_impls"] == kernels.AUTO_IMPL[platform]
    assert (r["remat"], r["scan_layers"]) == ("none", False)


@pytest.mark.slow
def test_cpu_layouts_compile():
    """FSDP and FSDP + tensor parallel on 8 CPU devices: the state is split, parameters are gathered."""
    reports = {}
    for name, mesh in {"fsdp": dict(data=1, fsdp=8, model=1), "fsdp_model": dict(data=1, fsdp=4, model=2)}.items():
        config = get_config("tiny")
        config.mesh.update(mesh)
        reports[name] = r = aot_compile.compile_report(config, aot_topology.parse_topology("cpu:8"))
        check_report(r, 8)
        assert r["state_bytes_per_device"] == r["per_device_bytes"]["aliased"]
        assert r["fits"] is None and r["estimated_step_seconds"] is None  # no chip figures for CPU devices
        assert r["collectives"]["all-gather"]["count"] > 0  # FSDP gathers the split parameters
    # The hidden states stay batch-split (modeling.HIDDEN_AXES): only the embedding lookups (a forward gather and a
    # backward scatter-add from the table split on embed, for the generator's and the discriminator's inputs)
    # move activations between layouts; without the constraints this step had 60 all-to-alls.
    assert reports["fsdp"]["collectives"]["all-to-all"]["count"] <= 4
    assert reports["fsdp"]["per_device_batch"] == 2 and reports["fsdp_model"]["per_device_batch"] == 4
    state = aot_compile.pretrain_step(get_config("tiny"), sharding.create_mesh({"data": -1})).state
    total = aot_hlo.per_device_bytes(state)
    assert reports["fsdp"]["state_bytes_per_device"] < total / 4  # (a few small arrays stay replicated)


def run_cli(*flags: str, json_out) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "convbert.aot", *flags, f"--json_out={json_out}"],
        capture_output=True,
        text=True,
        cwd=setup.REPO,
        timeout=1200,
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    with open(json_out) as f:
        return proc, json.load(f)


def cli_fixture(name: str, *flags: str, tpu: bool = False):
    """The background fixture `name`: (process, report) of `python -m convbert.aot FLAGS`; `tpu`: skipped
    where libtpu is not installed."""

    def job():
        if tpu and not HAS_LIBTPU:
            pytest.skip("libtpu is not installed")
        return run_cli(*flags, json_out=os.path.join(background.directory(name), "r.json"))

    job.__name__, job.__doc__ = name, f"(process, report) of python -m convbert.aot {' '.join(flags)}"
    return background.fixture(job)


TINY = "--config=configs/pretrain.py:tiny"
cli_cpu_data_parallel = cli_fixture("cli_cpu_data_parallel", TINY, "--topology=cpu:8")
cli_tpu_v5e = cli_fixture(
    "cli_tpu_v5e",
    TINY,
    "--topology=v5e:2x2",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=2",
    "--config.mesh.model=2",
    tpu=True,
)
cli_tpu_out_of_memory = cli_fixture(
    "cli_tpu_out_of_memory", TINY, "--topology=v5e:2x2", "--config.batch_size=32768", tpu=True
)


@pytest.mark.slow
def test_cli_cpu_data_parallel(cli_cpu_data_parallel):
    proc, r = cli_cpu_data_parallel
    assert proc.returncode == 0
    check_report(r, 8)
    assert r["config"] == "configs/pretrain.py:tiny" and r["mesh"] == {"data": 8, "fsdp": 1, "model": 1}
    assert r["state_bytes_per_device"] == r["per_device_bytes"]["aliased"]
    assert r["collectives"]["all-reduce"]["count"] > 0 and r["collectives"]["all-gather"]["count"] == 0
    assert "pretraining step (electra) on cpu:8" in proc.stdout
    assert (
        "model: kernels cpu (gelu cpu_tuned, dropout_keep_mask cpu_tuned, shifted_window_sum cpu_tuned, matmul "
        "cpu_tuned), remat none, layers unrolled" in proc.stdout
    )


def test_cli_bad_input_exits_2_before_compiling():
    proc = subprocess.run(
        [sys.executable, "-m", "convbert.aot", "--topology=v5e-12"],
        capture_output=True,
        text=True,
        cwd=setup.REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "convbert.aot: --topology='v5e-12'" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -r requirements-tpu.txt)")
def test_tpu_v5e_compile(cli_tpu_v5e):
    """The TPU compiler's view of the tiny step on v5e:2x2 (2 x FSDP, 2 x tensor parallel), with the estimate."""
    proc, r = cli_tpu_v5e
    assert proc.returncode == 0
    check_report(r, 4)
    assert (r["chip"], r["hbm_bytes"], r["fits"]) == ("TPU v5 lite", 16 * 2**30, True)
    assert r["peak_flops_per_second"] == 197e12 and r["hbm_bytes_per_second"] == 0.819e12
    seconds = max(r["flops_per_device"] / 197e12, r["bytes_accessed_per_device"] / 0.819e12)
    assert r["estimated_step_seconds"] == pytest.approx(seconds)
    assert r["estimated_mfu"] == pytest.approx(r["model_flops_per_step"] / (seconds * 197e12 * 4))
    assert r["collectives"]["all-gather"]["count"] > 0
    traffic = sum((2 if kind == "all-reduce" else 1) * c["bytes"] for kind, c in r["collectives"].items())
    assert r["ici_bytes_per_second"] == 0.2e12 and traffic > 0
    assert r["estimated_communication_seconds"] == pytest.approx(traffic / 0.2e12)
    assert "ESTIMATE" in proc.stdout and "estimated MFU" in proc.stdout and "estimated communication" in proc.stdout


@pytest.mark.slow
def test_finetune_step_compiles(tmp_path):
    """The GLUE step, its encoder's architecture read from a local checkpoint's config.json (no weights)."""
    TINY_ENCODER.save(str(tmp_path))
    config = glue_config("sst2,tiny")
    config.init_checkpoint = str(tmp_path)
    r = aot_compile.compile_report(config, aot_topology.parse_topology("cpu:8"), step="finetune")
    check_report(r, 8)
    assert (
        r["description"] == "GLUE fine-tuning step (sst2, 1 seed together)"
        and r["global_batch"] == 8
        and r["seq_len"] == 64
    )
    assert r["state_bytes_per_device"] == r["per_device_bytes"]["aliased"]
    assert r["model_flops_per_step"] is None and r["estimated_mfu"] is None
    # 4 seeds vectorised; data=8 does not divide 4, so every device holds the 4 seeds' state
    config.parallel_seeds = 4
    seeds = aot_compile.compile_report(config, aot_topology.parse_topology("cpu:8"), step="finetune")
    assert seeds["description"] == "GLUE fine-tuning step (sst2, 4 seeds together)"
    assert seeds["state_bytes_per_device"] == pytest.approx(4 * r["state_bytes_per_device"], rel=0.01)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (pip install -r requirements-tpu.txt)")
def test_tpu_out_of_memory_exits_1_with_the_numbers_and_knobs(cli_tpu_out_of_memory):
    """8192 sequences per chip: the TPU compiler refuses the program; the report says why and what would help."""
    proc, r = cli_tpu_out_of_memory
    assert proc.returncode == 1 and r["fits"] is False
    assert r["compile_error"].startswith("RESOURCE_EXHAUSTED")
    assert r["per_device_bytes"]["total"] > r["hbm_bytes"] == 16 * 2**30
    assert r["flops_per_device"] is None and r["estimated_step_seconds"] is None
    assert any("grad_accum_steps=2" in h for h in r["hints"]) and any("fsdp=-1" in h for h in r["hints"])
    assert "DOES NOT FIT" in proc.stdout and "what would help" in proc.stdout
