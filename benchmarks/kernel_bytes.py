"""What each kernel choice costs under a TPU compiler's cost model, measured on a CPU machine (needs libtpu:
`pip install "jax[tpu]==<the installed jax version>"`): forward + backward of `ConvBertForPreTraining` (dropout on,
RTD loss on every token) compiled ahead of time for the devices of a TPU topology, data parallel, and XLA's
per-device `cost_analysis()` (bytes accessed, FLOPs) and `memory_analysis()` (temporaries). These are the figures
behind `convbert.kernels.AUTO_IMPL["tpu"]` (BENCHMARKS.md, "What will be re-measured").

    python -m benchmarks.kernel_bytes --size base --topology v5e:2x2 --choices reference,tpu,cpu_tuned

Compiles only (nothing runs); about 2-4 minutes per choice for base on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from configs.pretrain import get_config
from convbert import ConvBertConfig, ConvBertForPreTraining, sharding


def measure(config: ConvBertConfig, devices, per_chip: int, seq: int) -> dict:
    """{bytes_accessed, flops, temp_bytes, compile_seconds} per device of the jitted gradient of the RTD loss."""
    mesh = sharding.create_mesh({"data": -1}, devices)
    graphdef, params, rest = nnx.split(
        nnx.eval_shape(lambda: ConvBertForPreTraining(config, rngs=nnx.Rngs(0))), nnx.Param, ...
    )
    p_sh = sharding.param_shardings(params, mesh, sharding.DEFAULT_RULES)
    abstract = jax.tree.map(
        lambda s, v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
        p_sh,
        params,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    ids = jax.ShapeDtypeStruct((per_chip * len(devices), seq), jnp.int32, sharding=sharding.batch_sharding(mesh))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))

    def loss(params, ids, key):
        return nnx.merge(graphdef, params, rest)(
            ids, jnp.ones_like(ids), labels=jnp.zeros(ids.shape, jnp.float32), deterministic=False, dropout_rng=key
        ).loss

    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss), out_shardings=p_sh).lower(abstract, ids, key).compile()
    seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return dict(
        bytes_accessed=cost["bytes accessed"],
        flops=cost["flops"],
        temp_bytes=compiled.memory_analysis().temp_size_in_bytes,
        compile_seconds=seconds,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="base", help="a size of configs/pretrain.py (its model section)")
    parser.add_argument("--topology", default="v5e:2x2")
    parser.add_argument("--choices", default="reference,tpu,cpu_tuned", help="values of model.kernels")
    parser.add_argument("--per_chip", type=int, default=16, help="sequences per chip")
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    jax.config.update("jax_platforms", "cpu")
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name=args.topology).devices
    model = ConvBertConfig(**get_config(args.size).model)
    print(
        f"{args.size} ({model.dtype}), {args.topology} ({len(devices)} chips), {args.per_chip} x {args.seq} "
        "per chip, forward + backward, per device:"
    )
    for choice in args.choices.split(","):
        m = measure(model.replace(kernels=choice), devices, args.per_chip, args.seq)
        print(
            f"  kernels={choice:10s} bytes accessed {m['bytes_accessed']:.3e}  FLOPs {m['flops']:.3e}  "
            f"temporaries {m['temp_bytes'] / 2**30:.2f} GiB  (compiled in {m['compile_seconds']:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
