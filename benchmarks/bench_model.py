"""Forward and forward+backward throughput and peak memory of the NNX ConvBERT beside transformers' PyTorch ConvBERT.

    python -m benchmarks.bench_model --sizes small,base --batch 32 --seq 128 --steps 5 --rounds 3 \
        --json_out /tmp/bench_model.json

Model on both sides: the ConvBERT encoder + ELECTRA discriminator head (dense H->H, gelu, dense H->1), i.e. our
`ConvBertForPreTraining` and transformers' `ConvBertModel` + the same head in torch, same config, fp32, batch x seq
random token ids, attention mask all ones.
- `fwd`: evaluation forward (no dropout) to the per-token logits; jax: `jax.jit`, torch: `model.eval()` under
  `torch.inference_mode()`.
- `train`: training-mode forward (dropout `--dropout`, 0.1 by default, 0 turns it off on both sides) + masked BCE
  loss + gradients of every parameter (no optimizer update); jax: `nnx.split(model, nnx.Param, ...)` once,
  `jax.jit(jax.value_and_grad(loss))` with `nnx.merge` inside (AOT-compiled), a fresh dropout key per step; torch:
  `model.train()`, grads set to None, `loss.backward()`.
Each (framework, size, mode) runs in its own fresh subprocess (`benchmarks.common.run_worker`, so that peak RSS is
its own); torch uses `torch.set_num_threads(--threads)`. Times are medians of the timed steps after `--warmup`
untimed ones (`jax.block_until_ready` on all outputs), pooled over `--rounds` (each round runs every job again, jax
and torch of a (size, mode) back to back, so that slow and fast phases of a shared machine hit both; per-round
ratios are printed). Peak memory: `ru_maxrss` of the worker (includes jax compilation), and the peak RSS of the
timed steps alone (VmHWM after a reset through /proc/self/clear_refs; freed memory stays in the allocator, so it is
usually the same). MFU = tokens/s x analytic matmul FLOPs per token (`convbert.flops` terms; 3x forward for a
training step) / `--peak_gflops` (ratios to torch are the robust numbers).

XLA flags for the jax workers can be passed with `--xla_flags` (copied into XLA_FLAGS of the workers only; the
library sets none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

from benchmarks.common import add_common_args, emit_result, loadavg
from benchmarks.common import run_worker as run_worker_process


def flops_per_token(cfg, seq: int, head: bool = True) -> float:
    """Forward matmul FLOPs per token (2 x MACs; convolutions and attention included, elementwise ops not): the
    matmul terms of `convbert.flops` for the encoder, embeddings_project and the discriminator head. Small 19.2M,
    base 167.1M per token at T = 128. A training step counts 3x."""
    from convbert.flops import embedding_terms, layer_terms, rtd_head_terms

    def matmuls(terms):
        return sum(t.flops for t in terms if t.matmul)

    return float(
        cfg.num_hidden_layers * matmuls(layer_terms(cfg, seq))
        + matmuls(embedding_terms(cfg, seq))
        + (matmuls(rtd_head_terms(cfg)) if head else 0)
    )


def model_config(job: dict):
    from convbert.config import size_config

    return size_config(job["size"], hidden_dropout_prob=job["dropout"], attention_probs_dropout_prob=job["dropout"])


def _inputs(cfg, batch: int, seq: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    labels = rng.integers(0, 2, (batch, seq)).astype(np.int32)
    return ids, mask, labels


# ------------------------------------------------------------------------------------------------
# Workers (one fresh process per measurement)


def build_jax_step(job: dict):
    """A closure running one step of `job` (compiled ahead of time)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from convbert import ConvBertForPreTraining

    cfg = model_config(job)
    graphdef, params, rest = nnx.split(ConvBertForPreTraining(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    ids, mask, labels = (jnp.asarray(a) for a in _inputs(cfg, job["batch"], job["seq"]))
    if job["mode"] == "fwd":

        def forward(params, ids, mask):
            return nnx.merge(graphdef, params, rest)(ids, attention_mask=mask).logits

        step = jax.jit(forward).lower(params, ids, mask).compile()
        return lambda: step(params, ids, mask)

    def loss_fn(params, ids, mask, labels, rng):
        return nnx.merge(graphdef, params, rest)(
            ids, attention_mask=mask, labels=labels, deterministic=False, dropout_rng=rng
        ).loss

    key = jax.random.key(0)
    step = jax.jit(jax.value_and_grad(loss_fn)).lower(params, ids, mask, labels, key).compile()
    counter = iter(range(1 << 30))
    return lambda: step(params, ids, mask, labels, jax.random.fold_in(key, next(counter)))


def build_torch_step(job: dict):
    """A closure running one step of transformers' ConvBertModel + the discriminator head (see module docstring)."""
    import torch
    import transformers

    torch.set_num_threads(job["threads"])
    cfg = model_config(job)
    assert cfg.hf_compatible, cfg.hf_incompatibilities
    torch.manual_seed(0)
    body = transformers.ConvBertModel(transformers.ConvBertConfig(**cfg.to_hf_dict()))
    h = cfg.hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.GELU(), torch.nn.Linear(h, 1))
    ids, mask, labels = (torch.as_tensor(a).long() for a in _inputs(cfg, job["batch"], job["seq"]))
    params = list(body.parameters()) + list(head.parameters())

    def forward():
        return head(body(input_ids=ids, attention_mask=mask).last_hidden_state)[..., 0]

    if job["mode"] == "fwd":
        body.eval(), head.eval()

        def run():
            with torch.inference_mode():
                forward()

        return run

    body.train(), head.train()
    weights = mask.float()

    def run():
        for p in params:
            p.grad = None
        per_token = torch.nn.functional.binary_cross_entropy_with_logits(forward(), labels.float(), reduction="none")
        ((per_token * weights).sum() / weights.sum().clamp(min=1.0)).backward()

    return run


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(job: dict) -> dict:
    """Builds the job's step, runs `warmup` untimed and `steps` timed steps; times, CPU times and memory."""
    base_rss = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    if job["framework"] == "jax":
        import jax

        step = build_jax_step(job)
        run = lambda: jax.block_until_ready(step())
    else:
        run = build_torch_step(job)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    for _ in range(max(job["warmup"] - 1, 0)):
        run()
    reset = _reset_peak_rss()
    times, cpu = [], []
    for _ in range(job["steps"]):
        c0, t0 = time.process_time(), time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return dict(
        step_times_s=times,
        cpu_times_s=cpu,
        first_step_s=first,
        build_s=build_s,
        base_rss_mb=base_rss,
        step_peak_rss_mb=_rss_mb("VmHWM") if reset else None,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


# ------------------------------------------------------------------------------------------------
# Driver


def spawn(job: dict, xla_flags: str | None, timeout: float) -> dict:
    env = {}
    if job["framework"] == "jax" and xla_flags:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    return run_worker_process("benchmarks.bench_model", job, timeout, env)


def summarise(res: dict, peak_gflops: float) -> dict:
    from convbert.config import size_config

    tokens = res["batch"] * res["seq"]
    times = res["step_times_s"]
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    fpt = flops_per_token(size_config(res["size"]), res["seq"]) * (3 if res["mode"] == "train" else 1)
    tps = tokens / med
    return dict(
        median_step_s=med,
        q1_step_s=q[0],
        q3_step_s=q[2],
        median_cpu_s=statistics.median(res["cpu_times_s"]),
        tokens_per_s=tps,
        flops_per_token=fpt,
        mfu=tps * fpt / (peak_gflops * 1e9),
    )


def fmt_row(r: dict) -> str:
    step_peak = f"{r['step_peak_rss_mb'] / 1024:.2f}" if r.get("step_peak_rss_mb") else "n/a"
    return (
        f"| {r['size']} | {r['mode']} | {r['framework']} | {r['tokens_per_s']:,.0f} | "
        f"{r['median_step_s'] * 1e3:,.1f} ({r['q1_step_s'] * 1e3:,.0f}-{r['q3_step_s'] * 1e3:,.0f}) | "
        f"{r['median_cpu_s'] * 1e3:,.0f} | {r['mfu'] * 100:.1f}% | {r['peak_rss_mb'] / 1024:.2f} | {step_peak} | "
        f"{r.get('ratio_vs_torch', float('nan')):.2f} | {r['load_before']} |"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,base", help="comma-separated: small, medium_small, base")
    p.add_argument("--modes", default="fwd,train", help="comma-separated: fwd, train")
    p.add_argument("--frameworks", default="jax,torch", help="comma-separated: jax, torch")
    add_common_args(p, warmup=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole set (steps pooled over rounds)")
    p.add_argument(
        "--dropout", type=float, default=0.1, help="hidden and attention dropout of both models in train mode (0: off)"
    )
    p.add_argument("--xla_flags", default=None, help="extra XLA_FLAGS for the jax workers")
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        emit_result({**job, **worker(job)})
        return 0
    if not 0.0 <= args.dropout < 1.0:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")

    jobs = [
        dict(
            framework=fw,
            size=size,
            mode=mode,
            batch=args.batch,
            seq=args.seq,
            steps=args.steps,
            warmup=args.warmup,
            threads=args.threads,
            dropout=args.dropout,
        )
        for size in args.sizes.split(",")
        for mode in args.modes.split(",")
        for fw in args.frameworks.split(",")
    ]
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load {loadavg()}, dropout {args.dropout}, XLA_FLAGS extra: {args.xla_flags!r}",
        flush=True,
    )
    merged: dict[tuple, dict] = {}
    for rnd in range(args.rounds):
        for job in jobs:
            res = spawn(job, args.xla_flags, args.timeout)
            key = (job["framework"], job["size"], job["mode"])
            res["round_medians_s"] = [statistics.median(res["step_times_s"])]
            if key in merged:
                for f in ("round_medians_s", "step_times_s", "cpu_times_s"):
                    merged[key][f] += res[f]
                for f in ("peak_rss_mb", "step_peak_rss_mb"):
                    if res.get(f) and merged[key].get(f):
                        merged[key][f] = max(merged[key][f], res[f])
            else:
                merged[key] = res
            s = summarise(res, args.peak_gflops)
            print(
                f"round {rnd} {key}: {s['tokens_per_s']:,.0f} tok/s, median {s['median_step_s'] * 1e3:.1f} ms, "
                f"MFU {s['mfu'] * 100:.1f}%, peak RSS {res['peak_rss_mb'] / 1024:.2f} GB, load "
                f"{res['load_before']} -> {res['load_after']}",
                flush=True,
            )

    results = []
    for res in merged.values():
        res.update(summarise(res, args.peak_gflops))
        results.append(res)
    for r in results:
        ref = merged.get(("torch", r["size"], r["mode"]))
        r["ratio_vs_torch"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        if ref and args.rounds > 1 and r["framework"] == "jax":  # same-round ratios
            rounds = zip(r["round_medians_s"], ref["round_medians_s"], strict=True)
            r["round_ratios_vs_torch"] = [t / j for j, t in rounds]
            print(
                f"{r['size']} {r['mode']}: jax / torch per round "
                + ", ".join(f"{x:.2f}" for x in r["round_ratios_vs_torch"])
            )
    print(
        "\n| size | mode | framework | tokens/s | step ms median (IQR) | CPU ms/step | MFU | peak RSS GB "
        "| step peak RSS GB | vs torch | load |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(fmt_row(r))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(
                dict(
                    argv=sys.argv,
                    machine=platform.node(),
                    cpus=os.cpu_count(),
                    xla_flags=args.xla_flags,
                    peak_gflops=args.peak_gflops,
                    dropout=args.dropout,
                    results=results,
                ),
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
