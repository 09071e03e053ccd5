"""Forward and forward+backward throughput and peak memory of the NNX ConvBERT beside transformers' PyTorch ConvBERT.

    python -m benchmarks.bench_model --sizes small,base --batch 32 --seq 128 --steps 5 --rounds 3 \
        --json_out /tmp/bench_model.json

Model on both sides: the ConvBERT encoder + ELECTRA discriminator head (dense H->H, gelu, dense H->1), i.e. our
`ConvBertForPreTraining` and transformers' `ConvBertModel` + the same head in torch, same config, fp32, batch x seq
random token ids, attention mask all ones.
- `fwd`: evaluation forward (no dropout) to the per-token logits; jax: `jax.jit`, torch: `model.eval()` under
  `torch.inference_mode()`.
- `train`: training-mode forward (dropout 0.1) + masked BCE loss + gradients of every parameter (no optimizer
  update); jax: `nnx.split(model, nnx.Param, ...)` once, `jax.jit(jax.value_and_grad(loss))` with `nnx.merge` inside
  (AOT-compiled), a fresh dropout key per step; torch: `model.train()`, grads set to None, `loss.backward()`.
Each (framework, size, mode, implementation) runs in its own fresh subprocess (so that peak RSS is its own); torch uses
`torch.set_num_threads(--threads)`. Times are medians of the timed steps after `--warmup` untimed ones
(`jax.block_until_ready` on all outputs), pooled over `--rounds` (each round runs every job again, jax and torch of a
(size, mode) back to back, so that slow and fast phases of a shared machine hit both; per-round ratios are printed).
Peak memory: `ru_maxrss` of the worker (includes jax compilation), and the peak RSS of the timed steps alone (VmHWM
after a reset through /proc/self/clear_refs; freed memory stays in the allocator, so it is usually the same).
MFU = tokens/s x analytic matmul FLOPs per token (`convbert.flops` terms; 3x forward for a training step) /
`--peak_gflops` (185: the team's measured 2-thread fp32 matmul rate for these machines; in quiet phases a jax
matmul has been measured well above it, so MFU > 100% can appear; ratios to torch are the robust numbers).

`--impl` compares formulations of the two time convolutions of the span-based dynamic convolution: the depthwise
"key" conv of `SeparableConv1D` (static weights [H, k]) and the dynamic conv over the conv value (per-token,
per-head softmax kernels [B, T, Nr, 1, k]). A spec is `current` (convbert.modeling as it is), one candidate name
for both, or `key=NAME,dyn=NAME`, plus optional `+WHATIF` parts (`WHATIFS`: changes outside the convolutions, to
quantify choices: gelu_jax, gelu_erf, threefry_dropout, rbg_dropout, no_dropout, threefry_unrolled). A spec patches
`convbert.modeling` in the worker process only. Candidates (all the same function; see `KEY_IMPLS`, `DYN_IMPLS`):
  slices     pad + k shifted slices, multiply-add, autodiff backward (the previous library code)
  vjp        same forward; custom VJP: dx by shifted slices, dw by k reductions over the broadcast axes
  vjp_band   same forward; custom VJP: dx by shifted slices, dw = diagonals of the banded gradient g x^T (matmul)
  vjp_band2  (dyn) as vjp_band with dx = band^T g by matmul too
  stack      (dyn) materialised [.., d, k] window (jnp.stack of slices) + einsum
  patches    (dyn) lax.conv_general_dilated_patches window + einsum
  conv       (key) lax.conv_general_dilated with feature_group_count = H
  banded     [T, T] band matrix per head (dyn) / per channel (key) built from the kernels by a pad/reshape skew,
             then a batched matmul, autodiff backward: T/k times the FLOPs but on the matmul units
  none       not a candidate: the identity (what the convolution costs; XLA then also drops unused kernels)
`--interleave` compiles all specs in one process per (size, mode) and times them round-robin (robust to load
changes; no torch, no per-candidate memory), reporting wall and process CPU time per step.

XLA flags for the jax workers can be passed with `--xla_flags` (copied into XLA_FLAGS of the workers only; the
library sets none).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time

from benchmarks.common import add_common_args, emit_result, loadavg
from benchmarks.common import run_worker as run_worker_process


# ------------------------------------------------------------------------------------------------
# Analytic FLOPs


def flops_per_token(cfg, seq: int, head: bool = True) -> float:
    """Forward matmul FLOPs per token (2 x MACs; convolutions and attention included, elementwise ops not): the
    matmul terms of `convbert.flops` for the encoder, embeddings_project and the discriminator head. Small 19.2M,
    base 167.1M per token at T = 128 (the team's reference numbers). A training step counts 3x."""
    from convbert.flops import embedding_terms, layer_terms, rtd_head_terms

    def matmuls(terms):
        return sum(t.flops for t in terms if t.matmul)

    return float(cfg.num_hidden_layers * matmuls(layer_terms(cfg, seq)) + matmuls(embedding_terms(cfg, seq))
                 + (matmuls(rtd_head_terms(cfg)) if head else 0))


# ------------------------------------------------------------------------------------------------
# Candidate formulations of the two convolutions (exact same math; see the module docstring)


def _pad_time(x, pad):
    import jax.numpy as jnp
    return jnp.pad(x, [(0, 0), (pad, pad)] + [(0, 0)] * (x.ndim - 2))


def conv_slices(x, w, k):
    """out[b, t] = sum_j w[..., j] * x[b, t + j - (k-1)/2] by k shifted slices (w broadcastable to [B,T,...,k])."""
    t = x.shape[1]
    p = _pad_time(x, (k - 1) // 2)
    out = p[:, 0:t] * w[..., 0]
    for j in range(1, k):
        out = out + p[:, j:j + t] * w[..., j]
    return out


def slices_with_vjp(bwd):
    """`conv_slices(x, w, k)` (k static) with the backward `bwd(k, (x, w), g) -> (dx, dw)` of a candidate."""
    import jax

    f = jax.custom_vjp(conv_slices, nondiff_argnums=(2,))
    f.defvjp(lambda x, w, k: (conv_slices(x, w, k), (x, w)), bwd)
    return f


def _reduce_to(v, shape):
    """Sums `v` over the axes broadcasting added or expanded to get from `shape` to v.shape."""
    import jax.numpy as jnp
    lead = v.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and v.shape[lead + i] != 1)
    return (jnp.sum(v, axis=axes, keepdims=True) if axes else v).reshape(shape)


@functools.lru_cache(maxsize=None)
def _conv_vjp():
    import jax

    def bwd(k, res, g):
        x, w = res
        pad, t = (k - 1) // 2, x.shape[1]
        gp = _pad_time(g, pad)
        per_time = w.ndim == x.ndim + 1 and w.shape[1] != 1
        if per_time:  # dx[s] = sum_j g[s + pad - j] * w[s + pad - j, j]
            wp = _pad_time(w, pad)
            dx = sum(gp[:, 2 * pad - j:2 * pad - j + t] * wp[:, 2 * pad - j:2 * pad - j + t, ..., j] for j in range(k))
        else:
            dx = sum(gp[:, 2 * pad - j:2 * pad - j + t] * w[..., j] for j in range(k))
        xp = _pad_time(x, pad)
        dw = jax.numpy.stack([_reduce_to(g * xp[:, j:j + t], w.shape[:-1]) for j in range(k)], axis=-1)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    return slices_with_vjp(bwd)


def conv_vjp(x, w, k):
    return _conv_vjp()(x, w, k)


def band_diagonals(m, k):
    """[..., T, T] -> [..., T, k]: out[..., t, j] = m[..., t, t + j - (k-1)/2] (0 off the matrix); inverse skew of
    `band_matrix`, by pad/reshape/slice."""
    import jax.numpy as jnp
    *lead, t, _ = m.shape
    pad = (k - 1) // 2
    width = t + 2 * pad + 1
    mp = jnp.pad(m, [(0, 0)] * len(lead) + [(0, 0), (pad, pad + 1)])  # element (t, t + j) at t * (width + 1) + j
    flat = jnp.pad(mp.reshape(*lead, t * width), [(0, 0)] * len(lead) + [(0, t)])
    return flat.reshape(*lead, t, width + 1)[..., :k]


@functools.lru_cache(maxsize=None)
def _key_vjp_band():
    import jax.numpy as jnp

    def bwd(k, res, g):
        x, w = res  # x [B, T, H], w [H, k] (static per-channel taps)
        pad, t = (k - 1) // 2, x.shape[1]
        gp = _pad_time(g, pad)
        dx = sum(gp[:, 2 * pad - j:2 * pad - j + t] * w[..., j] for j in range(k))
        # dw[h, j] = sum_{b,t} g[b,t,h] x[b,t+j-pad,h] = sum_t of the diagonals of the per-channel [T, T] gradient of
        # the band matrix: one batched matmul instead of k column reductions over B*T rows
        dband = jnp.einsum("bth,bsh->hts", g, x)
        dw = jnp.sum(band_diagonals(dband, k), axis=-2)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    return slices_with_vjp(bwd)


def key_vjp_band(x, w, k):
    return _key_vjp_band()(x, w, k)


@functools.lru_cache(maxsize=None)
def _dyn_vjp_band(dx_by_matmul: bool):
    import jax.numpy as jnp

    def bwd(k, res, g):
        x, w = res  # x [B, T, Nr, d], w [B, T, Nr, 1, k]
        pad, t = (k - 1) // 2, x.shape[1]
        if dx_by_matmul:
            band = band_matrix(jnp.transpose(w[..., 0, :], (0, 2, 1, 3)))  # [B, Nr, T, T]
            dx = jnp.einsum("bhts,bthd->bshd", band, g)
        else:  # dx[s] = sum_j g[s + pad - j] * w[s + pad - j, j]
            gp, wp = _pad_time(g, pad), _pad_time(w, pad)
            dx = sum(gp[:, 2 * pad - j:2 * pad - j + t] * wp[:, 2 * pad - j:2 * pad - j + t, ..., j] for j in range(k))
        dband = jnp.einsum("bthd,bshd->bhts", g, x)  # [B, Nr, T, T]
        dw = jnp.transpose(band_diagonals(dband, k), (0, 2, 1, 3))[..., None, :]
        return dx.astype(x.dtype), dw.astype(w.dtype)

    return slices_with_vjp(bwd)


def dyn_vjp_band(x, w, k):
    return _dyn_vjp_band(False)(x, w, k)


def dyn_vjp_band2(x, w, k):
    return _dyn_vjp_band(True)(x, w, k)


def conv_none(x, w, k):
    """Not a candidate: the identity, to measure what a convolution costs in the step."""
    return x


def band_matrix(w):
    """[..., T, k] kernels -> [..., T, T] band with band[..., t, s] = w[..., t, s - t + (k-1)/2] (0 off the band).

    A skew by pad/reshape/slice (no gather): rows padded to length L + 1 (L = T + k - 1) and re-read with row length L
    shift row t right by t.
    """
    import jax.numpy as jnp
    *lead, t, k = w.shape
    length = t + k - 1
    wp = jnp.pad(w, [(0, 0)] * len(lead) + [(0, 0), (0, length + 1 - k)])
    full = wp.reshape(*lead, t * (length + 1))[..., :t * length].reshape(*lead, t, length)
    return full[..., (k - 1) // 2:(k - 1) // 2 + t]


def dyn_banded(x, w, k):
    """x [B,T,Nr,d], w [B,T,Nr,1,k] -> [B,T,Nr,d] via a [B,Nr,T,T] banded matmul."""
    import jax.numpy as jnp
    band = band_matrix(jnp.transpose(w[..., 0, :], (0, 2, 1, 3)))
    return jnp.einsum("bhts,bshd->bthd", band, x)


def dyn_stack(x, w, k):
    import jax.numpy as jnp
    t = x.shape[1]
    p = _pad_time(x, (k - 1) // 2)
    win = jnp.stack([p[:, j:j + t] for j in range(k)], axis=-1)  # [B,T,Nr,d,k]
    return jnp.einsum("btndk,btnk->btnd", win, w[..., 0, :])


def dyn_patches(x, w, k):
    import jax.numpy as jnp
    from jax import lax
    b, t, n, d = x.shape
    pad = (k - 1) // 2
    win = lax.conv_general_dilated_patches(x.reshape(b, t, n * d), (k,), (1,), [(pad, pad)],
                                           dimension_numbers=("NWC", "WIO", "NWC"))  # [B,T,C*k], channel-major
    return jnp.einsum("btndk,btnk->btnd", win.reshape(b, t, n, d, k), w[..., 0, :])


def key_conv(x, w, k):
    """x [B,T,H], w [H,k]: depthwise conv via lax.conv_general_dilated(feature_group_count=H)."""
    from jax import lax
    pad = (k - 1) // 2
    return lax.conv_general_dilated(x, w.T[:, None, :], (1,), [(pad, pad)],
                                    dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=x.shape[-1])


def key_banded(x, w, k):
    """x [B,T,H], w [H,k]: an [H,T,T] band per channel, then a batched matmul over channels."""
    import jax.numpy as jnp
    band = band_matrix(jnp.broadcast_to(w[:, None, :], (w.shape[0], x.shape[1], k)))
    return jnp.einsum("hts,bsh->bth", band, x)


KEY_IMPLS = {"slices": conv_slices, "vjp": conv_vjp, "vjp_band": key_vjp_band, "conv": key_conv,
             "banded": key_banded, "none": conv_none}
DYN_IMPLS = {"slices": conv_slices, "vjp": conv_vjp, "vjp_band": dyn_vjp_band, "vjp_band2": dyn_vjp_band2,
             "stack": dyn_stack, "patches": dyn_patches, "banded": dyn_banded, "none": conv_none}


def _gelu_jax(x):
    """Plain jax.nn.gelu(approximate=False) (erfc form), under autodiff too."""
    import jax
    return jax.nn.gelu(x, approximate=False)


def _gelu_erf(x):
    """Plain x Phi(x) with the erf-form CDF, under autodiff too (the form of the library's training path)."""
    from convbert import modeling
    return x * modeling._normal_cdf(x)


def _whatif_threefry_unrolled(on: bool):
    """jax lowers threefry2x32 on CPU with rolled loops (a while loop over the whole array, one pass per round
    group); register the unrolled lowering jax uses on other platforms instead."""
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf
    rule = tf._threefry2x32_lowering_rule if on else tf._threefry2x32_cpu_lowering_rule
    mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")


def _bernoulli_keep_mask(rbg: bool):
    """A `modeling.dropout_keep_mask` drawn by `jax.random.bernoulli`: from the threefry key (the library's form
    before the hash mask) or from an `unsafe_rbg` key derived from it (XLA's RngBitGenerator)."""
    def keep_mask(rng, shape, keep_prob):
        import jax
        import jax.numpy as jnp
        if rbg:
            rng = jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="unsafe_rbg")
        return jax.random.bernoulli(rng, keep_prob, shape)
    return keep_mask


def _patch_whatif(owner: str, attribute: str, replacement):
    """A what-if setting `convbert.modeling.<owner>.<attribute>` (owner '' = the module) to `replacement`."""
    def whatif(on: bool):
        from convbert import modeling
        target = getattr(modeling, owner) if owner else modeling
        original = _ORIGINAL.setdefault(f"{owner}.{attribute}", getattr(target, attribute))
        setattr(target, attribute, replacement if on else original)
    return whatif


# What-if patches (`+NAME` in an --impl spec): changes outside the convolutions, to quantify recommendations.
WHATIFS = {"gelu_jax": _patch_whatif("", "gelu", _gelu_jax), "gelu_erf": _patch_whatif("", "gelu", _gelu_erf),
           "threefry_unrolled": _whatif_threefry_unrolled,
           "no_dropout": _patch_whatif("Dropout", "__call__", lambda self, x, rng: x),  # bound for any cheaper one
           "threefry_dropout": _patch_whatif("", "dropout_keep_mask", _bernoulli_keep_mask(rbg=False)),
           "rbg_dropout": _patch_whatif("", "dropout_keep_mask", _bernoulli_keep_mask(rbg=True))}


def parse_impl(spec: str) -> tuple[dict, list]:
    """'current' -> ({}, []); 'NAME' -> both convs; 'key=A,dyn=B' -> per conv (an omitted one stays as in
    convbert.modeling); ',+WHATIF' parts add what-if patches (see WHATIFS)."""
    chosen, whatifs = {}, []
    for part in spec.split(","):
        if part == "current":
            continue
        if part.startswith("+"):
            if part[1:] not in WHATIFS:
                raise ValueError(f"unknown what-if {part!r}; choose from {sorted(WHATIFS)}")
            whatifs.append(part[1:])
        elif "=" not in part:
            if part not in KEY_IMPLS and part not in DYN_IMPLS:
                raise ValueError(f"unknown --impl {part!r}")
            chosen.update({w: part for w, t in (("key", KEY_IMPLS), ("dyn", DYN_IMPLS)) if part in t})
        else:
            which, name = part.split("=")
            table = {"key": KEY_IMPLS, "dyn": DYN_IMPLS}[which]
            if name != "current" and name not in table:
                raise ValueError(f"unknown {which} implementation {name!r}; choose from {sorted(table)}")
            if name != "current":
                chosen[which] = name
    return chosen, whatifs


_ORIGINAL = {}


def install_impl(spec: str) -> None:
    """Patches convbert.modeling (this process only) as `spec` says; 'current' restores the library as it is.
    Takes effect for functions traced afterwards."""
    from convbert import modeling
    current = _ORIGINAL.setdefault("sws", modeling.shifted_window_sum)
    modeling.shifted_window_sum = current
    chosen, whatifs = parse_impl(spec)
    for name in _ORIGINAL.get("active_whatifs", ()):  # all off first: some what-ifs patch the same attribute
        WHATIFS[name](False)
    for name in whatifs:
        WHATIFS[name](True)
    _ORIGINAL["active_whatifs"] = tuple(whatifs)
    if not chosen:
        return

    def patched(x, weights, kernel_size):
        dynamic = weights.ndim == x.ndim + 1 and weights.shape[1] != 1  # per-token kernels -> dynamic conv
        if dynamic and "dyn" in chosen:
            return DYN_IMPLS[chosen["dyn"]](x, weights, kernel_size)
        if not dynamic and "key" in chosen:
            return KEY_IMPLS[chosen["key"]](x, weights, kernel_size)
        return current(x, weights, kernel_size)

    modeling.shifted_window_sum = patched


# ------------------------------------------------------------------------------------------------
# Workers (one fresh process per measurement)


def check_impls(tol: float = 1e-5) -> bool:
    """Every candidate and the library's shifted_window_sum against `conv_slices` (values, dx, dw) on random
    float32 inputs, for T below, at and above the kernel size and 128. Returns whether all agree within `tol`
    (absolute for values, relative to the largest reference entry for gradients)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from convbert import modeling

    rng = np.random.default_rng(0)
    ok = True
    for t in (4, 9, 37, 128, 300):
        b, nr, d, h, k = 2, 2, 8, 24, 9
        cases = {"key": (KEY_IMPLS, (b, t, h), (h, k)), "dyn": (DYN_IMPLS, (b, t, nr, d), (b, t, nr, 1, k))}
        for kind, (table, xs, ws) in cases.items():
            x, g = (jnp.asarray(rng.standard_normal(xs), jnp.float32) for _ in range(2))
            w = jax.nn.softmax(jnp.asarray(rng.standard_normal(ws), jnp.float32), -1)
            ref, vjp = jax.vjp(lambda a, c: conv_slices(a, c, k), x, w)
            ref_grads = vjp(g)
            for name, fn in {**table, "library": modeling.shifted_window_sum}.items():
                if name == "none":
                    continue
                out, vjp = jax.vjp(lambda a, c, fn=fn: fn(a, c, k), x, w)
                errs = [float(jnp.max(jnp.abs(out - ref)))] + [
                    float(jnp.max(jnp.abs(a - r)) / jnp.max(jnp.abs(r))) for a, r in zip(vjp(g), ref_grads)]
                bad = max(errs) > tol
                ok &= not bad
                print(f"T={t:3d} {kind} {name:9s} out {errs[0]:.1e} dx {errs[1]:.1e} dw {errs[2]:.1e}"
                      + ("  MISMATCH" if bad else ""))
    return ok


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


def _inputs(cfg, batch, seq, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, cfg.vocab_size, (batch, seq)).astype(np.int32)
    mask = np.ones((batch, seq), np.int32)
    labels = rng.integers(0, 2, (batch, seq)).astype(np.int32)
    return ids, mask, labels


def build_jax_step(job: dict, impl: str, scopes: bool = False):
    """A closure running one step of `job` with the conv implementation `impl` (compiled ahead of time; the
    compiled executable is its `.compiled`). scopes: name-scope every module (for --profile)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from convbert import modeling
    from convbert.config import size_config

    install_impl(impl)
    if scopes:
        _install_named_scopes()
    try:
        cfg = size_config(job["size"])
        model = modeling.ConvBertForPreTraining(cfg, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        del model
        ids, mask, labels = (jnp.asarray(a) for a in _inputs(cfg, job["batch"], job["seq"]))
        if job["mode"] == "fwd":
            def forward(params, ids, mask):
                return nnx.merge(graphdef, params, rest)(ids, attention_mask=mask).logits

            args = (params, ids, mask)
            step = jax.jit(forward).lower(*args).compile()
            run = lambda: step(*args)  # noqa: E731
            run.compiled = step
            return run

        def loss_fn(params, ids, mask, labels, rng):
            out = nnx.merge(graphdef, params, rest)(ids, attention_mask=mask, labels=labels, deterministic=False,
                                                   dropout_rng=rng)
            return out.loss

        key = jax.random.key(0)
        args = (params, ids, mask, labels, key)
        step = jax.jit(jax.value_and_grad(loss_fn)).lower(*args).compile()
        counter = iter(range(1 << 30))
        run = lambda: step(params, ids, mask, labels, jax.random.fold_in(key, next(counter)))  # noqa: E731
        run.compiled = step
        return run
    finally:
        install_impl("current")


def worker_jax(job: dict) -> dict:
    import jax

    base_rss = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    step = build_jax_step(job, job["impl"])
    compile_s = time.perf_counter() - t0
    times, first = _warm_and_time(lambda: jax.block_until_ready(step()), job)
    return dict(times, first_step_s=first, compile_s=compile_s, base_rss_mb=base_rss)


def worker_interleave(job: dict) -> dict:
    """All of job['impls'] compiled in this one process, then timed round-robin (A B C A B C ...), so that the
    machine's load changes hit every candidate alike. Peak memory is not per candidate here."""
    import jax

    runs = {impl: build_jax_step(job, impl) for impl in job["impls"]}
    for _ in range(job["warmup"]):
        for run in runs.values():
            jax.block_until_ready(run())
    wall = {impl: [] for impl in runs}
    cpu = {impl: [] for impl in runs}
    for _ in range(job["steps"]):
        for impl, run in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            jax.block_until_ready(run())
            wall[impl].append(time.perf_counter() - t0)
            cpu[impl].append(time.process_time() - c0)
    return dict(interleaved={impl: dict(step_times_s=wall[impl], cpu_times_s=cpu[impl]) for impl in runs})


def build_torch_step(job: dict):
    """A closure running one step of transformers' ConvBertModel + the discriminator head (see module docstring)."""
    import torch
    import transformers

    from convbert.config import size_config

    torch.set_num_threads(job["threads"])
    cfg = size_config(job["size"])
    assert cfg.hf_compatible, cfg.hf_incompatibilities
    torch.manual_seed(0)
    hf_cfg = transformers.ConvBertConfig(**cfg.to_hf_dict())
    body = transformers.ConvBertModel(hf_cfg)
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
    else:
        body.train(), head.train()
        weights = mask.float()

        def run():
            for p in params:
                p.grad = None
            logits = forward()
            per_token = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
            loss = (per_token * weights).sum() / weights.sum().clamp(min=1.0)
            loss.backward()

    return run


def worker_torch(job: dict) -> dict:
    base_rss = _rss_mb("VmRSS")
    run = build_torch_step(job)
    times, first = _warm_and_time(run, job)
    return dict(times, first_step_s=first, base_rss_mb=base_rss)


def _warm_and_time(run, job) -> tuple[dict, float]:
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
    return dict(step_times_s=times, cpu_times_s=cpu, step_peak_rss_mb=_rss_mb("VmHWM") if reset else None,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0), first


def _install_named_scopes() -> None:
    """Wraps every module's __call__ of convbert.modeling (and the two convolutions and the activation) in a
    jax.named_scope, so that each XLA op's metadata names the module it comes from."""
    import jax
    from flax import nnx

    from convbert import modeling

    def scoped(fn, name):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with jax.named_scope(name):
                return fn(*args, **kwargs)
        return call

    for obj in list(vars(modeling).values()):
        if (isinstance(obj, type) and issubclass(obj, nnx.Module) and obj.__module__ == modeling.__name__
                and "__call__" in vars(obj) and not getattr(obj.__call__, "_scoped", False)):
            obj.__call__ = scoped(obj.__call__, obj.__name__)
            obj.__call__._scoped = True
    sws = modeling.shifted_window_sum

    def window_sum(x, weights, kernel_size):
        dynamic = weights.ndim == x.ndim + 1 and weights.shape[1] != 1
        return scoped(sws, "DynamicConv" if dynamic else "DepthwiseKeyConv")(x, weights, kernel_size)

    modeling.shifted_window_sum = window_sum
    activation = modeling.activation
    modeling.activation = lambda name: scoped(activation(name), f"Activation_{name}")


def worker_profile(job: dict) -> dict:
    """Thunk times of 2 profiled steps (jax.profiler, XLA CPU traceme), attributed to the module scope and to
    forward / backward, matmul (YNNPACK / dot thunks) or not, through the compiled HLO's op_name metadata."""
    import collections
    import glob
    import re
    import tempfile

    import jax
    from jax.profiler import ProfileData

    step = build_jax_step(job, job["impl"], scopes=True)
    hlo = step.compiled.as_text()
    for _ in range(job["warmup"]):
        jax.block_until_ready(step())
    n = 2
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            for _ in range(n):
                jax.block_until_ready(step())
        wall = (time.perf_counter() - t0) / n
        data = ProfileData.from_file(sorted(glob.glob(tmp + "/**/*.xplane.pb", recursive=True))[-1])
        thunks = collections.Counter()
        for plane in data.planes:
            for line in plane.lines:
                if "XLAEigen" not in line.name and "PjRtCpuClient" not in line.name:
                    continue
                for ev in line.events:
                    if not ev.name.startswith("ThunkExecutor") and "Await" not in ev.name:
                        thunks[ev.name] += ev.duration_ns / n / 1e6
    op_names = dict(re.findall(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo))
    rows = collections.Counter()
    for name, ms in thunks.items():
        op = op_names.get(name, "")
        phase = "bwd" if "transpose(" in op else "fwd"
        scopes = [p for p in re.sub(r"(jvp|transpose|jit)\(", "", op).replace(")", "").split("/") if p]
        modules = [p for p in scopes if p[:1].isupper()]
        if "_bernoulli" in op or "_uniform" in op:
            where = "Dropout (random bits)"
        else:
            where = modules[-1] if modules else (scopes[-1] if scopes else name)
        kind = "matmul" if name.startswith(("ynn_fusion", "dot", "custom-call")) else "other"
        rows[(where, phase, kind)] += ms
    total = sum(rows.values())
    fusions = collections.Counter()  # by XLA thunk kind: ynn_fusion (matmuls), copy/transpose fusions, loops...
    for name, ms in thunks.items():
        fusions[re.sub(r"[.\d]+$", "", name)] += ms
    return dict(profile_wall_ms=wall * 1e3, profile_thunk_ms=total,
                profile_thunk_kinds={k: ms / total for k, ms in fusions.most_common()},
                profile_rows=[dict(where=w, phase=p, kind=k, ms=ms, share=ms / total)
                              for (w, p, k), ms in rows.most_common()])


def run_worker(job: dict) -> None:
    worker = {"jax": worker_jax, "torch": worker_torch, "interleave": worker_interleave,
              "profile": worker_profile}[job["framework"]]
    emit_result({**job, **worker(job)})


# ------------------------------------------------------------------------------------------------
# Driver


def spawn(job: dict, xla_flags: str | None, timeout: float) -> dict:
    if job["framework"] == "profile":
        xla_flags = ((xla_flags or "") + " --xla_cpu_enable_xprof_traceme=true").strip()
    env = {}
    if job["framework"] != "torch" and xla_flags:
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    return run_worker_process("benchmarks.bench_model", job, timeout, env)


def summarise(res: dict, peak_gflops: float) -> dict:
    from convbert.config import size_config
    cfg = size_config(res["size"])
    tokens = res["batch"] * res["seq"]
    times = res["step_times_s"]
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    fpt = flops_per_token(cfg, res["seq"]) * (3 if res["mode"] == "train" else 1)
    tps = tokens / med
    cpu = statistics.median(res["cpu_times_s"]) if res.get("cpu_times_s") else float("nan")
    return dict(median_step_s=med, q1_step_s=q[0], q3_step_s=q[2], median_cpu_s=cpu, tokens_per_s=tps,
                flops_per_token=fpt, mfu=tps * fpt / (peak_gflops * 1e9))


def fmt_row(r: dict) -> str:
    step_peak = f"{r['step_peak_rss_mb'] / 1024:.2f}" if r.get("step_peak_rss_mb") else "n/a"
    return (f"| {r['size']} | {r['mode']} | {r['framework']} | {r['impl'] if r['framework'] == 'jax' else '-'} | "
            f"{r['tokens_per_s']:,.0f} | {r['median_step_s'] * 1e3:,.1f} ({r['q1_step_s'] * 1e3:,.0f}-"
            f"{r['q3_step_s'] * 1e3:,.0f}) | {r['median_cpu_s'] * 1e3:,.0f} | {r['mfu'] * 100:.1f}% | {r['peak_rss_mb'] / 1024:.2f} | {step_peak} | "
            f"{r.get('ratio_vs_torch', float('nan')):.2f} | {r['load_before']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,base", help="comma-separated: small, medium_small, base")
    p.add_argument("--modes", default="fwd,train", help="comma-separated: fwd, train")
    p.add_argument("--frameworks", default="jax,torch",
                   help="comma-separated: jax, torch")
    add_common_args(p, warmup=2)
    p.add_argument("--impl", nargs="+", default=["current"],
                   help="dynamic/key conv implementation specs to compare: current | NAME | key=NAME,dyn=NAME")
    p.add_argument("--rounds", type=int, default=1, help="repeat the whole set (steps pooled over rounds)")
    p.add_argument("--interleave", action="store_true",
                   help="compare the --impl specs for jax in one process per (size, mode), timed round-robin "
                        "(robust to load changes on a shared machine); no torch, no per-candidate memory")
    p.add_argument("--check", action="store_true",
                   help="check every candidate (and the library) against the shifted slices, values and gradients")
    p.add_argument("--profile", action="store_true",
                   help="jax only: profile 2 steps per (size, mode, first --impl) and print where the time goes "
                        "(module scope x forward/backward x matmul/other)")
    p.add_argument("--xla_flags", default=None, help="extra XLA_FLAGS for the jax workers")
    args = p.parse_args(argv)

    if args.worker:
        run_worker(json.loads(args.worker))
        return 0
    if args.check:
        return 0 if check_impls() else 1

    for spec in args.impl:
        parse_impl(spec)  # fail early on a typo
    sizes, modes, frameworks = (s.split(",") if s else [] for s in (args.sizes, args.modes, args.frameworks))
    if args.interleave:
        return main_interleave(args, sizes, modes)
    if args.profile:
        return main_profile(args, sizes, modes)
    jobs = []
    for size in sizes:
        for mode in modes:
            for fw in frameworks:
                for impl in (args.impl if fw == "jax" else ["-"]):
                    jobs.append(dict(framework=fw, size=size, mode=mode, impl=impl, batch=args.batch, seq=args.seq,
                                     steps=args.steps, warmup=args.warmup, threads=args.threads))
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"load {loadavg()}, XLA_FLAGS extra: {args.xla_flags!r}", flush=True)
    merged: dict[tuple, dict] = {}
    for rnd in range(args.rounds):
        for job in jobs:
            res = spawn(job, args.xla_flags, args.timeout)
            key = (job["framework"], job["size"], job["mode"], job["impl"])
            res["round_medians_s"] = [statistics.median(res["step_times_s"])]
            if key in merged:
                merged[key]["round_medians_s"] += res["round_medians_s"]
                merged[key]["step_times_s"] += res["step_times_s"]
                merged[key]["cpu_times_s"] += res["cpu_times_s"]
                for f in ("peak_rss_mb", "step_peak_rss_mb"):
                    if res.get(f) and merged[key].get(f):
                        merged[key][f] = max(merged[key][f], res[f])
            else:
                merged[key] = res
            s = summarise(res, args.peak_gflops)
            print(f"round {rnd} {key}: {s['tokens_per_s']:,.0f} tok/s, median {s['median_step_s'] * 1e3:.1f} ms, "
                  f"MFU {s['mfu'] * 100:.1f}%, peak RSS {res['peak_rss_mb'] / 1024:.2f} GB, load "
                  f"{res['load_before']} -> {res['load_after']}", flush=True)

    results = []
    for key, res in merged.items():
        res.update(summarise(res, args.peak_gflops))
        results.append(res)
    for r in results:
        ref = merged.get(("torch", r["size"], r["mode"], "-"))
        r["ratio_vs_torch"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        if ref and args.rounds > 1:  # same-round ratios: each round's jax and torch ran minutes apart
            r["round_ratios_vs_torch"] = [t / j for j, t in zip(r["round_medians_s"], ref["round_medians_s"])]
            if r["framework"] == "jax":
                print(f"{r['size']} {r['mode']} {r['impl']}: jax / torch per round "
                      + ", ".join(f"{x:.2f}" for x in r["round_ratios_vs_torch"]))
    print()
    print("| size | mode | framework | impl | tokens/s | step ms median (IQR) | CPU ms/step | MFU | peak RSS GB | step peak RSS GB "
          "| vs torch | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(fmt_row(r))

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(argv=sys.argv, machine=platform.node(), cpus=os.cpu_count(), xla_flags=args.xla_flags,
                           peak_gflops=args.peak_gflops, results=results), f, indent=1)
    return 0


def main_profile(args, sizes, modes) -> int:
    out = []
    for size in sizes:
        for mode in modes:
            job = dict(framework="profile", size=size, mode=mode, impl=args.impl[0], batch=args.batch, seq=args.seq,
                       steps=0, warmup=args.warmup, threads=args.threads)
            res = spawn(job, args.xla_flags, args.timeout)
            out.append(res)
            print(f"\n{size} {mode} ({args.impl[0]}): {res['profile_wall_ms']:,.0f} ms per profiled step, "
                  f"{res['profile_thunk_ms']:,.0f} ms of XLA thunks; load {res['load_before']}")
            print("| module scope | pass | kind | ms/step | share |")
            print("|---|---|---|---|---|")
            for r in res["profile_rows"]:
                if r["share"] >= 0.004:
                    print(f"| {r['where']} | {r['phase']} | {r['kind']} | {r['ms']:,.1f} | {r['share'] * 100:.1f}% |")
            kinds = {}
            for r in res["profile_rows"]:
                kinds[r["kind"]] = kinds.get(r["kind"], 0.0) + r["share"]
            print("totals: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in sorted(kinds.items())))
            print("by XLA thunk kind: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in
                                                     list(res["profile_thunk_kinds"].items())[:12]))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(argv=sys.argv, profile=True, results=out), f, indent=1)
    return 0


def main_interleave(args, sizes, modes) -> int:
    from convbert.config import size_config
    print(f"# interleaved comparison, {os.cpu_count()} cpus, load {loadavg()}, XLA_FLAGS extra: {args.xla_flags!r}",
          flush=True)
    rows = []
    for size in sizes:
        for mode in modes:
            job = dict(framework="interleave", size=size, mode=mode, impls=list(args.impl), impl="-",
                       batch=args.batch, seq=args.seq, steps=args.steps, warmup=args.warmup, threads=args.threads)
            res = spawn(job, args.xla_flags, args.timeout)
            tokens = args.batch * args.seq
            fpt = flops_per_token(size_config(size), args.seq) * (3 if mode == "train" else 1)
            first = None
            for impl, r in res["interleaved"].items():
                wall, cpu = statistics.median(r["step_times_s"]), statistics.median(r["cpu_times_s"])
                first = first or (wall, cpu)
                rows.append(dict(size=size, mode=mode, impl=impl, median_step_s=wall, median_cpu_s=cpu,
                                 tokens_per_s=tokens / wall, mfu=tokens / wall * fpt / (args.peak_gflops * 1e9),
                                 wall_vs_first=first[0] / wall, cpu_vs_first=first[1] / cpu,
                                 step_times_s=r["step_times_s"], cpu_times_s=r["cpu_times_s"],
                                 load_before=res["load_before"], load_after=res["load_after"]))
                print(f"{size} {mode} {impl}: {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms cpu, speed-up vs "
                      f"{args.impl[0]}: wall {first[0] / wall:.2f}x, cpu {first[1] / cpu:.2f}x", flush=True)
    print()
    print(f"| size | mode | impl | step ms (median) | CPU ms/step | tokens/s | MFU | speed-up vs {args.impl[0]} (wall / cpu)"
          " | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['mode']} | {r['impl']} | {r['median_step_s'] * 1e3:,.1f} | "
              f"{r['median_cpu_s'] * 1e3:,.0f} | {r['tokens_per_s']:,.0f} | {r['mfu'] * 100:.1f}% | "
              f"{r['wall_vs_first']:.2f}x / {r['cpu_vs_first']:.2f}x | {r['load_before']} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(dict(argv=sys.argv, interleaved=True, xla_flags=args.xla_flags, results=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
