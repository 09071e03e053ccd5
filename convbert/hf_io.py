"""Hugging Face interop: read and write transformers' ConvBERT and ELECTRA checkpoints
(docs/checkpoints.md#name-map, docs/checkpoints.md#hugging-face-electra).

One name/layout table (`hf_name`) maps a parameter path of our NNX models to transformers' state-dict key;
`flax_to_hf` and `hf_to_flax` both use it. Layouts (ours <-> transformers):
Linear kernel [in, out] <-> weight [out, in]; grouped kernel [G, in/G, out/G] as-is; embedding/LayerNorm
scale -> weight; depthwise [k, H] <-> [H, 1, k]; pointwise [H, A] <-> [A, H, 1]; sep-conv bias [A] <-> [A, 1].
ELECTRA (`ConvBertConfig.is_electra`) has the same names with the body under `electra.` instead of `convbert.`.
The stacked layers of a `scan_layers` model (`encoder.layer.<name>` [L, ...]) are read and written as L layers
(`split_stacked`, `join_stacked`), so both forms load and save the same files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from convbert.config import CONFIG_NAME, ConvBertConfig

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
PT_WEIGHTS_NAME = "pytorch_model.bin"
NATIVE_WEIGHTS_NAME = "convbert_jax.safetensors"  # models transformers cannot compute (see `save_pretrained`)
HUB_PATTERNS = [
    CONFIG_NAME,
    "*.safetensors",
    "*.bin",
    "vocab.txt",
    "tokenizer_config.json",
    "tokenizer.json",
    "special_tokens_map.json",
]
BODY = "convbert"  # transformers' base_model_prefix of the task models
ELECTRA_BODY = "electra"  # the same of transformers' Electra* models (docs/checkpoints.md#hugging-face-electra)
TIED_KEY, TIED_TO = "generator_lm_head.weight", "convbert.embeddings.word_embeddings.weight"
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # non-parameter buffers of older checkpoints
# transformers classes of the same name; `ConvBertForPreTraining` has none.
HF_CLASSES = (
    "ConvBertModel",
    "ConvBertForMaskedLM",
    "ConvBertForSequenceClassification",
    "ConvBertForMultipleChoice",
    "ConvBertForTokenClassification",
    "ConvBertForQuestionAnswering",
)

Path = tuple  # an NNX state path, e.g. ('convbert', 'encoder', 'layer', 0, 'attention', 'self', 'query', 'kernel')


@dataclasses.dataclass(frozen=True)
class Layout:
    to_hf: Callable[[np.ndarray], np.ndarray]
    from_hf: Callable[[np.ndarray], np.ndarray]


def _transpose_2d(a: np.ndarray) -> np.ndarray:
    # grouped kernels [G, in/G, out/G] keep their layout (docs/checkpoints.md#layout-transforms)
    return a.T if a.ndim == 2 else a


SAME = Layout(lambda a: a, lambda w: w)
LINEAR = Layout(_transpose_2d, _transpose_2d)
DEPTHWISE = Layout(lambda a: a.T[:, None, :], lambda w: w[:, 0, :].T)
POINTWISE = Layout(lambda a: a.T[:, :, None], lambda w: w[:, :, 0].T)
COLUMN = Layout(lambda a: a[:, None], lambda w: w[:, 0])

# (our leaf name, parent module name or None for any) -> (transformers leaf name, layout)
RULES: dict[tuple[str, str | None], tuple[str, Layout]] = {
    ("depthwise", "key_conv_attn_layer"): ("depthwise.weight", DEPTHWISE),
    ("pointwise", "key_conv_attn_layer"): ("pointwise.weight", POINTWISE),
    ("bias", "key_conv_attn_layer"): ("bias", COLUMN),
    ("kernel", None): ("weight", LINEAR),
    ("embedding", None): ("weight", SAME),
    ("scale", None): ("weight", SAME),
}


def hf_name(path: Path) -> tuple[str, Layout]:
    """transformers' state-dict key and layout of our parameter at `path`; leaves without a rule
    (biases, lconv's `conv_kernel`) keep their name and layout."""
    *module, leaf = (str(p) for p in path)
    hf_leaf, layout = RULES.get((leaf, module[-1])) or RULES.get((leaf, None), (leaf, SAME))
    return ".".join(module + [hf_leaf]), layout


def _stacked_at(path: Path) -> int | None:
    """Where the layer index goes in `path` when it is a parameter of stacked layers ('encoder', 'layer', name, ...
    without an index, see `convbert.modeling.ConvBertEncoder`); None for any other parameter."""
    for i in range(len(path) - 2):
        if path[i] == "encoder" and path[i + 1] == "layer" and not isinstance(path[i + 2], int):
            return i + 2
    return None


def split_stacked(flat: Mapping[Path, np.ndarray]) -> dict[Path, np.ndarray]:
    """{path: array} with every stacked layer parameter [L, ...] split into its L per-layer entries
    ('encoder', 'layer', i, ...), the paths of a model without `scan_layers`; other entries as they are."""
    out = {}
    for path, value in flat.items():
        at = _stacked_at(path)
        if at is None:
            out[path] = value
        else:
            out.update({path[:at] + (i,) + path[at:]: value[i] for i in range(len(value))})
    return out


def join_stacked(
    per_layer: Mapping[Path, np.ndarray], shapes: Mapping[Path, tuple[int, ...]]
) -> dict[Path, np.ndarray]:
    """The inverse of `split_stacked` for a model whose parameter shapes are `shapes`: the values of its paths
    that `per_layer` holds (a stacked parameter from its L per-layer entries)."""
    out = {}
    for path, shape in shapes.items():
        at = _stacked_at(path)
        if at is None:
            if path in per_layer:
                out[path] = per_layer[path]
        else:
            out[path] = np.stack([per_layer[path[:at] + (i,) + path[at:]] for i in range(shape[0])])
    return out


def flax_to_hf(flat: Mapping[Path, np.ndarray]) -> dict[str, np.ndarray]:
    """{our path: array} -> {transformers key: array in transformers' layout}."""
    out = {}
    for path, value in flat.items():
        key, layout = hf_name(path)
        out[key] = np.ascontiguousarray(layout.to_hf(np.asarray(value)))
    return out


def hf_to_flax(
    state: Mapping[str, np.ndarray], shapes: Mapping[Path, tuple[int, ...]], source: str = "state dict"
) -> tuple[dict[Path, np.ndarray], list[Path]]:
    """transformers state dict -> ({our path: array} for the paths in `shapes` it holds, [paths it lacks]).

    Raises ValueError naming `source`, the transformers key and both shapes when a tensor has the wrong shape.
    """
    values, missing = {}, []
    for path, shape in shapes.items():
        key, layout = hf_name(path)
        if key not in state:
            missing.append(path)
            continue
        expected = layout.to_hf(np.broadcast_to(np.float32(0), shape)).shape
        if state[key].shape != expected:
            raise ValueError(f"{source}: {key} has shape {tuple(state[key].shape)}, but this config needs {expected}")
        values[path] = layout.from_hf(state[key])
    return values, missing


# ------------------------------------------------------------------------------------------------
# files


def resolve_pretrained(path: str, allow_patterns: list[str] = HUB_PATTERNS) -> str:
    """A local directory as is; anything else is taken as a hub id (e.g. `YituTech/conv-bert-base`) and
    downloaded with `huggingface_hub.snapshot_download`. Returns the local directory."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or os.path.isabs(path) or path.startswith("."):
        raise FileNotFoundError(f"{path} is not a directory (expected config.json + weights in it)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=path, allow_patterns=allow_patterns)
    except Exception as e:  # offline, unknown repo, invalid id: one clear message
        raise OSError(
            f"{path!r} is not a local directory and could not be downloaded from the "
            f"Hugging Face hub ({type(e).__name__}: {e})"
        ) from e


def read_weights(directory: str) -> tuple[str, dict[str, np.ndarray]]:
    """(file, {key: float32 array}) from the first of model.safetensors, pytorch_model.bin,
    convbert_jax.safetensors in `directory`; integer buffers are skipped."""
    names = (SAFE_WEIGHTS_NAME, PT_WEIGHTS_NAME, NATIVE_WEIGHTS_NAME)
    files = [os.path.join(directory, n) for n in names]
    file = next((f for f in files if os.path.isfile(f)), None)
    if file is None:
        raise FileNotFoundError(f"no ConvBERT weights found: none of {', '.join(files)} exists")
    if file.endswith(".bin"):
        try:
            import torch
        except ImportError as e:
            raise ImportError(f"reading {file} needs PyTorch (pip install torch)") from e
        raw = torch.load(file, map_location="cpu", weights_only=True)
        return file, {k: t.detach().float().numpy() for k, t in raw.items() if t.is_floating_point()}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="flax") as f:  # the flax reader handles bfloat16, numpy's does not
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)
    except SafetensorError as e:
        raise ValueError(
            f"{file} cannot be read ({e}; {os.path.getsize(file):,} bytes): it is truncated or damaged, e.g. by an "
            "interrupted copy or download; copy or export it again"
        ) from None
    return file, {k: np.asarray(t, np.float32) for k, t in tensors.items() if jnp.issubdtype(t.dtype, jnp.floating)}


def _param_shapes(model: nnx.Module) -> dict[Path, tuple[int, ...]]:
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def from_pretrained(cls, path: str, *, rngs: nnx.Rngs | None = None, **config_overrides):
    """Builds `cls` from a transformers ConvBERT or ELECTRA directory (or hub id): `config.json` + weights.

    Checkpoints with or without the `convbert.` prefix load into any class: a task checkpoint loaded into
    `ConvBertModel` drops its head; a checkpoint without this class's head (a bare model, or another task)
    leaves the head randomly initialised from `rngs` (default `nnx.Rngs(0)`), with a warning. Any other
    missing parameter is an error, as is a tensor of the wrong shape. Extra keys are logged and ignored.
    """
    directory = resolve_pretrained(path)
    config = ConvBertConfig.load(os.path.join(directory, CONFIG_NAME), **config_overrides)
    file, state = read_weights(directory)
    state = {BODY + k[len(ELECTRA_BODY) :] if k.startswith(ELECTRA_BODY + ".") else k: v for k, v in state.items()}
    abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    model_shapes = _param_shapes(abstract)
    shapes = {
        p: v.shape
        for p, v in split_stacked({p: np.broadcast_to(np.float32(0), s) for p, s in model_shapes.items()}).items()
    }
    model_prefixed = any(p[0] == BODY for p in shapes)  # a task model: body under `convbert.`
    ckpt_prefixed = any(k.startswith(BODY + ".") for k in state)
    if model_prefixed and not ckpt_prefixed:
        state = {f"{BODY}.{k}": v for k, v in state.items()}
    elif ckpt_prefixed and not model_prefixed:  # the head's keys stay as they are and go unused
        state = {k.removeprefix(BODY + "."): v for k, v in state.items()}
    tied = state.pop(TIED_KEY, None)
    if (
        tied is not None
        and any(p[0] == "generator_lm_head" for p in shapes)
        and not np.array_equal(tied, state.get(TIED_TO))
    ):
        raise ValueError(f"{file}: {TIED_KEY} differs from {TIED_TO}; this ConvBertForMaskedLM ties them")

    values, missing = hf_to_flax(state, shapes, source=file)
    used = {hf_name(p)[0] for p in values}
    unexpected = sorted(k for k in state if k not in used and not k.endswith(BUFFERS))
    if unexpected:
        logger.warning(
            "%s: ignoring %d tensors %s does not use: %s", file, len(unexpected), cls.__name__, ", ".join(unexpected)
        )
    head = [p for p in shapes if p[0] != BODY] if model_prefixed else []
    if missing and set(missing) == set(head):
        logger.warning(
            "%s has no weights for the %s head (%s); they are newly initialised: train before use",
            file,
            cls.__name__,
            ", ".join(hf_name(p)[0] for p in missing),
        )
        model = cls(config, rngs=rngs or nnx.Rngs(0))
    elif missing:
        raise ValueError(f"{file}: missing parameters {', '.join(hf_name(p)[0] for p in missing)}")
    else:
        model = abstract
    values = join_stacked(values, model_shapes)
    nnx.update(model, nnx.from_flat_state([(p, jnp.asarray(v)) for p, v in values.items()]))
    return model


def save_pretrained(model: nnx.Module, path: str) -> list[str]:
    """Writes `config.json` + weights in transformers' names and layouts; returns the written files.

    * transformers computes the same function (`config.hf_compatible`, a class transformers has, the 'hf'
      classifier head): `model.safetensors`, loadable with `transformers.<ClassName>.from_pretrained(path)`
      (`Electra<Head>` for an `is_electra` config: `model_type: electra`, the body under `electra.`).
      The tied `generator_lm_head.weight` is left out, as transformers does.
    * `ConvBertForPreTraining`: `model.safetensors` with the ELECTRA head under `discriminator_predictions.*`;
      transformers has no such ConvBERT class, and `transformers.ConvBertModel.from_pretrained(path)` loads the
      encoder, dropping the head. A UserWarning says so. (ELECTRA: `transformers.ElectraForPreTraining`.)
    * otherwise (conv_type other than sdconv, a head size or concat width transformers cannot build, or
      `classifier_head='original'`) transformers would silently compute something else, so the same tensors go
      to `convbert_jax.safetensors` (a file transformers does not read; lconv's kernel keeps our name
      `...attention.self.conv_kernel` [Nr, k]) and a UserWarning gives the reasons. `from_pretrained` of this
      package reads all three forms.
    """
    config: ConvBertConfig = model.config
    name = type(model).__name__
    if not hasattr(getattr(model, BODY, model), "embeddings"):
        raise ValueError("this model was built with add_embeddings=False; save the model that owns the embeddings")
    reasons = list(config.hf_incompatibilities)
    if name == "ConvBertForSequenceClassification" and config.classifier_head == "original":
        reasons.append("classifier_head='original' (transformers' head is dense -> activation -> out_proj)")
    if name == "ConvBertForSequenceClassification" and config.is_electra and config.hidden_act != "gelu":
        reasons.append(f"hidden_act={config.hidden_act!r} (transformers' ELECTRA classifier head always uses gelu)")
    if reasons:
        weights_name = NATIVE_WEIGHTS_NAME
        warnings.warn(
            f"transformers cannot compute this {name}: {'; '.join(reasons)}. Writing {weights_name}, "
            "which only convbert.hf_io.from_pretrained reads.",
            UserWarning,
            stacklevel=3,
        )
    else:
        weights_name = SAFE_WEIGHTS_NAME
        if name not in HF_CLASSES and not (config.is_electra and name == "ConvBertForPreTraining"):
            warnings.warn(
                f"transformers has no {name}; transformers.ConvBertModel.from_pretrained loads the "
                "encoder of this checkpoint and drops its head.",
                UserWarning,
                stacklevel=3,
            )
    flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    tensors = flax_to_hf(split_stacked(flat))
    if config.is_electra and weights_name == SAFE_WEIGHTS_NAME:
        tensors = {ELECTRA_BODY + k[len(BODY) :] if k.startswith(BODY + ".") else k: v for k, v in tensors.items()}
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    weights_file = os.path.join(path, weights_name)
    save_file(tensors, weights_file, metadata={"format": "pt"})
    return [config.save(path, architecture=name), weights_file]
