"""The numerical kernels: every custom gradient against jax autodiff of its reference (values and gradients, float32
and bfloat16), the convolution against a loop, both dropout masks' statistics and gradients, and the implementation
selection, which follows the devices compiled for."""

import importlib.util
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from configs import pretrain
from convbert import ConvBertConfig, kernels, sharding
from convbert.kernels import Dropout, dropout_keep_mask, shifted_window_sum
from convbert.pretraining import Pretrainer

# Largest error allowed, relative to the largest reference entry: a few units in the last place of float32, and
# 5 units of bfloat16's 8-bit mantissa (inputs, products and sums are rounded to bfloat16 on both paths).
REL_TOL = {jnp.float32: 1e-6, jnp.bfloat16: 5 * 2.0**-8}
SPECIAL = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def _f32(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.float32))


def _max_rel_err(a, ref) -> float:
    ref = _f32(ref)
    return float(np.abs(_f32(a) - ref).max() / max(np.abs(ref).max(), 1e-30))


# ------------------------------------------------------------------------------------------------
# shifted_window_sum

# (x shape, weight shape, k): the key conv's [H, k] and the dynamic conv's [B, T, Nr, 1, k] weights; T = 1, T < k,
# odd T, T a multiple of the 128-row block and not, several blocks; k = 1, 3, 5, 7, 9; and the other broadcasts
# the custom VJP handles (per-time weights shared over the batch, per-example weights constant over time).
# float32 for every case, bfloat16 for the key and the dynamic conv at T < k, odd T and two blocks.
F32, BF16 = jnp.float32, jnp.bfloat16
CONV_CASES = [
    ((1, 1, 8), (8, 3), 3, F32),
    ((2, 4, 24), (24, 9), 9, F32),
    ((2, 4, 24), (24, 9), 9, BF16),
    ((2, 11, 24), (24, 9), 9, F32),
    ((2, 128, 16), (16, 1), 1, F32),
    ((2, 131, 16), (16, 9), 9, F32),
    ((2, 131, 16), (16, 9), 9, BF16),
    ((1, 300, 8), (8, 5), 5, F32),
    ((2, 5, 2, 4), (2, 5, 2, 1, 9), 9, F32),
    ((2, 11, 3, 8), (2, 11, 3, 1, 9), 9, F32),
    ((2, 11, 3, 8), (2, 11, 3, 1, 9), 9, BF16),
    ((2, 131, 2, 8), (2, 131, 2, 1, 9), 9, F32),
    ((2, 131, 2, 8), (2, 131, 2, 1, 9), 9, BF16),
    ((2, 37, 2, 4), (37, 2, 1, 5), 5, F32),
    ((3, 20, 6), (3, 1, 6, 7), 7, F32),
    ((1, 9, 6), (2, 9, 6, 3), 3, F32),  # weights broadcast the output beyond x: the reference path
]


def _case_id(v) -> str:
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return f"k{v}" if isinstance(v, int) else jnp.dtype(v).name


@pytest.mark.parametrize("x_shape, w_shape, k, dtype", CONV_CASES, ids=_case_id)
def test_shifted_window_sum_custom_vjp_matches_autodiff_of_the_slices(x_shape, w_shape, k, dtype):
    rng = np.random.default_rng(sum(x_shape) * 31 + k)
    x = jnp.asarray(rng.standard_normal(x_shape), dtype)
    w = jax.nn.softmax(jnp.asarray(rng.standard_normal(w_shape), jnp.float32), -1).astype(dtype)
    out_shape = jnp.broadcast_shapes(x.shape, w.shape[:-1])
    g = jnp.asarray(rng.standard_normal(out_shape), dtype)

    @jax.jit
    def run_both(x, w, g):  # one compilation per case (eager dispatch would compile every op on its own)
        def run(impl, a, b, cotangent):
            out, vjp = jax.vjp(lambda a, b: shifted_window_sum(a, b, k, impl=impl), a, b)
            return (out, *vjp(cotangent))

        f32 = lambda v: v.astype(jnp.float32)
        return run("reference", f32(x), f32(w), f32(g)), run("reference", x, w, g), run("cpu_tuned", x, w, g)

    ref, reference, tuned = run_both(x, w, g)  # ref: float32 on the same (rounded) inputs
    np.testing.assert_array_equal(_f32(tuned[0]), _f32(reference[0]))  # one forward
    assert tuned[1].dtype == x.dtype and tuned[2].dtype == w.dtype and tuned[2].shape == w.shape
    for name, a, r in zip(("out", "dx", "dw"), tuned, ref, strict=True):
        assert _max_rel_err(a, r) < REL_TOL[dtype], (name, _max_rel_err(a, r))


