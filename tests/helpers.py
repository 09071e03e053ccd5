"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convbert.assets import BERT_UNCASED_VOCAB
from convbert.config import ConvBertConfig
from convbert.modeling import ConvBertModel

# The mesh of the in-process fine-tuning runs that do not test data parallelism: one of the test process's 8
# simulated CPU devices, which runs the tiny programs several times faster than all 8 (docs/development.md).
ONE_DEVICE = jax.devices()[:1]

# The tiny encoder of the fine-tuning tests (GLUE and SQuAD).
TINY_ENCODER = ConvBertConfig(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    embedding_size=32,
    max_position_embeddings=128,
)


def randomize(model: nnx.Module, seed: int = 0, scale: float = 0.02) -> nnx.Module:
    """Sets every parameter from NumPy: LayerNorm scales 1 + scale * N(0, 1), all others (biases included)
    scale * N(0, 1), so layout errors cannot hide behind zero biases. Works on `nnx.eval_shape` models and
    avoids per-shape JAX initialiser compiles."""
    rng = np.random.default_rng(seed)
    nnx.update(
        model,
        nnx.from_flat_state(
            [
                (p, jnp.asarray((p[-1] == "scale") + scale * rng.standard_normal(v.shape), jnp.float32))
                for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
            ]
        ),
    )
    return model


def save_random_encoder(path: str) -> str:
    """A random `TINY_ENCODER` (N(0, 0.02) weights) in Hugging Face format at `path`, with the BERT uncased vocab."""
    randomize(nnx.eval_shape(lambda: ConvBertModel(TINY_ENCODER, rngs=nnx.Rngs(0)))).save_pretrained(path)
    shutil.copyfile(BERT_UNCASED_VOCAB, os.path.join(path, "vocab.txt"))
    return path
