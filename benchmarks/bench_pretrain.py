"""Full ELECTRA pretraining step (docs/electra.md, google-research/electra `run_pretraining.py`; the optimizer of
docs/electra.md#optimizer) of convbert-jax beside a PyTorch reference of the same objective.

    python -m benchmarks.bench_pretrain --sizes small,base --batch 32 --seq 128 --steps 15
    python -m benchmarks.bench_pretrain --device gpu --dtype bfloat16 --torch_compile inductor --sizes base \
        --batch 256 --runs "kernels=reference;kernels=cpu_tuned;torch" --peak_gflops 989000  # benchmarks/gpu.sh

One step = masking, generator forward at the masked slots only, sampling (jax: the default `ElectraConfig.sampler`,
one uniform per slot; torch: upstream's Gumbel-max; `--runs "sampler=gumbel;torch"` for Gumbel on both),
discriminator forward, loss = MLM + 50 RTD, backward, global-norm clip 1.0, AdamW update.
- jax: `convbert.electra.pretraining_loss` in a `jax.jit` train step of the split/merge pattern (`nnx.split(model,
  nnx.Param, ...)` once, `nnx.merge` inside), the project's `electra_adamw`, parameters and optimizer state donated.
- torch: transformers' `ConvBertModel` for the discriminator and for the generator (`transformers.ConvBertConfig`
  at the generator width of docs/electra.md#generator-config; transformers has no 2A != H attention output, so the
  small generator gets head size 32 instead of 64, ~1% of the step's FLOPs), the generator's `embeddings` module
  replaced by the discriminator's (shared tables and LayerNorm), MLM head dense-gelu-LayerNorm tied to the word
  table at the masked slots only, discriminator head dense-gelu-dense, BCE, the same masking/sampling,
  `torch.optim.AdamW` (eps 1e-6, weight decay 0.01), `clip_grad_norm_(1.0)`; `torch.set_num_threads(--threads)`.
Precision: by default both compute in float32 (equal precision; on a CPU without bfloat16 matmul units jax's bfloat16
small step is slower than its float32 one); `--dtype bfloat16` sets both to bfloat16 (jax: `model.dtype`; torch:
autocast), parameters fp32 on both sides; `--dtype config` gives jax the size's `model.dtype` of configs/pretrain.py
(bfloat16 for the paper sizes) and torch fp32. `--torch_compile inductor` wraps torch's step (all but the masking) in
`torch.compile`. `--device gpu` runs both on the first GPU (jax: JAX_PLATFORMS=cuda). Dropout 0.1 on, rows of --seq real
tokens ([CLS] random ids [SEP]). A jax run is `default` or comma-separated overrides of `ElectraConfig` fields and of
the model's compute knobs (`ConvBertConfig.RUNTIME_FIELDS`: kernels, remat, scan_layers), e.g. `kernels=cpu_tuned`.
Every (framework, size) runs in a fresh subprocess, one after the other; reported: median of --steps timed steps after
--warmup (the first compiles), tokens/s, MFU = tokens/s x executed matmul FLOPs per token
(`convbert.flops.model_flops_per_step`) / --peak_gflops (default 185: 2-thread fp32 matmul peak of the project's CPU; an
H200's dense bf16 peak is 989000), peak RSS of the worker (`ru_maxrss`) with its growth over the RSS after model +
optimizer construction (activations, gradients, compilation), and on a GPU the peak device memory (jax:
`memory_stats()['peak_bytes_in_use']`; torch: `torch.cuda.max_memory_allocated`). `--part` times pieces of the jax step
instead (see `PARTS`), for profiling.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

from benchmarks.common import add_common_args, emit_result
from benchmarks.common import run_worker as run_worker_process

PARTS = ("step", "grad", "forward")  # full step | value_and_grad without the update | forward loss only


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def electra_setup(size: str, dtype: str = "config", **overrides):
    """(discriminator config, generator config, ElectraConfig) of configs/pretrain.py:SIZE; `dtype` ('config'
    keeps the size's) and the overrides of `ConvBertConfig.RUNTIME_FIELDS` go to the model, the other overrides to
    the `ElectraConfig`."""
    import dataclasses

    from configs.pretrain import get_config
    from convbert.config import RUNTIME_FIELDS, ElectraConfig
    from convbert.flops import configs_from

    config = get_config(size)
    config.model.update({k: v for k, v in overrides.items() if k in RUNTIME_FIELDS})
    config.model.dtype = config.model.dtype if dtype == "config" else dtype
    electra = {k: v for k, v in overrides.items() if k not in RUNTIME_FIELDS}
    return (*configs_from(config), dataclasses.replace(ElectraConfig.from_config(config.electra), **electra))


def make_batches(vocab: int, batch: int, seq: int, count: int = 4, seed: int = 0) -> list[dict]:
    """`count` batches of full rows: [CLS] random ids [SEP]."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = rng.integers(1000, vocab, (batch, seq)).astype(np.int32)
        ids[:, 0], ids[:, -1] = 101, 102
        out.append(dict(input_ids=ids, input_mask=np.ones_like(ids), segment_ids=np.zeros_like(ids)))
    return out


def build_jax(job: dict, variant: dict):
    """A `run()` closure doing one jax step (`job['part']`) on the next batch; `variant` overrides ElectraConfig."""
    import itertools

    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from convbert.electra import ElectraModel, pretraining_loss
    from convbert.optim import electra_adamw, warmup_linear_decay

    disc, gen, cfg = electra_setup(job["size"], job["dtype"], **variant)
    graphdef, params, rest = nnx.split(ElectraModel(disc, gen, rngs=nnx.Rngs(0)), nnx.Param, ...)
    tx = electra_adamw(warmup_linear_decay(3e-4, 1_000_000, 10_000), params=params)

    def loss_fn(params, batch, rng):
        return pretraining_loss(nnx.merge(graphdef, params, rest), batch, rng, cfg, deterministic=False)

    def train_step(params, opt_state, step, batch, rng):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step + 1, loss

    batches = itertools.cycle([jax.device_put(b) for b in make_batches(disc.vocab_size, job["batch"], job["seq"])])
    keys = (jax.random.fold_in(jax.random.key(0), i) for i in itertools.count())
    if job["part"] != "step":
        fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True) if job["part"] == "grad" else loss_fn)
        return lambda: jax.block_until_ready(fn(params, next(batches), next(keys)))
    state = [params, tx.init(params), jnp.zeros((), jnp.int32)]
    step_fn = jax.jit(train_step, donate_argnums=(0, 1, 2))

    def run():
        *state[:], loss = step_fn(*state, next(batches), next(keys))  # parameters and optimizer state donated
        jax.block_until_ready(loss)

    return run


