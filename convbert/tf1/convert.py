"""TF1 pretraining checkpoint -> `ElectraModel` (+ Adam slots and step) -> Hugging Face directories and a pretraining
checkpoint (docs/checkpoints.md#tf1-checkpoints). Every variable is accounted for: one the model does not have, one
it lacks and one of another shape than the config's are errors naming them."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from convbert import config_file, sharding
from convbert.config import RUNTIME_FIELDS, SIZES, ConvBertConfig, generator_config
from convbert.electra import ElectraModel
from convbert.tf1.names import ADAM_SLOTS, GLOBAL_STEP, tf_name
from convbert.tokenization import ConvBertTokenizer

# The released checkpoints: ConvBERT's (yitu-opensource/ConvBert configure_pretraining.py; docs/recipes.md) and
# ELECTRA's (google-research/electra configure_pretraining.py, and the hub's google/electra-*-{generator,
# discriminator} configs): (discriminator fields, generator fraction, pretraining recipe of configs/pretrain.py).
ELECTRA_ARCH = dict(conv_type="none", head_ratio=1, num_groups=1)
PRESETS: dict[str, tuple[dict, float, str]] = {
    "small": (SIZES["small"], 0.25, "small"),
    "medium_small": (SIZES["medium_small"], 0.25, "medium_small"),
    "base": (SIZES["base"], 1.0 / 3.0, "base"),
    "electra_small": ({**SIZES["small"], **ELECTRA_ARCH}, 1.0, "small"),
    "electra_base": ({**SIZES["base"], **ELECTRA_ARCH}, 1.0 / 3.0, "base"),
    "electra_large": ({**SIZES["large"], **ELECTRA_ARCH}, 0.25, "large"),
}


@dataclasses.dataclass
class Converted:
    """The pair; its Adam moments {our parameter path: array} per slot (None without slots); the global step."""

    model: ElectraModel
    slots: dict[str, dict[tuple, np.ndarray]] | None
    step: int | None


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """{variable name: array} of a TF1 checkpoint (`.../model.ckpt-N`, or its directory: the newest)."""
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("reading TF1 checkpoints needs TensorFlow: pip install 'convbert-jax[tf1]'") from e
    reader = tf.train.load_checkpoint(prefix)
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}


def expected_variables(disc: ConvBertConfig, gen: ConvBertConfig) -> dict[str, tuple[tuple, tuple, object]]:
    """{TF variable: (our path, TF shape, transform)} of the pair `ElectraModel(disc, gen)`."""
    for config in (disc, gen):
        if not (config.conv_type in ("sdconv", "none") and not config.scan_layers):
            raise ValueError(f"TF1 checkpoints hold conv_type 'sdconv' or 'none' models, not {config.conv_type!r}")
    abstract = nnx.eval_shape(lambda: ElectraModel(disc, gen, rngs=nnx.Rngs(0)))
    out = {}
    for path, variable in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        name, transform = tf_name(path, gen if path[0].startswith("generator") else disc)
        out[name] = (path, transform[0](np.broadcast_to(np.float32(0), variable.shape)).shape, transform)
    return out


def convert(variables: Mapping[str, np.ndarray], disc: ConvBertConfig, gen: ConvBertConfig, where: str) -> Converted:
    """The pair (and slots, step) from a checkpoint's `variables`; ValueError naming every unexpected, missing or
    misshaped variable of the checkpoint at `where` for these configs."""
    expected = expected_variables(disc, gen)
    slot_names = {f"{name}/{slot}": (name, slot) for name in expected for slot in ADAM_SLOTS}
    unexpected = sorted(n for n in variables if n not in expected and n not in slot_names and n != GLOBAL_STEP)
    missing = sorted(n for n in expected if n not in variables)
    shapes = [
        f"{n}: {tuple(variables[n].shape)} in the checkpoint, {expected[n][1]} for this config"
        for n in (*expected, *slot_names)
        if n in variables and tuple(variables[n].shape) != expected[slot_names.get(n, (n,))[0]][1]
    ]
    present_slots = [n for n in slot_names if n in variables]
    missing_slots = sorted(set(slot_names) - set(present_slots)) if present_slots else []
    problems = [
        f"{len(unexpected)} variables this model does not have: {', '.join(unexpected)}" if unexpected else "",
        f"{len(missing)} variables of this model are missing: {', '.join(missing)}" if missing else "",
        f"{len(shapes)} variables have another shape: {'; '.join(shapes)}" if shapes else "",
        f"Adam slots are missing for {len(missing_slots)} variables: {', '.join(missing_slots)}"
        if missing_slots
        else "",
    ]
    if any(problems):
        raise ValueError(
            f"{where} does not hold the model of this config (discriminator hidden {disc.hidden_size}, "
            f"{disc.num_hidden_layers} layers, conv_type {disc.conv_type!r}; generator hidden {gen.hidden_size}):\n  "
            + "\n  ".join(p for p in problems if p)
            + "\nChoose the --size of the checkpoint or give its --config."
        )
    model = nnx.eval_shape(lambda: ElectraModel(disc, gen, rngs=nnx.Rngs(0)))
    ours = lambda suffix: {
        path: transform[1](np.asarray(variables[name + suffix], np.float32))
        for name, (path, _, transform) in expected.items()
    }
    nnx.update(model, nnx.from_flat_state([(p, jnp.asarray(v)) for p, v in ours("").items()]))
    slots = {slot: ours("/" + slot) for slot in ADAM_SLOTS} if present_slots else None
    step = int(variables[GLOBAL_STEP]) if GLOBAL_STEP in variables else None
    return Converted(model, slots, step)


def configs_for(size: str | None, config_file: str | None, generator_fraction: float | None):
    """(discriminator, generator, recipe) of a `PRESETS` size or a discriminator `config.json` (ConvBERT's or
    ELECTRA's, recipe 'small'); `generator_fraction` overrides the preset's."""
    if (size is None) == (config_file is None):
        raise ValueError("give one of --size and --config")
    if size is not None:
        if size not in PRESETS:
            raise ValueError(f"unknown --size {size!r}; choose from {', '.join(PRESETS)}")
        fields, fraction, recipe = PRESETS[size]
        disc = ConvBertConfig(**fields)
    else:
        disc, fraction, recipe = ConvBertConfig.load(config_file), 0.25, "small"
    fraction = generator_fraction or fraction
    return disc, generator_config(disc, fraction), fraction, recipe


def write_hf(model: ElectraModel, vocab: str, output_dir: str, lowercase: bool = True) -> list[str]:
    """`output_dir/{discriminator,generator}` in Hugging Face format, each with the vocabulary `vocab`."""
    files = model.save_pretrained(output_dir)
    tokenizer = ConvBertTokenizer(vocab, do_lower_case=lowercase)
    for network in ("discriminator", "generator"):
        files += tokenizer.save(os.path.join(output_dir, network))
    return files


def pretraining_config(disc: ConvBertConfig, fraction: float, spec: str) -> ml_collections.ConfigDict:
    """The pretraining config file `spec` (`configs/pretrain.py:small`) with the model `disc` (its architecture;
    the file's runtime fields) and the generator `fraction`."""
    config = config_file.load(spec)
    for key in config.model:
        if key not in RUNTIME_FIELDS:
            config.model[key] = getattr(disc, key)
    config.electra.generator_fraction = fraction
    return config


def model_flags(config: ml_collections.ConfigDict, spec: str) -> list[str]:
    """The `--config.*` flags that turn the config file `spec` into `config`'s model and generator fraction (what
    `pretrain.py` needs to resume the converted checkpoint)."""
    recipe = config_file.load(spec)
    changed = {f"model.{k}": v for k, v in config.model.items() if recipe.model[k] != v}
    if recipe.electra.generator_fraction != config.electra.generator_fraction:
        changed["electra.generator_fraction"] = config.electra.generator_fraction
    return [f"--config.{k}={v!r}" if isinstance(v, float) else f"--config.{k}={v}" for k, v in changed.items()]


def write_pretraining_checkpoint(
    converted: Converted, config: ml_collections.ConfigDict, workdir: str, source: str
) -> str:
    """A pretraining checkpoint of `converted` in `workdir/checkpoints/<step>` for `config` (a pretraining config
    whose model is the pair's): parameters, the Adam moments (fresh without slots; the original AdamW has no bias
    correction, so the moments are all its state), the step; its meta records the model, the generator fraction and
    no data (`resume.DataPosition`: the first run reads from example 0). Returns its directory."""
    from convbert.checkpoint import Checkpointer
    from convbert.optim import AdamNoBiasState, path_names
    from convbert.pretraining import Pretrainer

    if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints")):
        raise ValueError(f"{workdir} already holds checkpoints; write the conversion to an empty --workdir")
    mesh = sharding.create_mesh(dict(data=-1, fsdp=1, model=1), jax.devices()[:1])
    trainer = Pretrainer(config, mesh, None)
    state = trainer.init(jax.random.PRNGKey(config.seed))  # the rng a fresh run of this config draws
    step, model = converted.step or 0, converted.model
    params = nnx.state(model, nnx.Param)
    opt_state = state.opt_state
    if converted.slots is None:
        logging.warning("%s has no Adam slots (adam_m, adam_v): the optimizer state starts fresh", source)
    else:

        def moments(values):
            holder = nnx.eval_shape(lambda: ElectraModel(model.disc_config, model.gen_config, rngs=nnx.Rngs(0)))
            nnx.update(holder, nnx.from_flat_state([(p, jnp.asarray(v)) for p, v in values.items()]))
            return nnx.state(holder, nnx.Param)

        slots = AdamNoBiasState(mu=moments(converted.slots["adam_m"]), nu=moments(converted.slots["adam_v"]))
        opt_state = tuple(slots if isinstance(s, AdamNoBiasState) else s for s in opt_state)
    # the schedule's step count (optax `count`) is the step too
    opt_state = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, step) if path_names(path)[-1:] == ("count",) else x, opt_state
    )
    state = state.replace(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state)
    state = jax.device_put(state, trainer.state_shardings)
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False, handle_sigterm=False)
    recorded = dict(model=config.model.to_dict(), electra=dict(generator_fraction=config.electra.generator_fraction))
    checkpoints.save(step, state, meta={"step": step, "config": recorded, "data": None, "converted_from": source})
    checkpoints.close()
    return os.path.join(workdir, "checkpoints", str(step))
