"""The TF1 variable name and layout of every parameter of `convbert.electra.ElectraModel`
(docs/checkpoints.md#tf1-name-map).

Upstream names: yitu-opensource/ConvBert `model/modeling.py` (`BertModel`, `transformer_model`, `attention_layer`,
`GDense`) and `run_pretraining.py` (`generator/…`, `generator_predictions/…`, `discriminator_predictions/…`), the
same as google-research/electra's without the convolution and grouped variables. The shared embeddings live under
`electra/embeddings/`, the discriminator under `electra/`, the generator under `generator/`; Adam's slots are
`<variable>/adam_m` and `<variable>/adam_v` (`model/optimization.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from convbert.config import ConvBertConfig

ADAM_SLOTS = ("adam_m", "adam_v")
GLOBAL_STEP = "global_step"

Transform = tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]  # (ours -> TF, TF -> ours)
SAME: Transform = (lambda a: a, lambda w: w)
DEPTHWISE: Transform = (lambda a: a[:, :, None], lambda w: w[:, :, 0])  # ours [k, H], TF [k, H, 1]
POINTWISE: Transform = (lambda a: a[None], lambda w: w[0])  # ours [H, A], TF [1, H, A]

# (pattern on our '/'-joined path, replacement), applied in order
RULES = (
    (r"^embeddings/(\w+_embeddings)/embedding$", r"electra/embeddings/\1"),
    (r"^embeddings/", "electra/embeddings/"),
    (r"^discriminator/", "electra/"),
    (r"^generator_lm_head/bias$", "generator_predictions/output_bias"),
    (r"^discriminator_predictions/dense_prediction/", "discriminator_predictions/dense_1/"),
    (r"/encoder/layer/(\d+)/", r"/encoder/layer_\1/"),
    (r"/LayerNorm/scale$", "/LayerNorm/gamma"),
    (r"/LayerNorm/bias$", "/LayerNorm/beta"),
    (r"/key_conv_attn_layer/depthwise$", "/conv_attn_key/depthwise_kernel"),
    (r"/key_conv_attn_layer/pointwise$", "/conv_attn_key/pointwise_kernel"),
    (r"/key_conv_attn_layer/bias$", "/conv_attn_key/bias"),
    (r"/conv_kernel_layer/", "/conv_attn_kernel/"),
    (r"/conv_out_layer/", "/conv_attn_point/"),
)
GROUPED = (r"/(layer_\d+)/(intermediate|output)/dense/", r"/\1/\2/g_dense/")  # `GDense`, linear_groups > 1


def tf_name(path: tuple, config: ConvBertConfig) -> tuple[str, Transform]:
    """The TF1 variable of our `ElectraModel` parameter at `path` (its network's `config`) and the layout transform."""
    name = "/".join(str(p) for p in path)
    for pattern, replacement in RULES:
        name = re.sub(pattern, replacement, name)
    if config.num_groups > 1:
        name = re.sub(*GROUPED, name)
    transform = (
        DEPTHWISE if name.endswith("depthwise_kernel") else POINTWISE if name.endswith("pointwise_kernel") else SAME
    )
    return name, transform
