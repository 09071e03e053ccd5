"""`ConvBertConfig`: the frozen model configuration (docs/architecture.md#head-bookkeeping,
docs/checkpoints.md#released-checkpoints, docs/electra.md#generator-config).

Field names follow Hugging Face's `ConvBertConfig` so `config.json` files round-trip; `conv_type`,
`classifier_head`, `summary_type` and the `RUNTIME_FIELDS` are additions of this project. ELECTRA is this model with
`conv_type='none', head_ratio=1, num_groups=1` (`is_electra`): such a config reads and writes transformers'
`model_type: electra` `config.json` (`ElectraConfig`'s fields; docs/checkpoints.md#hugging-face-electra).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from convbert import kernels

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish", "tanh")
CONV_TYPES = ("sdconv", "dconv", "lconv", "none")
CLASSIFIER_HEADS = ("hf", "original")
SUMMARY_TYPES = ("last", "first", "mean")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "dots", "full")
# How the model is computed, not what it computes: left out of config.json and ignored in one (pass them to
# `load` / `from_pretrained` as overrides).
RUNTIME_FIELDS = ("dtype", "kernels", "remat", "scan_layers")

CONFIG_NAME = "config.json"
# The values that make a ConvBERT config ELECTRA's (transformers' `ElectraConfig` has no such fields).
ELECTRA_FIELDS = dict(conv_type="none", head_ratio=1, num_groups=1)
MODEL_TYPES = ("convbert", "conv_bert", "electra")


@dataclasses.dataclass(frozen=True)
class ConvBertConfig:
    """Hyper-parameters of a ConvBERT encoder and its heads.

    Defaults are ConvBERT-base (docs/checkpoints.md#released-checkpoints) with the BERT uncased vocab ([PAD] = 0).
    `head_ratio` (gamma) reduces the head count of each branch: Nr = N // gamma heads of size
    d = hidden / N, as the official TF code does (yitu-opensource/ConvBert `model/modeling.py`
    `transformer_model`, `attention_layer`; docs/architecture.md#head-bookkeeping).

    Runtime knobs (the same function either way): `dtype` the compute dtype (parameters stay float32);
    `kernels` the implementations of gelu, the dropout mask, the convolution over time and the dense layers'
    matmul ('auto': the choice of the platform compiled for; 'cpu' / 'tpu' / 'gpu': that platform's choice;
    'reference' / 'cpu_tuned': one form for every kernel; see `convbert.kernels` and `resolve_kernels`); `remat`
    what each encoder layer keeps for the backward pass ('none'; 'dots': the outputs of its weight matmuls, the
    rest is recomputed; 'full': only its input); `scan_layers` the encoder's layers as one stacked module run by
    `jax.lax.scan` (compiles one layer instead of L; parameters [L, ...]).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    embedding_size: int = 768
    head_ratio: int = 2
    conv_kernel_size: int = 9
    num_groups: int = 1
    conv_type: str = "sdconv"
    classifier_dropout: float | None = None
    num_labels: int = 2
    classifier_head: str = "hf"
    summary_type: str = "last"
    summary_use_proj: bool = False
    summary_activation: str | None = None
    summary_last_dropout: float = 0.0
    dtype: str = "float32"
    kernels: str = "auto"
    remat: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        positive = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "embedding_size",
            "head_ratio",
            "conv_kernel_size",
            "num_groups",
            "num_labels",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ConvBertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"ConvBertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_ratio > self.num_attention_heads:
            raise ValueError(
                f"ConvBertConfig.head_ratio ({self.head_ratio}) is larger than num_attention_heads "
                f"({self.num_attention_heads}); use head_ratio <= num_attention_heads"
            )
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"ConvBertConfig.conv_kernel_size must be odd (centred window), got {self.conv_kernel_size}"
            )
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % self.num_groups:
                raise ValueError(
                    f"ConvBertConfig.num_groups ({self.num_groups}) must divide {name} ({getattr(self, name)})"
                )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"ConvBertConfig.hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
        if self.conv_type not in CONV_TYPES:
            raise ValueError(f"ConvBertConfig.conv_type {self.conv_type!r} is not one of {CONV_TYPES}")
        if self.classifier_head not in CLASSIFIER_HEADS:
            raise ValueError(
                f"ConvBertConfig.classifier_head {self.classifier_head!r} is not one of {CLASSIFIER_HEADS}"
            )
        if self.summary_activation not in (None, *ACTIVATIONS):
            raise ValueError(
                f"ConvBertConfig.summary_activation {self.summary_activation!r} is not None or one of {ACTIVATIONS}"
            )
        if self.summary_type not in SUMMARY_TYPES:
            raise ValueError(f"ConvBertConfig.summary_type {self.summary_type!r} is not one of {SUMMARY_TYPES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"ConvBertConfig.dtype {self.dtype!r} is not one of {DTYPES}")
        if self.kernels not in kernels.CHOICES:
            raise ValueError(f"ConvBertConfig.kernels {self.kernels!r} is not one of {kernels.CHOICES}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"ConvBertConfig.remat {self.remat!r} is not one of {REMAT_POLICIES}")
        if not isinstance(self.scan_layers, bool):
            raise ValueError(f"ConvBertConfig.scan_layers must be True or False, got {self.scan_layers!r}")
        for name in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "classifier_dropout",
            "summary_last_dropout",
        ):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"ConvBertConfig.{name} must be in [0, 1), got {value!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"ConvBertConfig.pad_token_id ({self.pad_token_id}) is outside the vocab")

    # ---- derived sizes (docs/architecture.md#head-bookkeeping) ----
    @property
    def head_size(self) -> int:
        """d = hidden / N (unchanged by the bottleneck)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_reduced_heads(self) -> int:
        """Nr = N // gamma heads in each branch (self-attention and convolution)."""
        return self.num_attention_heads // self.head_ratio

    @property
    def branch_size(self) -> int:
        """A = Nr * d, the width of each branch."""
        return self.num_reduced_heads * self.head_size

    @property
    def attention_output_size(self) -> int:
        """Width of the concatenated branches fed to the attention output dense (2A, or A without conv)."""
        return self.branch_size * (1 if self.conv_type == "none" else 2)

    @property
    def conv_reach(self) -> int:
        """How far a token's final hidden state reaches into its right neighbours through the convolutions: each
        layer's kernel sees `conv_kernel_size // 2` positions on either side (attention masks its padding). A
        batch cut `conv_reach` positions after its longest row gives every real token the outputs of the padded
        batch (`convbert.finetuning.row_lengths`)."""
        return 0 if self.conv_type == "none" else self.num_hidden_layers * (self.conv_kernel_size // 2)

    @property
    def is_electra(self) -> bool:
        """Whether this is ELECTRA's architecture (`ELECTRA_FIELDS`): transformers' `Electra*` classes compute it."""
        return all(getattr(self, k) == v for k, v in ELECTRA_FIELDS.items())

    @property
    def hf_incompatibilities(self) -> list[str]:
        """Why transformers' ConvBertModel (ElectraModel for `is_electra`) would compute a different function; []
        if none (docs/architecture.md#tf-and-transformers-differences)."""
        reasons = []
        if self.is_electra:
            return reasons
        if self.conv_type != "sdconv":
            reasons.append(f"conv_type={self.conv_type!r} (transformers only implements 'sdconv')")
            return reasons
        hf_head_size = (self.hidden_size // self.num_reduced_heads) // 2
        if hf_head_size != self.head_size:
            reasons.append(
                f"head_ratio={self.head_ratio}: transformers uses head size (H // Nr) // 2 = "
                f"{hf_head_size}, this model hidden / heads = {self.head_size}"
            )
        if self.attention_output_size != self.hidden_size:
            reasons.append(
                f"concatenated branch width {self.attention_output_size} != hidden_size "
                f"{self.hidden_size} (transformers' attention output dense is H -> H)"
            )
        return reasons

    @property
    def hf_compatible(self) -> bool:
        """Whether transformers' ConvBertModel computes exactly this model
        (docs/architecture.md#tf-and-transformers-differences)."""
        return not self.hf_incompatibilities

    def replace(self, **changes) -> ConvBertConfig:
        return dataclasses.replace(self, **changes)

    def resolve_kernels(self, devices: kernels.Devices) -> ConvBertConfig:
        """This config with `kernels='auto'` replaced by the platform of `devices` (a `Mesh` or devices: those the
        model will run on, which ahead-of-time compilation for TPU on a CPU host makes different from the host's
        backend), whose kernel choice then holds wherever the model is traced."""
        return self.replace(kernels=kernels.resolve_platform(self.kernels, devices))

    # ---- Hugging Face config.json ----
    def to_hf_dict(self, architecture: str = "ConvBertModel") -> dict[str, Any]:
        """The `config.json` content; the `RUNTIME_FIELDS` are left out, our other extra fields stay. An `is_electra`
        config is ELECTRA's (`model_type: electra`, `Electra*` architecture, without the `ELECTRA_FIELDS`)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}
        d["summary_activation"] = self.summary_activation or ""  # transformers: "" is none (ElectraConfig: a str)
        if self.is_electra:
            d = {k: v for k, v in d.items() if k not in (*ELECTRA_FIELDS, "conv_kernel_size")}
            d.update(model_type="electra", architectures=[architecture.replace("ConvBert", "Electra")])
        else:
            d.update(model_type="convbert", architectures=[architecture])
        if self.num_labels != 2:
            d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides) -> ConvBertConfig:
        """From a `config.json` dict (ConvBERT's or ELECTRA's); the `RUNTIME_FIELDS` in it are ignored (HF's `dtype` is
        a storage dtype), pass them as `overrides`."""
        model_type = d.get("model_type", "convbert")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"ConvBertConfig: config.json has model_type {model_type!r}, not one of {MODEL_TYPES}")
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"ConvBertConfig: position_embedding_type {d['position_embedding_type']!r} is not supported"
            )
        fields = {f.name for f in dataclasses.fields(cls)} - set(RUNTIME_FIELDS)
        kwargs = {k: v for k, v in d.items() if k in fields}
        if model_type == "electra":
            kwargs.update(ELECTRA_FIELDS)
        if "summary_activation" in kwargs:
            kwargs["summary_activation"] = kwargs["summary_activation"] or None
        if "num_labels" not in kwargs and isinstance(d.get("id2label"), dict):
            kwargs["num_labels"] = len(d["id2label"])
        kwargs.update(overrides)
        return cls(**kwargs)

    def save(self, directory: str, architecture: str = "ConvBertModel") -> str:
        """Writes `directory/config.json`; returns its path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self.to_hf_dict(architecture), f, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, path: str, **overrides) -> ConvBertConfig:
        """Reads a Hugging Face `config.json` (or the directory holding one)."""
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ConvBERT config not found: {path}")
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        try:
            return cls.from_hf_dict(d, **overrides)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


# The released discriminators (docs/checkpoints.md#released-checkpoints), keyed by the names used in configs/, and
# `large`: ELECTRA-large's shape (24 layers, hidden 1024, 16 heads, FFN 4096, embeddings 1024; Clark et al. 2020,
# appendix table 6) with ConvBERT's mixed attention at its defaults (head ratio 2, kernel 9). No ConvBERT-large
# exists upstream.
SIZES: dict[str, dict[str, int]] = {
    "small": dict(embedding_size=128, hidden_size=256, num_attention_heads=4, intermediate_size=1024, num_groups=1),
    "medium_small": dict(
        embedding_size=128, hidden_size=384, num_attention_heads=8, intermediate_size=1536, num_groups=2
    ),
    "base": dict(embedding_size=768, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_groups=1),
    "large": dict(
        embedding_size=1024,
        hidden_size=1024,
        num_attention_heads=16,
        intermediate_size=4096,
        num_groups=1,
        num_hidden_layers=24,
    ),
}


def size_config(size: str, **overrides) -> ConvBertConfig:
    """The ConvBERT discriminator of `size` ('small', 'medium_small', 'base' or 'large', see `SIZES`)."""
    if size not in SIZES:
        raise ValueError(f"unknown ConvBERT size {size!r}; choose from {sorted(SIZES)}")
    return ConvBertConfig(**{**SIZES[size], **overrides})


def generator_config(disc: ConvBertConfig, fraction: float) -> ConvBertConfig:
    """ELECTRA generator config (yitu-opensource/ConvBert `run_pretraining.py` `get_generator_config`;
    docs/electra.md#generator-config): hidden = round(H * f), intermediate = 4 * hidden,
    heads = max(1, N * f); a head count below gamma is handled as the TF code does (Nr forced to 1,
    i.e. head_ratio := heads), so the concat width may exceed the generator's hidden size."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"generator fraction must be in (0, 1], got {fraction}")
    hidden = round(disc.hidden_size * fraction)
    heads_f = max(1.0, disc.num_attention_heads * fraction)
    heads = int(heads_f)
    if heads != heads_f or hidden % heads:
        raise ValueError(
            f"generator fraction {fraction} gives {heads_f} heads for hidden {hidden}; "
            "choose a fraction that keeps whole heads dividing the hidden size"
        )
    return disc.replace(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=heads,
        head_ratio=min(disc.head_ratio, heads),
    )


OBJECTIVES = ("electra", "mlm")  # pretraining: replaced-token detection (+ generator MLM), or BERT-style MLM
SPECIAL_ID_FIELDS = ("mask_id", "cls_id", "sep_id", "pad_id")
# The generator samplers of `convbert.masking.SAMPLERS` (one name each; tests/test_masking.py keeps them equal).
SAMPLER_NAMES = ("gumbel", "inverse_cdf")


@dataclasses.dataclass(frozen=True)
class ElectraConfig:
    """The replaced-token-detection objective (docs/electra.md); defaults are the paper's, ids the BERT vocab's."""

    generator_fraction: float = 0.25
    mask_prob: float = 0.15
    max_predictions_per_seq: int = 19
    mask_token_prob: float = 0.85
    gen_weight: float = 1.0
    disc_weight: float = 50.0
    temperature: float = 1.0
    upstream_quirks: bool = True
    sampler: str = "inverse_cdf"  # or "gumbel" (upstream's exact Gumbel-max formula); see `convbert.masking`
    mask_id: int = 103
    cls_id: int = 101
    sep_id: int = 102
    pad_id: int = 0

    def __post_init__(self):
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"ElectraConfig.mask_prob must be in (0, 1], got {self.mask_prob}")
        if not 0.0 <= self.mask_token_prob <= 1.0:
            raise ValueError(f"ElectraConfig.mask_token_prob must be in [0, 1], got {self.mask_token_prob}")
        if self.max_predictions_per_seq < 1:
            raise ValueError(f"ElectraConfig.max_predictions_per_seq must be >= 1, got {self.max_predictions_per_seq}")
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"ElectraConfig.sampler must be one of {sorted(SAMPLER_NAMES)}, got {self.sampler!r}")
        if self.temperature <= 0.0:
            raise ValueError(f"ElectraConfig.temperature must be > 0, got {self.temperature}")

    @classmethod
    def from_config(cls, electra: Mapping[str, Any], special_ids: Any = None) -> ElectraConfig:
        """From `config.electra` (a ConfigDict or dict) and the special token ids: a tokenizer (attributes
        `mask_id`, `cls_id`, `sep_id`, `pad_id`), a dict keyed `mask_id`/... or `mask`/... (the tokenizer's
        `special_ids`), or None for the BERT vocab's."""
        fields = {f.name for f in dataclasses.fields(cls)} - set(SPECIAL_ID_FIELDS)
        kwargs = {k: electra[k] for k in fields if k in electra}
        for name in SPECIAL_ID_FIELDS if special_ids is not None else ():
            if isinstance(special_ids, Mapping):
                kwargs[name] = int(special_ids[name] if name in special_ids else special_ids[name[:-3]])
            else:
                kwargs[name] = int(getattr(special_ids, name))
        return cls(**kwargs)
