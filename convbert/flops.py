"""Analytic FLOPs of ConvBERT ELECTRA-style pretraining, after google-research/electra `flops_computation.py` (the
accounting ConvBERT's paper uses for its train-FLOPs column; docs/electra.md#flops-accounting).

ELECTRA's conventions, kept here: a matmul of [m, n] by [n, p] costs 2mnp; the backward pass costs the same
as the forward, so training = 2 x forward; embedding lookups are dense one-hot matmuls (2 E V per token for
the word table, 2 E (s + 2) for position and token type); the generator's MLM output (dense, gelu,
LayerNorm, tied softmax over V) is charged on `output_frac` = 15.625% (= 20 / 128) of the tokens;
elementwise ops cost dropout 4, LayerNorm 5, gelu 8, softmax 5 FLOPs per element. The generator runs its
own (shared-table) embedding lookup.

ConvBERT's mixed-attention layer (paper section 3; docs/architecture.md#span-based-dynamic-convolution), per token,
with H hidden, A = Nr d branch width, Nr heads per branch, k kernel, s sequence length, I intermediate, G groups:
  self-attention Q/K/V H -> A (3 x 2HA), scores and weighted values 2As each, softmax/scale/dropout on Nr s
  probabilities; span key: depthwise conv 2kH + pointwise 2HA; Q * K_s; kernel generator A -> Nr k and its
  softmax; conv value H -> A; dynamic conv 2kA; output dense 2A -> H; grouped FFN 2HI/G twice.
Two deliberate differences from ELECTRA's file, both negligible (< 0.1%): LayerNorm after attention is
charged 5H per token (upstream charges 5, a typo) and the weighted sum of values 2As (upstream 2Hs; equal
for BERT where A = H).

Against the paper's table (1M steps, seq 128, batch 128 / 128 / 256, generators as ELECTRA with the heads * f
head count; `python -m convbert.flops --config=configs/pretrain.py:SIZE`), which prints two significant digits:
small 1.258e18 and base 1.894e19 round to the paper's 1.3e18 and 1.9e19, but medium-small gives 1.567e18, which
rounds to 1.6e18, 4.5% above the paper's 1.5e18. We found no accounting that gives the paper's medium-small
number: counting the discriminator's grouped FFN (G = 2) dense gives 2.031e18, the generator's 1.596e18. For
small and base, counting at seq 128, dense lookups and 2 x forward are all needed (3 x forward would give +50%,
seq 512 for base x4.15). The same code with plain BERT layers (conv_type 'none', head_ratio 1) reproduces
upstream's script to 0.1% (`electra_small` 1.294e18, `electra_base` 6.42e19, the 6.4e19 of ELECTRA's paper); see
tests/test_flops.py.

`model_flops_per_step` is the different quantity for MFU: the matmul FLOPs the step actually executes
(3 x forward: the backward computes both input and weight gradients), the embedding lookups as gathers
(0 FLOPs), the MLM head on the N gathered slots per row; elementwise ops are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from convbert.config import ConvBertConfig, generator_config

DROPOUT_FLOPS = 4
LAYER_NORM_FLOPS = 5
ACTIVATION_FLOPS = 8
SOFTMAX_FLOPS = 5
OUTPUT_FRAC = 0.15625  # fraction of tokens with an MLM output softmax in ELECTRA's accounting


class Term(NamedTuple):
    name: str
    flops: float  # forward FLOPs per token (per predicted token for the MLM head)
    matmul: bool  # executed as a matmul / multiply-add (counted by `model_flops_per_step`)


def layer_terms(cfg: ConvBertConfig, seq_len: int) -> list[Term]:
    """Forward FLOPs per token of one mixed-attention layer + FFN (docs/architecture.md#span-based-dynamic-convolution,
    docs/architecture.md#grouped-linear-feed-forward)."""
    h, a, nr, k, s = cfg.hidden_size, cfg.branch_size, cfg.num_reduced_heads, cfg.conv_kernel_size, seq_len
    i, g, conv = cfg.intermediate_size, cfg.num_groups, cfg.conv_type
    terms = [
        Term("qkv", 3 * 2 * h * a, True),
        Term("qkv_bias", 3 * a, False),
        Term("attention_scores", 2 * a * s, True),
        Term("attention_scale_softmax_dropout", (1 + SOFTMAX_FLOPS + DROPOUT_FLOPS) * nr * s, False),
        Term("attention_weighted_values", 2 * a * s, True),
    ]
    if conv == "sdconv":
        terms += [
            Term("span_key_depthwise", 2 * k * h, True),
            Term("span_key_pointwise", 2 * h * a, True),
            Term("span_key_bias_and_query_product", 2 * a, False),
        ]
    if conv in ("sdconv", "dconv"):
        terms += [
            Term("conv_kernel_generator", 2 * a * nr * k, True),
            Term("conv_kernel_bias_softmax", (1 + SOFTMAX_FLOPS) * nr * k, False),
        ]
    if conv != "none":
        terms += [
            Term("conv_value", 2 * h * a, True),
            Term("conv_value_bias", a, False),
            Term("dynamic_conv", 2 * k * a, True),
        ]
    terms += [
        Term("attention_output", 2 * cfg.attention_output_size * h, True),
        Term("attention_output_bias_dropout_residual_layer_norm", (2 + DROPOUT_FLOPS + LAYER_NORM_FLOPS) * h, False),
        Term("intermediate", 2 * h * i // g, True),
        Term("intermediate_bias_act", (1 + ACTIVATION_FLOPS) * i, False),
        Term("output", 2 * i * h // g, True),
        Term("output_bias_dropout_residual_layer_norm", (2 + DROPOUT_FLOPS + LAYER_NORM_FLOPS) * h, False),
    ]
    return terms


def embedding_terms(cfg: ConvBertConfig, seq_len: int) -> list[Term]:
    """Input embeddings per token: dense one-hot lookups (not executed as matmuls), LN, dropout, projection."""
    e, h = cfg.embedding_size, cfg.hidden_size
    terms = [
        Term("word_lookup", 2 * e * cfg.vocab_size, False),
        Term("position_and_type_lookup", 2 * e * (seq_len + 2), False),
        Term("add_layer_norm_dropout", (2 + LAYER_NORM_FLOPS + DROPOUT_FLOPS) * e, False),
    ]
    if e != h:
        terms += [Term("embeddings_project", 2 * e * h, True), Term("embeddings_project_bias", h, False)]
    return terms


def mlm_head_terms(cfg: ConvBertConfig) -> list[Term]:
    """Generator MLM head per PREDICTED token: dense H -> E, gelu, LN, tied output E -> V, softmax
    (docs/electra.md#shared-embeddings)."""
    e, v = cfg.embedding_size, cfg.vocab_size
    return [
        Term("mlm_dense", 2 * cfg.hidden_size * e, True),
        Term("mlm_bias_act_layer_norm", (1 + ACTIVATION_FLOPS + LAYER_NORM_FLOPS) * e, False),
        Term("mlm_output", 2 * e * v, True),
        Term("mlm_softmax_target", (SOFTMAX_FLOPS + 2) * v, False),
    ]


def rtd_head_terms(cfg: ConvBertConfig) -> list[Term]:
    """Discriminator head per token: dense H -> H, gelu, dense H -> 1 (docs/electra.md#shared-embeddings)."""
    h = cfg.hidden_size
    return [
        Term("rtd_dense", 2 * h * h, True),
        Term("rtd_bias_act", (1 + ACTIVATION_FLOPS) * h, False),
        Term("rtd_logit", 2 * h, True),
    ]


def forward_breakdown(
    cfg: ConvBertConfig, seq_len: int = 128, *, head: str = "discriminator", output_frac: float = OUTPUT_FRAC
) -> dict[str, float]:
    """ELECTRA-convention forward FLOPs per token by part: 'layers' (all L), 'embeddings', 'head'.
    head: 'discriminator' (RTD head on every token) or 'generator' (MLM head on `output_frac` of tokens)."""
    if head not in ("discriminator", "generator"):
        raise ValueError(f"head must be 'discriminator' or 'generator', got {head!r}")
    head_flops = (
        sum(t.flops for t in rtd_head_terms(cfg))
        if head == "discriminator"
        else output_frac * sum(t.flops for t in mlm_head_terms(cfg))
    )
    return {
        "layers": cfg.num_hidden_layers * sum(t.flops for t in layer_terms(cfg, seq_len)),
        "embeddings": sum(t.flops for t in embedding_terms(cfg, seq_len)),
        "head": head_flops,
    }


def forward_flops_per_token(
    cfg: ConvBertConfig, seq_len: int = 128, *, head: str = "discriminator", output_frac: float = OUTPUT_FRAC
) -> float:
    """ELECTRA-convention forward FLOPs per token of one network (see `forward_breakdown`)."""
    return sum(forward_breakdown(cfg, seq_len, head=head, output_frac=output_frac).values())


Networks = Sequence[tuple[ConvBertConfig, str]]  # (config, head) of each network one step trains


def training_flops_per_step(
    disc: ConvBertConfig,
    gen: ConvBertConfig | None,
    batch_size: int,
    seq_len: int = 128,
    output_frac: float = OUTPUT_FRAC,
) -> float:
    """ELECTRA-convention training FLOPs of one step: 2 x forward of generator + discriminator (`gen=None`:
    the discriminator-sized encoder with the MLM head, the MLM objective)."""
    per_token = sum(
        forward_flops_per_token(cfg, seq_len, head=head, output_frac=output_frac) for cfg, head in _networks(disc, gen)
    )
    return 2.0 * batch_size * seq_len * per_token


def _networks(disc: ConvBertConfig, gen: ConvBertConfig | None) -> Networks:
    return [(disc, "generator")] if gen is None else [(disc, "discriminator"), (gen, "generator")]


def configs_from(config: Mapping[str, Any]) -> tuple[ConvBertConfig, ConvBertConfig | None]:
    """(discriminator, generator) configs of a `configs/pretrain.py` ConfigDict (the generator as ELECTRA, paper
    section 3.2); the generator is None for `objective='mlm'` (one encoder of the discriminator's size with the MLM
    head)."""
    model = config["model"]
    disc = ConvBertConfig(**(model.to_dict() if hasattr(model, "to_dict") else dict(model)))
    if config.get("objective", "electra") == "mlm":
        return disc, None
    return disc, generator_config(disc, config["electra"]["generator_fraction"])


def total_training_flops(config: Mapping[str, Any]) -> float:
    """The paper's train-FLOPs number for a `configs/pretrain.py` ConfigDict: per step x num_train_steps."""
    disc, gen = configs_from(config)
    return (
        training_flops_per_step(disc, gen, config["batch_size"], config["max_seq_length"]) * config["num_train_steps"]
    )


def model_flops_per_step(
    disc: ConvBertConfig, gen: ConvBertConfig | None, batch_size: int, seq_len: int, num_predictions: int
) -> float:
    """Matmul FLOPs a training step executes (for MFU): 3 x forward matmuls of both networks (`gen=None`: the
    MLM objective's one), lookups as gathers, the MLM head on `num_predictions` (max_predictions_per_seq) slots
    per row."""

    def matmuls(terms):
        return sum(t.flops for t in terms if t.matmul)

    per_row = 0.0
    for cfg, head in _networks(disc, gen):
        per_row += seq_len * (
            cfg.num_hidden_layers * matmuls(layer_terms(cfg, seq_len)) + matmuls(embedding_terms(cfg, seq_len))
        )
        per_row += (
            seq_len * matmuls(rtd_head_terms(cfg))
            if head == "discriminator"
            else num_predictions * matmuls(mlm_head_terms(cfg))
        )
    return 3.0 * batch_size * per_row


def report(config: Mapping[str, Any]) -> list[str]:
    """Human-readable breakdown; the last line is the run's total training FLOPs."""
    disc, gen = configs_from(config)
    s, b, steps = config["max_seq_length"], config["batch_size"], config["num_train_steps"]
    lines = [f"seq_len {s}, batch {b}, steps {steps:,}; forward FLOPs per token (ELECTRA convention):"]
    names = ("discriminator", "generator") if gen is not None else ("mlm encoder",)
    for name, (cfg, head) in zip(names, _networks(disc, gen), strict=True):
        parts = forward_breakdown(cfg, s, head=head)
        lines.append(
            f"  {name:13s} H={cfg.hidden_size} L={cfg.num_hidden_layers} A={cfg.branch_size} "
            + " ".join(f"{k}={v / 1e6:.2f}M" for k, v in parts.items())
            + f" total={sum(parts.values()) / 1e6:.2f}M"
        )
    per_step = training_flops_per_step(disc, gen, b, s)
    lines += [
        f"training FLOPs per step (2 x forward): {per_step:.4e}",
        f"executed matmul FLOPs per step (3 x forward, for MFU): "
        f"{model_flops_per_step(disc, gen, b, s, config['electra']['max_predictions_per_seq']):.4e}",
        f"total training FLOPs: {per_step * steps:.4e}",
    ]
    return lines


def main(argv):
    del argv
    print("\n".join(report(FLAGS.config)))


if __name__ == "__main__":
    from absl import app, flags

    from convbert import config_file

    FLAGS = flags.FLAGS
    config_file.define("configs/pretrain.py:small", "pretraining config file")
    app.run(main)
