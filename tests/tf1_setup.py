"""TF1 checkpoints under the upstream variable names, written with TensorFlow for the converter tests.

`upstream_variables` names our models' parameters independently of `convbert.tf1.names`: from transformers' state-dict
keys (`hf_io.flax_to_hf`) with the table of transformers' former TF1 loader (`load_tf_weights_in_convbert`,
modeling_convbert.py of transformers 4.x) and google-research/electra `run_pretraining.py`'s head scopes.
"""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from convbert import hf_io

# transformers key (without the body prefix) -> (TF name, HF -> TF transform); {s}: the network scope
LAYER = {
    r"attention\.self\.(query|key|value)\.weight": ("attention/self/{0}/kernel", "T"),
    r"attention\.self\.(query|key|value)\.bias": ("attention/self/{0}/bias", ""),
    r"attention\.self\.key_conv_attn_layer\.depthwise\.weight": ("attention/self/conv_attn_key/depthwise_kernel", "dw"),
    r"attention\.self\.key_conv_attn_layer\.pointwise\.weight": ("attention/self/conv_attn_key/pointwise_kernel", "pw"),
    r"attention\.self\.key_conv_attn_layer\.bias": ("attention/self/conv_attn_key/bias", "col"),
    r"attention\.self\.conv_kernel_layer\.weight": ("attention/self/conv_attn_kernel/kernel", "T"),
    r"attention\.self\.conv_kernel_layer\.bias": ("attention/self/conv_attn_kernel/bias", ""),
    r"attention\.self\.conv_out_layer\.weight": ("attention/self/conv_attn_point/kernel", "T"),
    r"attention\.self\.conv_out_layer\.bias": ("attention/self/conv_attn_point/bias", ""),
    r"attention\.output\.dense\.weight": ("attention/output/dense/kernel", "T"),
    r"attention\.output\.dense\.bias": ("attention/output/dense/bias", ""),
    r"attention\.output\.LayerNorm\.weight": ("attention/output/LayerNorm/gamma", ""),
    r"attention\.output\.LayerNorm\.bias": ("attention/output/LayerNorm/beta", ""),
    r"(intermediate|output)\.dense\.weight": ("{0}/{dense}/kernel", "T"),
    r"(intermediate|output)\.dense\.bias": ("{0}/{dense}/bias", ""),
    r"output\.LayerNorm\.weight": ("output/LayerNorm/gamma", ""),
    r"output\.LayerNorm\.bias": ("output/LayerNorm/beta", ""),
}
TOP = {
    r"embeddings\.(word|position|token_type)_embeddings\.weight": ("electra/embeddings/{0}_embeddings", ""),
    r"embeddings\.LayerNorm\.weight": ("electra/embeddings/LayerNorm/gamma", ""),
    r"embeddings\.LayerNorm\.bias": ("electra/embeddings/LayerNorm/beta", ""),
    r"embeddings_project\.weight": ("{s}/embeddings_project/kernel", "T"),
    r"embeddings_project\.bias": ("{s}/embeddings_project/bias", ""),
    r"discriminator_predictions\.dense\.weight": ("discriminator_predictions/dense/kernel", "T"),
    r"discriminator_predictions\.dense\.bias": ("discriminator_predictions/dense/bias", ""),
    r"discriminator_predictions\.dense_prediction\.weight": ("discriminator_predictions/dense_1/kernel", "T"),
    r"discriminator_predictions\.dense_prediction\.bias": ("discriminator_predictions/dense_1/bias", ""),
    r"generator_predictions\.dense\.weight": ("generator_predictions/dense/kernel", "T"),
    r"generator_predictions\.dense\.bias": ("generator_predictions/dense/bias", ""),
    r"generator_predictions\.LayerNorm\.weight": ("generator_predictions/LayerNorm/gamma", ""),
    r"generator_predictions\.LayerNorm\.bias": ("generator_predictions/LayerNorm/beta", ""),
    r"generator_lm_head\.bias": ("generator_predictions/output_bias", ""),
}
TRANSFORMS = {
    "": lambda w: w,
    "T": lambda w: w.T if w.ndim == 2 else w,  # grouped kernels keep their layout
    "dw": lambda w: w.transpose(2, 0, 1),  # [H, 1, k] -> [k, H, 1]
    "pw": lambda w: w.transpose(2, 1, 0),  # [A, H, 1] -> [1, H, A]
    "col": lambda w: w[:, 0],
}


def _tf_name(key: str, scope: str, grouped: bool) -> tuple[str, str] | None:
    key = key.removeprefix("convbert.")
    if m := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", key):
        for pattern, (name, how) in LAYER.items():
            if g := re.fullmatch(pattern, m[2]):
                name = name.format(*g.groups(), dense="g_dense" if grouped else "dense")
                return f"{scope}/encoder/layer_{m[1]}/{name}", how
    for pattern, (name, how) in TOP.items():
        if g := re.fullmatch(pattern, key):
            return name.format(*g.groups(), s=scope), how
    return None  # the tied generator_lm_head.weight


def upstream_variables(model, suffix: str = "") -> dict[str, np.ndarray]:
    """{upstream TF name + suffix: array} of an `ElectraModel`'s parameters (its shared embeddings once)."""
    out = {}
    for scope, part in (("electra", model.discriminator_model()), ("generator", model.generator_model())):
        flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(part, nnx.Param))}
        for key, value in hf_io.flax_to_hf(hf_io.split_stacked(flat)).items():
            if (found := _tf_name(key, scope, part.config.num_groups > 1)) is not None:
                name, how = found
                out[name + suffix] = np.ascontiguousarray(TRANSFORMS[how](value))
    return out


def write_tf1(prefix: str, variables: dict[str, np.ndarray], step: int | None = None) -> str:
    """A TF1 name-based checkpoint (`Saver`) of `variables` (+ `global_step`); returns its path prefix."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf_vars = [tf.compat.v1.get_variable(name, initializer=value) for name, value in variables.items()]
        if step is not None:
            tf_vars.append(tf.compat.v1.get_variable("global_step", initializer=np.int64(step)))
        saver = tf.compat.v1.train.Saver(tf_vars)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return saver.save(session, prefix, global_step=step, write_meta_graph=False)