@pytest.mark.parametrize("impl", kernels.IMPLS)
def test_shifted_window_sum_matches_loop(impl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 11, 3, 4))
    w = rng.standard_normal((2, 11, 3, 1, 5))  # per-token kernels, as the dynamic conv uses it
    ref = np.zeros_like(x)
    for i, j in itertools.product(range(11), range(5)):
        if 0 <= i + j - 2 < 11:
            ref[:, i] += w[:, i, :, :, j] * x[:, i + j - 2]
    out = shifted_window_sum(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 5, impl=impl)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_shifted_window_sum_custom_vjp_under_jit():
    """The tuned gradient inside jax.jit (as training runs it) equals autodiff of the reference."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 140, 12)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((12, 9)), jnp.float32)

    def grads(impl):
        return jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.sin(shifted_window_sum(a, b, 9, impl=impl))), argnums=(0, 1)))(
            x, w
        )

    for a, r in zip(grads("cpu_tuned"), grads("reference"), strict=True):
        assert _max_rel_err(a, r) < REL_TOL[jnp.float32]


# ------------------------------------------------------------------------------------------------
# gelu


def test_gelu_cpu_tuned_matches_autodiff_of_jax_gelu_float32():
    """Evaluation value, training value and gradient equal jax.nn.gelu's (exact form)."""
    x = jnp.linspace(-12.0, 12.0, 4001)
    np.testing.assert_allclose(kernels.gelu_cpu_tuned(x), kernels.gelu_reference(x), atol=1e-6)
    value, vjp = jax.vjp(kernels.gelu_cpu_tuned, x)
    np.testing.assert_allclose(value, kernels.gelu_reference(x), atol=1e-6)
    np.testing.assert_allclose(
        vjp(jnp.ones_like(x))[0], jax.grad(lambda v: kernels.gelu_reference(v).sum())(x), atol=1e-6
    )


def test_gelu_cpu_tuned_matches_autodiff_of_jax_gelu_bfloat16():
    """bfloat16 in and out, against the float32 reference on the same inputs: within bfloat16 rounding."""
    x = jnp.linspace(-12.0, 12.0, 4001).astype(jnp.bfloat16)
    x32 = x.astype(jnp.float32)
    value_ref = kernels.gelu_reference(x32)
    grad_ref = jax.grad(lambda v: kernels.gelu_reference(v).sum())(x32)
    value, vjp = jax.vjp(kernels.gelu_cpu_tuned, x)
    grad = vjp(jnp.ones_like(x))[0]
    assert value.dtype == grad.dtype == jnp.bfloat16
    for a, r in ((kernels.gelu_cpu_tuned(x), value_ref), (value, value_ref), (grad, grad_ref)):
        np.testing.assert_allclose(_f32(a), _f32(r), rtol=2.0**-7, atol=2.0**-6)


# ------------------------------------------------------------------------------------------------
# dropout


@pytest.mark.parametrize("impl", kernels.IMPLS)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_mask_statistics(rate, impl):
    """Both masks keep 1 - rate of the elements, evenly over rows and columns, independently of their neighbours
    and of the mask drawn from another key (bounds are 5 standard deviations)."""
    shape = (16, 64, 512)
    mask = np.asarray(dropout_keep_mask(jax.random.key(0), shape, 1.0 - rate, impl), np.float64)
    other = np.asarray(dropout_keep_mask(jax.random.key(1), shape, 1.0 - rate, impl), np.float64)
    var = rate * (1.0 - rate)
    assert abs(mask.mean() - (1 - rate)) < 5 * np.sqrt(var / mask.size)
    assert np.abs(mask.reshape(-1, 512).mean(0) - (1 - rate)).max() < 5 * np.sqrt(var / (16 * 64))
    assert np.abs(mask.reshape(-1, 512).mean(1) - (1 - rate)).max() < 5 * np.sqrt(var / 512)
    flat, sigma = mask.ravel(), 1 / np.sqrt(mask.size)
    for lag in (1, 2, 511, 512, 513, 64 * 512):
        assert abs(np.corrcoef(flat[:-lag], flat[lag:])[0, 1]) < 5 * sigma, lag
    assert abs(np.corrcoef(flat, other.ravel())[0, 1]) < 5 * sigma