def device_peak_mb(name: str) -> float | None:
    """Peak device memory of this process's run `name` ('torch' or a jax run), in MB; None on CPU."""
    if name == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def build_torch(job: dict):
    """A `run()` closure doing one PyTorch reference step (module docstring) on the next batch."""
    import itertools

    import torch
    import transformers

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    dev = torch.device("cuda" if job["device"] == "gpu" else "cpu")
    disc_cfg, gen_cfg, cfg = electra_setup(job["size"])

    def hf(c):
        return transformers.ConvBertConfig(**{**c.to_hf_dict(), "pad_token_id": c.pad_token_id})

    disc, gen = transformers.ConvBertModel(hf(disc_cfg)), transformers.ConvBertModel(hf(gen_cfg))
    gen.embeddings = disc.embeddings  # shared tables and LayerNorm (docs/electra.md#shared-embeddings)
    e, h, hg = disc_cfg.embedding_size, disc_cfg.hidden_size, gen_cfg.hidden_size
    gen_head = torch.nn.Sequential(torch.nn.Linear(hg, e), torch.nn.GELU(), torch.nn.LayerNorm(e, eps=1e-12))
    gen_bias = torch.nn.Parameter(torch.zeros(disc_cfg.vocab_size, device=dev))
    disc_head = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.GELU(), torch.nn.Linear(h, 1))
    modules = torch.nn.ModuleList([disc, gen, gen_head, disc_head]).train().to(dev)
    params = list(modules.parameters()) + [gen_bias]
    opt = torch.optim.AdamW(params, lr=3e-4, eps=1e-6, weight_decay=0.01)
    word = disc.embeddings.word_embeddings.weight
    specials = torch.tensor([cfg.cls_id, cfg.sep_id, cfg.mask_id], device=dev)
    n_max = cfg.max_predictions_per_seq
    batches = itertools.cycle(
        [
            {k: torch.as_tensor(v).long().to(dev) for k, v in b.items()}
            for b in make_batches(disc_cfg.vocab_size, job["batch"], job["seq"])
        ]
    )
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=job["dtype"] == "bfloat16")

    def scatter(values, positions, selected, updates):  # upstream scatter_update, duplicates averaged
        hits = (positions[..., None] == torch.arange(values.shape[1], device=dev)) & selected[..., None]
        count = hits.sum(1)
        total = (hits * updates[..., None]).sum(1)
        return torch.where(count > 0, total // count.clamp(min=1), values), count > 0

    def loss_fn(ids, mask, seg, gen_ids, pos, valid, labels):  # generator, sampling, discriminator, loss
        hidden = gen(input_ids=gen_ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
        hidden = hidden.gather(1, pos[..., None].expand(-1, -1, hg))
        logits = gen_head(hidden) @ word.T + gen_bias  # [B, N, V]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        w = valid.float()
        mlm = (nll * w).sum() / (w.sum() + 1e-6)
        with torch.no_grad():  # Gumbel-max sampling and replacement (docs/electra.md#sampling)
            u = torch.rand_like(logits)
            sampled = (logits / cfg.temperature - torch.log(-torch.log(u + 1e-9) + 1e-9)).argmax(-1)
            disc_ids, updated = scatter(ids, pos, valid, sampled)
            is_fake = (updated & (disc_ids != ids)).float()
        disc_logits = disc_head(disc(input_ids=disc_ids, attention_mask=mask, token_type_ids=seg).last_hidden_state)[
            ..., 0
        ]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(disc_logits, is_fake, reduction="none")
        m = mask.float()
        return cfg.gen_weight * mlm + cfg.disc_weight * (bce.float() * m).sum() / (m.sum() + 1e-6)

    step_loss = torch.compile(loss_fn, backend=job["torch_compile"]) if job["torch_compile"] else loss_fn

    def run():
        batch = next(batches)
        ids, mask, seg = batch["input_ids"], batch["input_mask"], batch["segment_ids"]
        with torch.no_grad():  # masking (docs/electra.md#masking; upstream pretrain_helpers.py `mask`)
            cand = mask.bool() & ~torch.isin(ids, specials)
            n = torch.round(mask.sum(1).float() * cfg.mask_prob).long().clamp(1, n_max)
            pos = torch.multinomial(cand.float(), n_max, replacement=True)
            valid = (torch.arange(n_max, device=dev) < n[:, None]) & cand.gather(1, pos)
            pos = torch.where(valid, pos, 0)
            labels = ids.gather(1, pos)
            to_mask = valid & (torch.rand(valid.shape, device=dev) < cfg.mask_token_prob)
            gen_ids, _ = scatter(ids, pos, to_mask, torch.full_like(pos, cfg.mask_id))
        with autocast:
            loss = step_loss(ids, mask, seg, gen_ids, pos, valid, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return run


def parse_variant(spec: str) -> dict:
    """'default' -> {}; 'field=value,...' -> ElectraConfig overrides (values parsed as JSON when possible)."""
    if spec == "default":
        return {}
    out = {}
    for item in spec.split(","):
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def worker(job: dict) -> dict:
    """Builds every run of the job in this process, then times them round-robin (A B A B ...), so that load
    changes of the shared machine hit all alike. Peak RSS is per process: run one run per job to measure it."""
    rss = {"base": maxrss_mb()}
    runs = {}
    for name in job["runs"]:
        runs[name] = build_torch(job) if name == "torch" else build_jax(job, parse_variant(name))
    rss["built"] = maxrss_mb()
    for _ in range(job["warmup"]):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(job["steps"]):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return dict(
        step_times_s=times,
        rss_built_mb=rss["built"],
        peak_rss_mb=maxrss_mb(),
        peak_device_mb=device_peak_mb(next(iter(runs))) if len(runs) == 1 else None,
    )


# ------------------------------------------------------------------------------------------------
# Driver


def spawn(job: dict, timeout: float) -> dict:
    return run_worker_process(
        "benchmarks.bench_pretrain", job, timeout, env={"JAX_PLATFORMS": "cuda"} if job["device"] == "gpu" else None
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,base", help="comma-separated: tiny, small, medium_small, base")
    p.add_argument(
        "--runs",
        default="default;torch",
        help="';'-separated: torch | default | jax ElectraConfig overrides 'field=value,...'",
    )
    p.add_argument(
        "--interleave",
        action="store_true",
        help="all runs of a size in one process, timed round-robin (no per-run memory)",
    )
    add_common_args(p, warmup=3)
    p.add_argument("--part", default="step", choices=PARTS, help="what the jax runs time")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"), help="where both frameworks run")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("config", "float32", "bfloat16"),
        help="compute dtype of both (config: jax the size's model.dtype, torch fp32)",
    )
    p.add_argument(
        "--torch_compile",
        default="",
        choices=("", "inductor", "eager"),
        help="torch.compile the torch step with this backend (eager: dynamo's tracing only, a quick check)",
    )
    args = p.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        emit_result({**job, **worker(job)})
        return 0

    from convbert.flops import model_flops_per_step

    runs = args.runs.split(";")
    for r in runs:
        electra_setup("tiny", args.dtype, **({} if r == "torch" else parse_variant(r)))  # fail early on a typo
    dtype_label = "config / fp32" if args.dtype == "config" else args.dtype
    print(
        f"{os.cpu_count()} cpus, {'interleaved' if args.interleave else 'one process per run'}, "
        f"jax part: {args.part}, device {args.device}, dtype {dtype_label}, batch {args.batch} x "
        f"{args.seq}, peak {args.peak_gflops:,.0f} GFLOP/s\n\n| size | run | tokens/s | step ms median (IQR) | MFU "
        f"| vs torch | peak RSS GB | RSS growth GB | peak device GB | load before / after |\n"
        f"|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    results = []
    for size in args.sizes.split(","):
        job = dict(
            size=size,
            batch=args.batch,
            seq=args.seq,
            steps=args.steps,
            warmup=args.warmup,
            threads=args.threads,
            part=args.part,
            device=args.device,
            dtype=args.dtype,
            torch_compile=args.torch_compile,
        )
        disc, gen, cfg = electra_setup(size)
        flops = model_flops_per_step(disc, gen, args.batch, args.seq, cfg.max_predictions_per_seq)
        torch_tps = None
        # torch first, so that every jax row can print its ratio as soon as it is measured
        for group in [runs] if args.interleave else [[r] for r in sorted(runs, key=lambda r: r != "torch")]:
            res = spawn({**job, "runs": group}, args.timeout)
            for name in sorted(group, key=lambda r: r != "torch"):
                times = res["step_times_s"][name]
                med = statistics.median(times)
                q = statistics.quantiles(times, n=4) if len(times) > 1 else [med] * 3
                tps = args.batch * args.seq / med
                torch_tps = tps if name == "torch" else torch_tps
                r = dict(
                    size=size,
                    run=name,
                    median_s=med,
                    q1_s=q[0],
                    q3_s=q[2],
                    step_times_s=times,
                    tokens_per_s=tps,
                    mfu=flops / med / (args.peak_gflops * 1e9),
                    vs_torch=tps / torch_tps if torch_tps else float("nan"),
                    peak_rss_mb=None if args.interleave else res["peak_rss_mb"],
                    rss_growth_mb=None if args.interleave else res["peak_rss_mb"] - res["rss_built_mb"],
                    peak_device_mb=res["peak_device_mb"],
                    load=f"{res['load_before']} / {res['load_after']}",
                )
                gb = lambda mb: "-" if mb is None else f"{mb / 1024:.2f}"
                print(
                    f"| {size} | {name} | {tps:,.0f} | {med * 1e3:,.0f} ({q[0] * 1e3:,.0f}-{q[2] * 1e3:,.0f}) | "
                    f"{r['mfu'] * 100:.1f}% | {r['vs_torch']:.2f} | {gb(r['peak_rss_mb'])} | "
                    f"{gb(r['rss_growth_mb'])} | {gb(r['peak_device_mb'])} | {r['load']} |",
                    flush=True,
                )
                results.append(r)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(argv=sys.argv, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
