"""Device mesh, logical-axis rules and the helpers that place parameters and batches on it.

Parameters carry `logical_axes` metadata (set in `convbert.modeling`); `rules` map each logical name to
mesh axes (t5x/maxtext style), e.g. `(("embed", "fsdp"), ("heads", "model"), ("mlp", "model"), ...)`. A name
without a rule stays replicated, as the leading 'layers' axis of stacked layers (`scan_layers`) does by default.
The mesh has axes ('data', 'fsdp', 'model') of `AxisType.Auto` (GSPMD); batches are split over
('data', 'fsdp'). Pure data parallel, FSDP and tensor parallel layouts are all choices of mesh sizes.

Activations are pinned the same way: the model calls `constrain(x, ("batch", "length", "embed"))` on its hidden
states (and the logical names of other activations), which under `activation_sharding(mesh, rules)` (the context
the train and eval steps trace in) is a `with_sharding_constraint` to the rule-derived spec, and a no-op without
a mesh. A mesh axis is used once per array, so under FSDP the hidden states [B, T, H] are split over the batch
only (P(('data', 'fsdp'), None, None)): the compiler then all-gathers each weight where it is used instead of
resharding the activations to match the weights' split embed dimension.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Default logical -> mesh rules: embed dims over fsdp, head / mlp / vocab dims over model (tensor parallel).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("heads", "model"),
    ("mlp", "model"),
)


# The rules `constrain` resolves activations' logical axes with (set by `activation_sharding`).
_ACTIVATION_RULES: contextvars.ContextVar[tuple[tuple[str, Any], ...]] = contextvars.ContextVar(
    "convbert_activation_rules", default=DEFAULT_RULES
)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int, key: str = "mesh") -> tuple[int, ...]:
    """Sizes for ('data', 'fsdp', 'model'); at most one -1, which takes the remaining devices."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"config.{key}: unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    fills = [i for i, s in enumerate(sizes) if s == -1]
    if len(fills) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"config.{key}: sizes {dict(zip(MESH_AXES, sizes, strict=True))} need positive sizes and at most one -1"
        )
    known = int(np.prod([s for s in sizes if s != -1]))
    if fills:
        if num_devices % known:
            raise ValueError(
                f"config.{key}: {dict(zip(MESH_AXES, sizes, strict=True))} does not divide {num_devices} devices"
            )
        sizes[fills[0]] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"config.{key}: mesh {dict(zip(MESH_AXES, sizes, strict=True))} has {int(np.prod(sizes))} devices but "
            f"{num_devices} are available"
        )
    return tuple(sizes)