@pytest.mark.parametrize("impl", kernels.IMPLS)
def test_dropout_value_and_gradient_follow_the_mask(impl):
    """Dropout(x) = mask * x / (1 - rate) and its gradient mask * g / (1 - rate), with the mask of `impl`; the
    reference mask is `jax.random.bernoulli`'s."""
    rate, key = 0.3, jax.random.key(0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 32)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(1).standard_normal((4, 8, 32)), jnp.float32)
    mask = np.asarray(dropout_keep_mask(key, x.shape, 1.0 - rate, impl), np.float32)
    if impl == "reference":
        np.testing.assert_array_equal(mask, np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape)))
    value, vjp = jax.vjp(lambda a: Dropout(rate, impl)(a, key), x)
    np.testing.assert_allclose(value, mask * np.asarray(x) / (1 - rate), rtol=1e-6)
    np.testing.assert_allclose(vjp(g)[0], mask * np.asarray(g) / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(Dropout(rate, impl)(x, None), x)


# ------------------------------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize(
    ("x_shape", "w_shape"),
    [((3, 5, 8), (8, 6)), ((2, 3, 5, 8), (8, 6)), ((8,), (8, 6)), ((3, 5, 2, 4), (2, 4, 3)), ((2, 4), (2, 4, 3))],
)
def test_matmul_cpu_tuned_matches_the_reference(x_shape, w_shape):
    """Values and gradients (x and w) of the flattened product equal those of the one dot_general, for dense
    ([..., I] @ [I, O]) and grouped ([..., G, I] with [G, I, O]) weights, under jit."""
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    ref = kernels.matmul_reference(x, w)
    g = jax.random.normal(kg, ref.shape)
    expected = np.einsum("...i,io->...o", x, w) if len(w_shape) == 2 else np.einsum("...gi,gio->...go", x, w)
    np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-5)
    for impl in kernels.IMPLS:
        value, vjp = jax.vjp(jax.jit(kernels.KERNELS["matmul"][impl]), x, w)
        assert value.shape == ref.shape
        np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-5)
        for got, want in zip(vjp(g), jax.vjp(kernels.matmul_reference, x, w)[1](g), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_matmul_cpu_tuned_is_one_plain_matrix_product():
    """The point of the tuned form: a [B, T, I] input reaches the dot as [B*T, I] (one free dimension), so XLA
    CPU's weight gradient is a plain matrix product."""
    args = jax.ShapeDtypeStruct((4, 16, 8), jnp.float32), jax.ShapeDtypeStruct((8, 6), jnp.float32)

    def dims(impl):
        jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(kernels.matmul(x, w, impl)), argnums=1))(*args)
        return {v.aval.ndim for e in jaxpr.eqns if e.primitive.name == "dot_general" for v in e.invars}

    assert dims("cpu_tuned") == {2} and 3 in dims("reference")


# ------------------------------------------------------------------------------------------------
# selection


