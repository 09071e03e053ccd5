"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

import jax.numpy as jnp
import numpy as np
from flax import nnx


def randomize(model: nnx.Module, seed: int = 0, scale: float = 0.02) -> nnx.Module:
    """Sets every parameter from NumPy: LayerNorm scales 1 + scale * N(0, 1), all others (biases included)
    scale * N(0, 1), so layout errors cannot hide behind zero biases. Works on `nnx.eval_shape` models and
    avoids per-shape JAX initialiser compiles."""
    rng = np.random.default_rng(seed)
    nnx.update(model, nnx.from_flat_state([
        (p, jnp.asarray((p[-1] == "scale") + scale * rng.standard_normal(v.shape), jnp.float32))
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]))
    return model
