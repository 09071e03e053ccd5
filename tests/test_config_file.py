"""The config layer (`convbert.config_file`): loading a config file, dotted keys, overrides and flags."""

import ml_collections
import pytest

from convbert import config_file


def test_load_calls_get_config_with_the_argument():
    assert config_file.load("configs/pretrain.py:small").model.hidden_size == 256
    with pytest.raises(FileNotFoundError, match=r"config file 'configs/nope\.py' not found"):
        config_file.load("configs/nope.py:tiny")


def test_flatten_lookup_and_flags_round_trip():
    c = ml_collections.ConfigDict({"model": {"head_ratio": 2, "dropout": 0.1}, "name": "x"})
    flat = config_file.flatten(c)
    assert flat == {"model.head_ratio": 2, "model.dropout": 0.1, "name": "x"}
    assert config_file.flatten({"a": {"b": {"c": 1}}}) == {"a.b.c": 1}
    assert config_file.lookup(c, "model.head_ratio") == 2
    assert sorted(config_file.as_flags(flat)) == [
        "--config.model.dropout=0.1",
        "--config.model.head_ratio=2",
        "--config.name=x",
    ]


def test_apply_overrides_names_every_problem():
    c = ml_collections.ConfigDict({"model": {"head_ratio": 2}, "steps": 10})
    errors = config_file.apply_overrides(c, {"model.head_ratio": 4, "model.head_ratoi": 1, "model": 3}, "variant a")
    assert c.model.head_ratio == 4
    assert errors[0].startswith("variant a: config.model.head_ratoi is not a key of this config")
    assert "nearest valid key is config.model.head_ratio" in errors[0]
    assert errors[1] == "variant a: 'model' is a group; set its fields (model.FIELD)"