def test_choices_resolve_per_kernel_and_names_are_checked():
    assert {name: kernels.resolve_impl("tpu", name) for name in kernels.KERNELS} == {
        "gelu": "cpu_tuned",
        "dropout_keep_mask": "cpu_tuned",
        "shifted_window_sum": "reference",
        "matmul": "reference",
    }
    for name in kernels.KERNELS:
        assert kernels.resolve_impl("cpu", name) == "cpu_tuned" and kernels.resolve_impl("gpu", name) == "reference"
        assert kernels.resolve_impl("auto", name, "other") == kernels.AUTO_DEFAULT == "reference"
        assert kernels.resolve_impl("auto", name, "tpu") == kernels.resolve_impl("tpu", name)
        assert kernels.resolve_impl("auto", name) == kernels.resolve_impl("cpu", name)  # no mesh set: the backend
        assert [kernels.resolve_impl(i, name, "tpu") for i in kernels.IMPLS] == list(kernels.IMPLS)  # as given
    assert kernels.kernel("shifted_window_sum", "reference") is kernels.shifted_window_sum_reference
    assert kernels.kernel("gelu", "cpu_tuned") is kernels.gelu_cpu_tuned
    assert kernels.kernel("dropout_keep_mask", "tpu") is kernels.dropout_keep_mask_cpu_tuned
    assert kernels.activation("gelu", "reference") is kernels.gelu_reference
    assert set(kernels.KERNELS) == {"gelu", "dropout_keep_mask", "shifted_window_sum", "matmul"}
    assert all(set(impls) == set(kernels.IMPLS) for impls in kernels.KERNELS.values())
    assert all(set(choice) == set(kernels.KERNELS) for choice in kernels.AUTO_IMPL.values())
    with pytest.raises(ValueError, match="must be one of"):
        kernels.resolve_impl("fast", "gelu")


def _custom_gradients_traced() -> int:
    """How many custom-gradient (cpu_tuned) kernels gelu -> convolution traces with impl 'auto': 2 with CPU's
    choice, 1 (gelu) with TPU's."""

    def loss(x, w):
        return jnp.sum(shifted_window_sum(kernels.gelu(x), w, 3))

    args = jax.ShapeDtypeStruct((2, 5, 4), jnp.float32), jax.ShapeDtypeStruct((4, 3), jnp.float32)
    return str(jax.make_jaxpr(loss)(*args)).count("custom_vjp_call[")


def test_auto_follows_the_target_devices_not_the_host():
    """Compiling for TPU devices on this CPU host (ahead of time) must pick the TPU's kernels: from the devices
    (`ConvBertConfig.resolve_kernels`, what `Pretrainer` does with its mesh) and at trace time from the mesh in
    context. Stand-in TPU devices here; `test_auto_on_a_real_tpu_topology` uses libtpu's."""
    tpu = [types.SimpleNamespace(platform="tpu")] * 4
    assert kernels.platform_of(tpu) == "tpu"
    assert ConvBertConfig().resolve_kernels(tpu).kernels == "tpu"
    assert ConvBertConfig(kernels="cpu_tuned").resolve_kernels(tpu).kernels == "cpu_tuned"  # explicit choices stay
    assert ConvBertConfig().resolve_kernels([types.SimpleNamespace(platform="metal")]).kernels == "reference"
    assert ConvBertConfig().resolve_kernels(sharding.create_mesh({"data": -1})).kernels == "cpu"
    assert (
        Pretrainer(pretrain.get_config("tiny"), sharding.create_mesh({"data": -1}), SPECIAL).model_config.kernels
        == "cpu"
    )
    with pytest.raises(ValueError, match=r"one platform, got platforms \['cpu', 'tpu'\]"):
        kernels.platform_of(tpu + jax.devices())

    assert kernels.target_platform() == "cpu" and _custom_gradients_traced() == 2
    device = jax.sharding.AbstractDevice(device_kind="TPU v5 lite", num_cores=None, platform="tpu")
    tpu_mesh = jax.sharding.AbstractMesh((4,), ("data",), axis_types=(AxisType.Auto,), abstract_device=device)
    with jax.sharding.use_abstract_mesh(tpu_mesh):
        assert kernels.target_platform() == "tpu" and _custom_gradients_traced() == 1


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu (pip install jax[tpu])")
def test_auto_on_a_real_tpu_topology(monkeypatch):
    from jax.experimental import topologies

    monkeypatch.setenv("TPU_SKIP_MDS_QUERY", "1")
    mesh = sharding.create_mesh(
        {"data": -1}, topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
    )
    assert kernels.platform_of(mesh) == "tpu"
    assert ConvBertConfig().resolve_kernels(mesh).kernels == "tpu"
    assert Pretrainer(pretrain.get_config("tiny"), mesh, SPECIAL).model_config.kernels == "tpu"
    with jax.set_mesh(mesh):
        assert kernels.target_platform() == "tpu" and _custom_gradients_traced() == 1