def create_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None, key: str = "mesh") -> Mesh:
    """A ('data', 'fsdp', 'model') mesh of Auto axes over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape, len(devices), key)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def logical_to_spec(
    axes: Sequence[str | None] | None,
    rules: Sequence[tuple[str, Any]],
    mesh: Mesh | AbstractMesh | None = None,
    shape: Sequence[int] | None = None,
) -> P:
    """Maps logical axis names to a PartitionSpec. A mesh axis is used once per array (later dims that
    would reuse it stay replicated); axes of size 1 in `mesh` are dropped, and with `shape` so are mesh axes
    that do not divide the dimension (e.g. vocab 30522 over model=4 stays replicated)."""
    if axes is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(n for n in names if n not in used and (mesh is None or mesh.shape[n] > 1))
        if mesh is not None and shape is not None:
            size, kept = 1, []
            for n in names:
                if shape[i] % (size * mesh.shape[n]) == 0:
                    size *= mesh.shape[n]
                    kept.append(n)
            names = tuple(kept)
        used.update(names)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*out)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Inside (also inside a jit trace): `constrain` pins activations to `rules` on `mesh` (entered through
    `jax.sharding.use_abstract_mesh`, so code that asks for the current mesh sees this one)."""
    token = _ACTIVATION_RULES.set(tuple(tuple(r) for r in rules))
    try:
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            yield
    finally:
        _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """`x` constrained to the layout of its logical `axes` (one name or None per dimension) under the current
    mesh and `activation_sharding` rules; `x` itself when no mesh is set."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, _ACTIVATION_RULES.get(), mesh, x.shape))


def param_specs(params: nnx.State, rules: Sequence[tuple[str, Any]], mesh: Mesh | None = None):
    """PartitionSpec per parameter (a pytree prefix of `params`), from each Variable's `logical_axes`
    (`params` may be abstract, e.g. from `jax.eval_shape`)."""
    return jax.tree.map(
        lambda v: logical_to_spec(v.get_metadata().get("logical_axes"), rules, mesh, np.shape(v.get_value())),
        params,
        is_leaf=_is_variable,
    )


def param_shardings(params: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, Any]]):
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), param_specs(params, rules, mesh), is_leaf=lambda x: isinstance(x, P)
    )


def constrain_params(params: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> nnx.State:
    """Inside jit: pins every parameter to its rule-derived layout (GSPMD propagates it to optimizer slots)."""
    return jax.tree.map(
        lambda s, v: jax.lax.with_sharding_constraint(v, s),
        param_shardings(params, mesh, rules),
        params,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """Leading (batch) dimension split over `axes` (default ('data', 'fsdp')); other dimensions replicated."""
    return NamedSharding(mesh, P(tuple(axes)))


def copies_axis(mesh: Mesh, copies: int) -> str | None:
    """The mesh axis a leading axis of `copies` stacked models (seeds trained together) is split over: 'data'
    when its size (> 1) divides `copies`, else None (every device holds every copy)."""
    return "data" if mesh.shape["data"] > 1 and copies % mesh.shape["data"] == 0 else None


def without_axis(rules: Sequence[tuple[str, Any]], axis: str | None) -> tuple[tuple[str, Any], ...]:
    """`rules` with mesh `axis` removed from every target (the axis the stacked copies take)."""
    if axis is None:
        return tuple(tuple(r) for r in rules)
    out = []
    for name, target in rules:
        names = (target,) if isinstance(target, str) else tuple(target or ())
        out.append((name, tuple(n for n in names if n != axis)))
    return tuple(out)


def stacked(shardings, axis: str | None):
    """Each NamedSharding of `shardings` with a new leading dimension split over `axis` (None: replicated)."""
    return jax.tree.map(
        lambda s: NamedSharding(s.mesh, P(axis, *s.spec)), shardings, is_leaf=lambda x: isinstance(x, NamedSharding)
    )


def check_batch_size(
    global_batch_size: int,
    mesh: Mesh,
    key: str = "batch_size",
    grad_accum_steps: int = 1,
    accum_key: str = "grad_accum_steps",
) -> None:
    """Clear error before compiling when the batch (or each of `grad_accum_steps` micro-batches) cannot be
    split over the batch axes or the processes."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"config.{key}={global_batch_size} is not divisible by the process count {jax.process_count()}"
        )
    if grad_accum_steps < 1 or global_batch_size % grad_accum_steps:
        raise ValueError(
            f"config.{accum_key}={grad_accum_steps} must be >= 1 and divide config.{key}={global_batch_size}"
        )
    micro = global_batch_size // grad_accum_steps
    if micro % shards:
        what = (
            f"config.{key}={global_batch_size}"
            if grad_accum_steps == 1
            else (f"the micro-batch config.{key} / config.{accum_key} = {micro}")
        )
        raise ValueError(f"{what} is not divisible by the data x fsdp mesh size {shards} (config.mesh)")


def micro_batch_sharding(mesh: Mesh, axes: Sequence[str] = BATCH_AXES) -> NamedSharding:
    """[num_micro_batches, micro_batch, ...]: the micro-batch dimension split over `axes` (default
    ('data', 'fsdp'))."""
    return NamedSharding(mesh, P(None, tuple(axes)))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-process batch (this process's rows) -> global arrays split over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def fully_replicated(tree, mesh: Mesh):
    """A copy of `tree` replicated on every device, so each process can read all of it (e.g. to export).
    All processes must call it."""
    return jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)


def optimizer_shardings(tx, opt_state, params: nnx.State, mesh: Mesh, rules: Sequence[tuple[str, Any]]):
    """Shardings for an optax state: slots shaped like the parameters follow the parameter layout,
    everything else (step counts, scalars) is replicated. `opt_state` may be abstract (eval_shape)."""
    import optax

    return optax.tree_utils.tree_map_params(
        tx,
        lambda _, s: s,
        opt_state,
        param_shardings(params, mesh, rules),
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, (nnx.Variable, NamedSharding)),
    )
