"""Numerical kernels of the model: gelu and the activation table, the dropout mask, the dense layers' matmul, and
the centred convolution over time that both convolutions of mixed attention use (arXiv 2008.02496 section 3;
yitu-opensource/ConvBert `model/modeling.py` `attention_layer`).

Every kernel has a plain `reference` (jax autodiff of the textbook formula; `jax.random.bernoulli` for the dropout mask)
and a `cpu_tuned` form, written for XLA CPU (`benchmarks/bench_model.py`): custom gradients for gelu and the
convolution, a counter-hash dropout mask, a matmul over flattened leading dims. Both forms compute the same function
(the dropout masks the same distribution, from another random stream); `tests/test_kernels.py` checks values and
gradients against each other. `KERNELS` lists them and `kernel(name, impl)` is the one place that picks: `impl` ('auto',
a platform or an implementation, `CHOICES`) is mapped per kernel by `resolve_impl`; 'auto' takes the choice of the
platform the code is compiled for (`AUTO_IMPL`, `target_platform`).

Shapes: B batch, T length, C channels (any trailing dims), k kernel size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

Array = jax.Array
IMPLS = ("reference", "cpu_tuned")
# The implementation each platform runs, per kernel, chosen by measurement. CPU: the tuned forms, faster there.
# TPU, by the TPU compiler's cost model (bytes accessed and temporaries of forward + backward of
# ConvBertForPreTraining, `python -m benchmarks.kernel_bytes`): the tuned gelu and dropout mask fuse and save bytes
# there too, the tuned convolution's banded weight gradient moves more than autodiff of the slices; `matmul` plain
# (not compiled in the tuned form for TPU). GPU: the plain forms until a GPU measurement decides (none has been
# made). The measurements are to be re-run with committed results (BENCHMARKS.md, "What will be re-measured").
# A platform not listed gets AUTO_DEFAULT for every kernel.
AUTO_IMPL: dict[str, dict[str, str]] = {
    "cpu": dict(gelu="cpu_tuned", dropout_keep_mask="cpu_tuned", shifted_window_sum="cpu_tuned", matmul="cpu_tuned"),
    "tpu": dict(gelu="cpu_tuned", dropout_keep_mask="cpu_tuned", shifted_window_sum="reference", matmul="reference"),
    "gpu": dict(gelu="reference", dropout_keep_mask="reference", shifted_window_sum="reference", matmul="reference"),
}
AUTO_DEFAULT = "reference"
# The values of `ConvBertConfig.kernels`: 'auto' (the platform compiled for), a platform of `AUTO_IMPL` (its
# choice, on any platform), or one implementation for every kernel.
CHOICES = ("auto", *AUTO_IMPL, *IMPLS)


def target_platform() -> str:
    """The platform being compiled for: that of the mesh set with `jax.set_mesh` when there is one (so code traced
    on a CPU host for TPU devices, as ahead-of-time compilation does, gets the TPU's kernels), else jax's default
    backend."""
    device = jax.sharding.get_abstract_mesh().abstract_device
    return device.platform if device is not None else jax.default_backend()


Devices = Iterable[jax.Device] | jax.sharding.Mesh


def platform_of(devices: Devices) -> str:
    """The platform of `devices` (or of a mesh's devices), e.g. 'cpu' or 'tpu'; an error if they mix platforms."""
    if isinstance(devices, jax.sharding.Mesh):
        devices = devices.devices.flat
    platforms = {d.platform for d in devices}
    if len(platforms) != 1:
        raise ValueError(f"expected devices of one platform, got platforms {sorted(platforms)}")
    return platforms.pop()


def resolve_impl(impl: str, name: str, platform: str | None = None) -> str:
    """The implementation of kernel `name` that `impl` selects: 'reference' or 'cpu_tuned' as given; a platform
    ('cpu', 'tpu', 'gpu') its `AUTO_IMPL` entry; 'auto' that of `platform` (default: `target_platform()`)."""
    if impl in IMPLS:
        return impl
    if impl == "auto":
        impl = platform or target_platform()
    elif impl not in AUTO_IMPL:
        raise ValueError(f"kernel implementation must be one of {CHOICES}, got {impl!r}")
    return AUTO_IMPL.get(impl, {}).get(name, AUTO_DEFAULT)


def resolve_platform(impl: str, devices: Devices) -> str:
    """`impl` with 'auto' replaced by the platform of `devices` (`AUTO_DEFAULT` for a platform `AUTO_IMPL` does not
    list), so the choice no longer depends on where the code is traced."""
    if impl != "auto":
        return impl
    platform = platform_of(devices)
    return platform if platform in AUTO_IMPL else AUTO_DEFAULT


# ------------------------------------------------------------------------------------------------
# gelu


def gelu_reference(x: Array) -> Array:
    """Exact gelu x Phi(x) (`jax.nn.gelu(approximate=False)`), differentiated by jax."""
    return jax.nn.gelu(x, approximate=False)


def _normal_cdf(x: Array) -> Array:
    return 0.5 * (1.0 + lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


@jax.custom_vjp
def gelu_cpu_tuned(x: Array) -> Array:
    """Exact gelu x Phi(x). Undifferentiated (evaluation): jax.nn.gelu's erfc form. Under autodiff: the forward
    0.5 x (1 + erf(x / sqrt 2)) saving x and Phi(x), backward g (Phi(x) + x phi(x)): XLA CPU fuses the erf form
    into the neighbouring matmuls, which pays off under autodiff and not in an evaluation forward. No
    forward-mode (jvp)."""
    return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x: Array):
    cdf = _normal_cdf(x)
    return x * cdf, (x, cdf)


def _gelu_bwd(residuals, g: Array):
    x, cdf = residuals
    return (g * (cdf + x * jnp.asarray(0.3989422804014327, x.dtype) * jnp.exp(-0.5 * x * x)),)


gelu_cpu_tuned.defvjp(_gelu_fwd, _gelu_bwd)


def gelu(x: Array, impl: str = "auto") -> Array:
    """Exact (erf) gelu, the `hidden_act='gelu'` of the official code, in the implementation `impl` selects."""
    return kernel("gelu", impl)(x)


def _tanh_gelu(x: Array) -> Array:
    return jax.nn.gelu(x, approximate=True)


def activation(name: str, impl: str = "auto") -> Callable[[Array], Array]:
    """The activation `name` (a `ConvBertConfig.hidden_act` value)."""
    if name == "gelu":
        return kernel("gelu", impl)
    return {
        "gelu_new": _tanh_gelu,
        "gelu_pytorch_tanh": _tanh_gelu,
        "gelu_fast": _tanh_gelu,
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "tanh": jnp.tanh,
    }[name]


# ------------------------------------------------------------------------------------------------
# dropout


def _fmix32(h: Array) -> Array:
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def dropout_keep_mask_reference(rng: Array, shape: tuple[int, ...], keep_prob: float) -> Array:
    """Bernoulli(keep_prob) mask of `shape` from `jax.random.bernoulli`."""
    return jax.random.bernoulli(rng, keep_prob, shape)


def dropout_keep_mask_cpu_tuned(rng: Array, shape: tuple[int, ...], keep_prob: float) -> Array:
    """Bernoulli(keep_prob) mask of `shape`, a counter-based hash of each element's position and two 32-bit seeds
    drawn from `rng`: h = fmix32(fmix32(row ^ s0) + col * 0x9E3779B1 + s1) over row = index of the leading dims,
    col = index in the last one. Unlike `jax.random.bernoulli` (threefry, which XLA CPU runs as a loop over the
    whole array and then materialises for the backward pass) it is elementwise, so XLA fuses it into the consumer
    and recomputes it in the backward pass. Partitions like any elementwise op under sharding; same keep
    probability to 2^-32; a different stream from jax.random."""
    seeds = jax.random.bits(rng, (2,), jnp.uint32)
    rows = math.prod(shape[:-1])
    row = lax.broadcasted_iota(jnp.uint32, (rows, shape[-1]), 0)
    col = lax.broadcasted_iota(jnp.uint32, (rows, shape[-1]), 1)
    h = _fmix32(_fmix32(row ^ seeds[0]) + col * jnp.uint32(0x9E3779B1) + seeds[1])
    threshold = min(round(keep_prob * 2.0**32), 2**32 - 1)
    return (h < jnp.uint32(threshold)).reshape(shape)


def dropout_keep_mask(rng: Array, shape: tuple[int, ...], keep_prob: float, impl: str = "auto") -> Array:
    """Boolean Bernoulli(keep_prob) mask of `shape` drawn from `rng`, in the implementation `impl` selects."""
    return kernel("dropout_keep_mask", impl)(rng, shape, keep_prob)


class Dropout(nnx.Module):
    """Dropout fed an explicit key; the identity when `rng` is None (evaluation). `impl` picks the mask's kernel."""

    def __init__(self, rate: float, impl: str = "auto"):
        self.rate = rate
        self.impl = impl

    def __call__(self, x: Array, rng: Array | None) -> Array:
        if rng is None or self.rate == 0.0:
            return x
        keep = dropout_keep_mask(rng, x.shape, 1.0 - self.rate, self.impl)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


class KeyChain:
    """Hands out a fresh dropout key per call site: `next()` is None when dropout is off."""

    def __init__(self, rng: Array | None):
        self._rng = rng
        self._count = 0

    def next(self) -> Array | None:
        if self._rng is None:
            return None
        self._count += 1
        return jax.random.fold_in(self._rng, self._count)


# ------------------------------------------------------------------------------------------------
# matmul of the dense layers


def matmul_reference(x: Array, w: Array) -> Array:
    """x [..., I] @ w [I, O] -> [..., O], or grouped: x [..., G, I] and w [G, I, O] -> [..., G, O]; one
    dot_general with the leading dims of x as free dims."""
    return x @ w if w.ndim == 2 else jnp.einsum("...gi,gio->...go", x, w)


def matmul_cpu_tuned(x: Array, w: Array) -> Array:
    """`matmul_reference` with the leading dims of x flattened into one ([B, T, I] -> [B*T, I]) before the dot and
    restored after. XLA CPU runs the weight gradient of a dot with two free dims (a contraction over B and T) as a
    transpose and a slower dot; the flattened form is a plain matrix product in both passes (`benchmarks/bench_model.py`
    compares)."""
    lead = x.shape[: x.ndim - w.ndim + 1]
    y = matmul_reference(x.reshape(-1, *x.shape[len(lead) :]), w)
    return y.reshape(*lead, *y.shape[1:])


def matmul(x: Array, w: Array, impl: str = "auto") -> Array:
    """The dense layers' product (see `matmul_reference`), in the implementation `impl` selects."""
    return kernel("matmul", impl)(x, w)


# ------------------------------------------------------------------------------------------------
# centred convolution over time


def _pad_time(a: Array, lo: int, hi: int) -> Array:
    return jnp.pad(a, [(0, 0), (lo, hi)] + [(0, 0)] * (a.ndim - 2))


def shifted_window_sum_reference(x: Array, weights: Array, kernel_size: int) -> Array:
    """The k shifted slices of the TF original, differentiated by jax (see `shifted_window_sum`)."""
    k, t = kernel_size, x.shape[1]
    padded = _pad_time(x, (k - 1) // 2, (k - 1) // 2)
    out = padded[:, 0:t] * weights[..., 0]
    for j in range(1, k):
        out = out + padded[:, j : j + t] * weights[..., j]
    return out


def _banded_weight_grad(x: Array, g: Array, kernel_size: int, keep: list[bool]) -> Array:
    """dw[.., t, .., j] = sum over the axes where `keep` is False of g[b, t, c] x[b, t + j - pad, c], shaped
    [kept axes of B, T, ...C (1 elsewhere)..., k]. For each time block of bs <= 128 rows, band = g_block x_slab^T
    over the slab of bs + 2 pad rows around it (a batched matmul), then dw = band[t, t + j]."""
    k, nd, t = kernel_size, x.ndim, x.shape[1]
    pad = (k - 1) // 2
    nb = -(-t // 128)
    bs = -(-t // nb)
    width = bs + 2 * pad
    gb = _pad_time(g, 0, nb * bs - t).reshape(g.shape[0], nb, bs, *g.shape[2:])
    xp = _pad_time(x, pad, pad + nb * bs - t)
    slab = jnp.stack([xp[:, i * bs : i * bs + width] for i in range(nb)], axis=1)  # [B, nb, width, ...C]
    chans = "cdefgh"[: nd - 2]
    kept = ("b" if keep[0] else "") + "".join(c for c, kp in zip(chans, keep[2:], strict=True) if kp)
    band = jnp.einsum(f"bit{chans},bis{chans}->{kept}its", gb, slab, preferred_element_type=jnp.float32)
    lead = band.shape[:-2]
    flat = jnp.pad(band.reshape(*lead, bs * width), [(0, 0)] * len(lead) + [(0, bs)])
    diag = flat.reshape(*lead, bs, width + 1)[..., :k]  # [kept.., nb, bs, k]: band[t, t + j] at t (width+1) + j
    if keep[1]:
        diag = jnp.moveaxis(diag.reshape(*lead[:-1], nb * bs, k)[..., :t, :], -2, int(keep[0]))
    else:
        diag = jnp.sum(diag, axis=(-3, -2))
    return diag.reshape(tuple(n if kp else 1 for n, kp in zip(x.shape, keep, strict=True)) + (k,))


def shifted_window_sum_cpu_tuned(x: Array, weights: Array, kernel_size: int) -> Array:
    """`shifted_window_sum_reference`'s forward with a custom VJP. dx = k shifted slices of g * w (the transposed
    conv). dw, which autodiff computes as k reductions over every broadcast axis (for the key conv, column
    reductions over B*T rows: slow on XLA CPU), is read off the diagonals of the banded gradient g x^T, computed
    by batched matmuls over time blocks of <= 128 rows (about (128 + k) / k times the minimal FLOPs, on the matmul
    units). Weights that broadcast the output beyond x's shape (or more than 6 channel dims) take the reference.
    No forward-mode (jvp)."""
    k, nd, t = kernel_size, x.ndim, x.shape[1]
    pad = (k - 1) // 2
    w_aligned = (1,) * (nd + 1 - weights.ndim) + weights.shape  # weights' shape aligned with [B, T, ...C, k]
    if weights.ndim > nd + 1 or jnp.broadcast_shapes(x.shape, w_aligned[:-1]) != x.shape or nd - 2 > 6:
        return shifted_window_sum_reference(x, weights, k)

    @jax.custom_vjp
    def conv(x, w):
        return shifted_window_sum_reference(x, w, k)

    def conv_fwd(x, w):
        return shifted_window_sum_reference(x, w, k), (x, w)

    def conv_bwd(res, g):
        x, w = res
        wf = w.reshape(w_aligned)
        keep = [wf.shape[a] != 1 for a in range(nd)]  # axes along which w varies; dw sums over the others
        gp = _pad_time(g, pad, pad)  # dx[s] = sum_j g[s + pad - j] * w[s + pad - j, j]
        wp = _pad_time(wf, pad, pad) if keep[1] else None
        dx = 0
        for j in range(k):
            wj = wp[:, 2 * pad - j : 2 * pad - j + t, ..., j] if keep[1] else wf[..., j]
            dx = dx + gp[:, 2 * pad - j : 2 * pad - j + t] * wj
        dw = _banded_weight_grad(x, g, k, keep).reshape(w.shape)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv(x, weights)


def shifted_window_sum(x: Array, weights: Array, kernel_size: int, impl: str = "auto") -> Array:
    """Centred 1-D convolution over time with zero padding at both ends, in the implementation `impl` selects.

    x: [B, T, ...C]; weights broadcastable to [B, T, ...C, k]. out[b, t] = sum_j w[..., j] * x[b, t + j - (k-1)/2].
    Serves the depthwise key conv (weights [H, k]) and the dynamic conv (weights [B, T, Nr, 1, k]).
    """
    return kernel("shifted_window_sum", impl)(x, weights, kernel_size)


# ------------------------------------------------------------------------------------------------
# selection

KERNELS: dict[str, dict[str, Callable]] = {
    "gelu": {"reference": gelu_reference, "cpu_tuned": gelu_cpu_tuned},
    "dropout_keep_mask": {"reference": dropout_keep_mask_reference, "cpu_tuned": dropout_keep_mask_cpu_tuned},
    "shifted_window_sum": {"reference": shifted_window_sum_reference, "cpu_tuned": shifted_window_sum_cpu_tuned},
    "matmul": {"reference": matmul_reference, "cpu_tuned": matmul_cpu_tuned},
}


def kernel(name: str, impl: str = "auto") -> Callable:
    """The implementation of kernel `name` (a key of `KERNELS`) that `impl` selects (see `resolve_impl`)."""
    return KERNELS[name][resolve_impl(impl, name)]
