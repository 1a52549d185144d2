"""Tests for nas_jax.settings: the config checked into a Setup."""

import pytest

import experiments
from nas_jax import settings

PTB_VOCAB = 10000
SEARCH_NAMES = ("enas_probe", "random_ws", "smoke")
SPECS = [n if p is None else f"{n}:{p}"
         for n in SEARCH_NAMES for p in (None, "paper", "smoke")]


@pytest.mark.parametrize("spec", SPECS)
def test_make_setup_accepts_every_registered_config(spec):
  """Every registered config passes make_setup's checks."""
  config = experiments.get_config(spec)[1]
  setup = settings.make_setup(config, vocab_size=PTB_VOCAB)
  assert setup.search.algorithm == config.search.algorithm
  assert setup.model.hidden_size == config.model.hidden_size
  assert setup.derive.num_cells == config.derive.num_cells


def _set(config, dotted, value):
  *path, last = dotted.split(".")
  for part in path:
    config = config[part]
  config[last] = value


@pytest.mark.parametrize("overrides, key", [
    ({"search.algorithm": "darts"}, "search.algorithm"),
    ({"checkpoint_every": 15, "log_every": 10}, "checkpoint_every"),
    ({"derive.num_cells": 10, "derive.chunk_size": 4}, "derive.num_cells"),
    ({"train.epochs": 0}, "train.epochs"),
    ({"search.random_sampler": "grid"}, "search.random_sampler"),
    ({"train.optimizer": "rmsprop"}, "train.optimizer"),
    ({"controller.steps_per_epoch": -1}, "controller.steps_per_epoch"),
])
def test_make_setup_rejects_bad_values_naming_the_key(overrides, key):
  """An invalid value raises ConfigError whose message names the key."""
  config = experiments.get_config("smoke")[1]
  for dotted, value in overrides.items():
    _set(config, dotted, value)
  with pytest.raises(settings.ConfigError) as info:
    settings.make_setup(config, vocab_size=PTB_VOCAB)
  assert key in str(info.value)


def test_config_error_is_a_value_error():
  """Callers catching ValueError also catch a config error."""
  assert issubclass(settings.ConfigError, ValueError)
