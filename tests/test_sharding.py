"""Mesh, logical-axis rules, batch placement, activation constraints, and sharded training equal to one device
(8 simulated devices)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import pretraining_setup as setup
from convbert import sharding
from convbert.data import loader
from convbert.data.example_builder import FIELDS
from convbert.modeling import HIDDEN_AXES
from convbert.pretraining import Pretrainer

RULES = sharding.DEFAULT_RULES
SPECIAL = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


def test_create_mesh_fills_and_errors():
    assert dict(sharding.create_mesh({"data": -1, "model": 2}).shape) == {"data": 4, "fsdp": 1, "model": 2}
    with pytest.raises(ValueError, match=r"config\.mesh: .* has 3 devices but 8"):
        sharding.create_mesh({"data": 3})
    with pytest.raises(ValueError, match=r"config\.mesh: unknown mesh axes \['tensor'\]"):
        sharding.create_mesh({"tensor": 8})
    with pytest.raises(ValueError, match="at most one -1"):
        sharding.create_mesh({"data": -1, "fsdp": -1})


def test_logical_to_spec():
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "model": 2})
    assert sharding.logical_to_spec(("embed", "mlp"), RULES, mesh) == P("fsdp", "model")
    assert sharding.logical_to_spec(("heads", "mlp"), RULES, mesh) == P("model", None)  # model used once
    assert sharding.logical_to_spec(("batch", None), RULES, mesh) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("vocab", "embed"), RULES, mesh, shape=(30522, 64)) == P("model", "fsdp")
    assert sharding.logical_to_spec(("vocab", "embed"), RULES, mesh, shape=(30521, 63)) == P(None, None)
    dp = sharding.create_mesh({"data": -1})
    assert sharding.logical_to_spec(("embed", "mlp"), RULES, dp) == P(None, None)  # size-1 axes dropped
    # the leading axis of stacked layers (scan_layers) has no rule: replicated
    assert sharding.logical_to_spec(("layers", "embed", "mlp"), RULES, mesh) == P(None, "fsdp", "model")


@pytest.mark.parametrize(
    "mesh_shape, embedding, ffn",
    [
        ({"data": -1}, P(None, None), P(None, None)),  # pure data parallel: all replicated
        ({"fsdp": -1}, P(None, "fsdp"), P("fsdp", None)),  # FSDP: embed dims split
        ({"data": 4, "model": 2}, P("model", None), P(None, "model")),  # tensor parallel: vocab / mlp split
    ],
)
def test_parameter_layouts(mesh_shape, embedding, ffn):
    mesh = sharding.create_mesh(mesh_shape)
    trainer = Pretrainer(setup.tiny_config(), mesh, SPECIAL)
    params = trainer.param_shardings
    assert params["embeddings"]["word_embeddings"]["embedding"].spec == embedding
    assert params["discriminator"]["encoder"]["layer"][0]["intermediate"]["dense"]["kernel"].spec == ffn
    opt = jax.tree.leaves(trainer.state_shardings.opt_state)
    assert {s.spec for s in opt} >= {ffn}  # Adam moments follow the parameters
    scanned = Pretrainer(setup.tiny_config(model__scan_layers=True), mesh, SPECIAL)  # stacked [L, ...]
    stacked = P(None, *ffn)
    assert scanned.param_shardings["discriminator"]["encoder"]["layer"]["intermediate"]["dense"]["kernel"].spec == (
        stacked
    )
    assert {s.spec for s in jax.tree.leaves(scanned.state_shardings.opt_state)} >= {stacked}


def test_constrain_pins_activations_under_activation_sharding():
    """No mesh: `constrain` returns its input. Under `activation_sharding` the hidden states [B, T, H] are split
    over the batch axes only (embed would map to fsdp, which the batch already uses), for any mesh."""
    x = jnp.ones((8, 4, 16))
    assert sharding.constrain(x, HIDDEN_AXES) is x
    pin = jax.jit(lambda a: sharding.constrain(a * 2, HIDDEN_AXES))
    for shape, spec, rows in [
        ({"fsdp": -1}, P("fsdp", None, None), 1),
        ({"data": 2, "fsdp": 2, "model": 2}, P(("data", "fsdp"), None, None), 2),
    ]:
        mesh = sharding.create_mesh(shape)
        with sharding.activation_sharding(mesh, RULES):
            y = pin(jax.device_put(x, sharding.replicated(mesh)))
        assert y.sharding.is_equivalent_to(NamedSharding(mesh, spec), 3)
        assert {s.data.shape for s in y.addressable_shards} == {(rows, 4, 16)}


def test_fsdp_train_step_keeps_hidden_states_batch_split():
    """The lowered FSDP train step constrains every hidden state of the generator (H = 64) and the discriminator
    (H = 128) to the batch split, so each weight is all-gathered where it is used rather than the activations
    resharded to its split embed dimension."""
    mesh = sharding.create_mesh({"fsdp": -1})
    trainer = Pretrainer(setup.tiny_config(), mesh, SPECIAL)
    batch = {k: jax.ShapeDtypeStruct((8, 64), jnp.int32, sharding=sharding.batch_sharding(mesh)) for k in FIELDS}
    text = trainer.train_step.lower(trainer.abstract_state(), batch).as_text()
    hidden = re.findall(r"sdy\.sharding_constraint \S+ <@mesh, (\[[^>]*\])> : tensor<8x64x(\d+)xf32>", text)
    assert {width for _, width in hidden} == {"64", "128"}
    assert {spec for spec, _ in hidden} == {'[{"fsdp"}, {}, {}]'}


def test_batch_checks_and_placement(monkeypatch):
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "model": 2})
    sharding.check_batch_size(8, mesh, grad_accum_steps=2)
    with pytest.raises(ValueError, match=r"config\.batch_size=6 is not divisible by the data x fsdp"):
        sharding.check_batch_size(6, mesh)
    with pytest.raises(ValueError, match=r"config\.grad_accum_steps"):
        sharding.check_batch_size(8, mesh, grad_accum_steps=4)
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="process count 3"):
        sharding.check_batch_size(8, mesh)
    monkeypatch.undo()
    batch = sharding.shard_batch({"input_ids": np.arange(8 * 4).reshape(8, 4)}, mesh)["input_ids"]
    assert batch.shape == (8, 4) and batch.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in batch.addressable_shards} == {(2, 4)}


def losses_and_params(mesh, config, batches):
    trainer = Pretrainer(config, mesh, SPECIAL)
    state = trainer.init(jax.random.PRNGKey(config.seed))
    losses = []
    for batch in batches:
        state, metrics = trainer.train_step(state, sharding.shard_batch(batch, mesh))
        losses.append(float(metrics["loss"].mean()))
    return np.array(losses), jax.device_get(state.params)


@pytest.mark.slow
@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_2x2x2_mesh_matches_one_device(grad_accum_steps):
    """data=2 x fsdp=2 x model=2 gives the one-device losses to 1e-5 relative over 3 steps (GSPMD changes only
    the order of the sums); with gradient accumulation over 2 micro-batches too. Sampler: Gumbel-max (see
    `SAMPLER_FOR_EQUALITY`)."""
    config = setup.tiny_config(grad_accum_steps=grad_accum_steps)
    it = loader.make_iterator(
        setup.demo_data_dir(), "train", global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    batches = [next(it) for _ in range(3)]
    one, one_params = losses_and_params(sharding.create_mesh({}, jax.devices()[:1]), config, batches)
    many, many_params = losses_and_params(sharding.create_mesh({"data": 2, "fsdp": 2, "model": 2}), config, batches)
    np.testing.assert_allclose(many, one, rtol=1e-5)
    assert one[-1] < one[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), many_params, one_params)
