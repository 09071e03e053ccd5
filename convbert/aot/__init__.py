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
that leaves out communication and assumes perfect overlap; tokens/s and MFU are derived from that estimate. Beside
it, an ESTIMATE of the step's communication: the bytes each chip sends in its collectives over the chip's
inter-chip bandwidth (`estimated_communication_seconds`).
A config that does not fit exits with status 1 after printing the numbers and the knobs that would help; bad
input (topology, mesh, batch) exits with status 2 before anything is compiled.

Topologies: `v4:2x2x4`, `v5e:16x16`, `v5p:4x4x4`, `v6e:8x8` (chips per dimension), or the Cloud TPU accelerator
names `v4-32`, `v5p-128` (TensorCores: two per chip) and `v5e-256`, `v6e-256` (chips); `cpu:N` for N CPU
devices. v4 is compiled as megacore (one device per chip, as JAX runs it).

The report also names the model's compute knobs it compiled: `model.kernels` as resolved for the platform (with
each kernel's implementation), `model.remat` and `model.scan_layers`, and gives the compile's CPU seconds beside
its wall time (the wall time depends on the machine's load). With `scan_layers` the compile is faster, but XLA's
cost analysis counts the scanned layer once, so FLOPs, bytes and the estimate then cover one layer per network.

The package: `topology` holds the chip table and the topology names, `steps` the steps, their compilation and the
report's figures, `hlo` the reading of the compiled program (collectives, memory and cost analyses), `__main__`
the command line and the console report.
"""
