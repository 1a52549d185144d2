"""Tests for nas_jax.checkpointing: config binding and checkpoints."""

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import experiments
from nas_jax import files
from nas_jax import rundir
from nas_jax import settings


class _State(NamedTuple):
  """A small stand-in for TrainState with the counters ``tick`` reads."""
  params: Any
  key: jax.Array
  epoch: jax.Array
  shared_step: jax.Array
  ctrl_step: jax.Array


def _config(**train):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.train = ml_collections.ConfigDict(
      {"lr": 20.0, "epochs": 10, "optimizer": "sgd"})
  config.train.update(train)
  return config


def _state(seed=0, epoch=0, shared_step=0, ctrl_step=0):
  rng = np.random.default_rng(seed)
  return _State(
      params={"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
              "b": {"bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
              "count": jnp.int32(seed)},
      key=jax.random.key(seed),
      epoch=jnp.int32(epoch),
      shared_step=jnp.int32(shared_step),
      ctrl_step=jnp.int32(ctrl_step))


def _checkpoint_steps(workdir):
  path = os.path.join(workdir, files.CHECKPOINT_DIR)
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


# -- flatten / config_differences --------------------------------------------


def test_flatten_joins_nested_keys_with_dots():
  """Nested dicts flatten to dotted keys; lists and scalars stay values."""
  tree = {"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}
  assert rundir.flatten(tree) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}


def test_flatten_of_empty_dict_is_empty():
  """An empty (sub)tree contributes no keys."""
  assert rundir.flatten({}) == {}
  assert rundir.flatten({"a": {}, "b": 2}) == {"b": 2}


def test_config_differences_lists_changed_added_and_removed_keys():
  """Every differing key appears once, sorted, as 'key: old -> new'."""
  old = {"train": {"lr": 20.0, "epochs": 10}, "gone": 1, "same": "x"}
  new = {"train": {"lr": 1.0, "epochs": 10, "bptt": 35}, "same": "x"}
  assert rundir.config_differences(old, new) == [
      "gone: 1 -> (absent)",
      "train.bptt: (absent) -> 35",
      "train.lr: 20.0 -> 1.0",
  ]


def test_config_differences_of_equal_configs_is_empty():
  """Identical nested configs have no differences."""
  config = _config().to_dict()
  assert rundir.config_differences(config, _config().to_dict()) == []


def test_config_differences_quotes_strings():
  """String values are shown as JSON, so 'sgd' and '"sgd"' are told apart."""
  diffs = rundir.config_differences({"o": "sgd"}, {"o": "adam"})
  assert diffs == ['o: "sgd" -> "adam"']


# -- bind_config --------------------------------------------------------------


def test_bind_config_new_directory_writes_config_json(tmp_path):
  """A new workdir is created with config.json holding the config."""
  workdir = str(tmp_path / "run")
  assert rundir.bind_config(workdir, _config()) is True
  with open(os.path.join(workdir, files.CONFIG_FILE)) as f:
    assert json.load(f) == _config().to_dict()
  assert not os.path.exists(
      os.path.join(workdir, files.CONFIG_FILE + ".tmp"))


def test_bind_config_same_config_returns_false(tmp_path):
  """Binding the same config again is accepted and leaves the file as is."""
  workdir = str(tmp_path / "run")
  rundir.bind_config(workdir, _config())
  path = os.path.join(workdir, files.CONFIG_FILE)
  with open(path) as f:
    before = f.read()
  assert rundir.bind_config(workdir, _config()) is False
  with open(path) as f:
    assert f.read() == before


def test_bind_config_different_config_raises_with_key_and_values(tmp_path):
  """Another config is refused, naming the key with old and new values."""
  workdir = str(tmp_path / "run")
  rundir.bind_config(workdir, _config())
  with pytest.raises(rundir.WorkdirMismatch) as info:
    rundir.bind_config(workdir, _config(lr=1.0, bptt=35))
  message = str(info.value)
  assert "train.lr: 20.0 -> 1.0" in message
  assert "train.bptt: (absent) -> 35" in message
  assert "train.epochs" not in message
  assert workdir in message
  # The refused config did not overwrite the stored one.
  with open(os.path.join(workdir, files.CONFIG_FILE)) as f:
    assert json.load(f)["train"]["lr"] == 20.0


def test_bind_config_ignores_the_mesh_and_defaults_added_keys(tmp_path):
  """Where a run computes is not part of it: another mesh resumes. A key
  added later (model.compute_dtype) binds a directory written without it
  when the value is the one such runs used, and not otherwise."""
  workdir = str(tmp_path / "run")
  config = _config()
  config.mesh = ml_collections.ConfigDict({"seeds": 0, "data": 4})
  rundir.bind_config(workdir, config)
  config.mesh.data = 1
  assert rundir.bind_config(workdir, config) is False
  config.model = ml_collections.ConfigDict({"compute_dtype": "float32"})
  assert rundir.bind_config(workdir, config) is False
  config.model.compute_dtype = "bfloat16"
  with pytest.raises(rundir.WorkdirMismatch,
                     match='model.compute_dtype: "float32" -> "bfloat16"'):
    rundir.bind_config(workdir, config)


def test_a_run_directory_from_before_the_added_keys_binds_and_loads(
    tmp_path):
  """A config.json written without the ADDED_KEYS binds the current config
  at their old values, and load_config fills them in for make_setup."""
  config = experiments.get_config("enas_probe")[1]
  old = config.to_dict()
  for dotted in rundir.ADDED_KEYS:
    section, key = dotted.split(".")
    del old[section][key]
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / files.CONFIG_FILE).write_text(json.dumps(old))
  assert rundir.bind_config(str(workdir), config) is False
  loaded = rundir.load_config(str(workdir))
  for dotted, value in rundir.ADDED_KEYS.items():
    section, key = dotted.split(".")
    assert loaded[section][key] == value == config[section][key], dotted
  setup = settings.make_setup(loaded, 10_000)
  assert setup.reinforce.entropy_bonus == "cell"
  config.controller.entropy_bonus = "step"
  with pytest.raises(rundir.WorkdirMismatch,
                     match='controller.entropy_bonus: "cell" -> "step"'):
    rundir.bind_config(str(workdir), config)


def test_workdir_mismatch_is_a_value_error():
  """Callers catching ValueError also catch a mismatch."""
  assert issubclass(rundir.WorkdirMismatch, ValueError)


# -- RunDirectory -------------------------------------------------------------


def test_run_directory_restore_of_empty_directory_is_none(tmp_path):
  """A fresh run directory has no checkpoint to restore."""
  rd = rundir.RunDirectory(str(tmp_path / "run"), _config())
  try:
    assert rd.is_new
    assert rd.restore(_state()) is None
    assert rd.latest_description().startswith("none")
  finally:
    rd.close()


def test_run_directory_save_restore_round_trip(tmp_path):
  """Arrays, int32 counters, the typed key and meta survive save + restore."""
  workdir = str(tmp_path / "run")
  saved = _state(seed=7, epoch=1, shared_step=40, ctrl_step=3)
  meta = {"offsets": {"metrics.jsonl": 123}, "finished": False,
          "best": {"tokens": [0, 1, 2], "valid_ppl": 99.5}}
  rd = rundir.RunDirectory(workdir, _config())
  try:
    rd.save(saved, meta)
  finally:
    rd.close()

  rd = rundir.RunDirectory(workdir, _config())
  try:
    assert not rd.is_new
    restored = rd.restore(_state(seed=0))  # Template with other values.
  finally:
    rd.close()
  assert restored is not None
  state, restored_meta = restored
  assert restored_meta == meta
  assert isinstance(state, _State)
  np.testing.assert_array_equal(state.params["w"], saved.params["w"])
  np.testing.assert_array_equal(state.params["b"]["bias"],
                                saved.params["b"]["bias"])
  assert state.params["count"] == 7
  for name in ("epoch", "shared_step", "ctrl_step"):
    assert getattr(state, name).dtype == jnp.int32
    assert getattr(state, name) == getattr(saved, name)
  assert jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key)
  assert jax.random.key_impl(state.key) == jax.random.key_impl(saved.key)
  np.testing.assert_array_equal(jax.random.key_data(state.key),
                                jax.random.key_data(saved.key))
  # The restored key draws the same numbers as the saved one.
  np.testing.assert_array_equal(jax.random.uniform(state.key, (3,)),
                                jax.random.uniform(saved.key, (3,)))


def test_run_directory_restores_latest_checkpoint(tmp_path):
  """With several checkpoints, restore returns the one of the largest tick."""
  rd = rundir.RunDirectory(str(tmp_path / "run"), _config())
  try:
    rd.save(_state(seed=1, shared_step=2), {"i": 1})
    rd.save(_state(seed=2, shared_step=4), {"i": 2})
    state, meta = rd.restore(_state())
  finally:
    rd.close()
  assert meta == {"i": 2}
  assert int(state.shared_step) == 4
  assert int(state.params["count"]) == 2


def test_run_directory_keeps_at_most_max_to_keep(tmp_path):
  """Older checkpoints are deleted beyond max_to_keep=2."""
  workdir = str(tmp_path / "run")
  rd = rundir.RunDirectory(workdir, _config(), max_to_keep=2)
  try:
    for step in (1, 2, 3, 4):
      rd.save(_state(shared_step=step), {"step": step})
      assert len(_checkpoint_steps(workdir)) <= 2
  finally:
    rd.close()
  assert _checkpoint_steps(workdir) == [3, 4]


def test_run_directory_tick_sums_counters():
  """The checkpoint number is epoch + shared_step + ctrl_step."""
  state = _state(epoch=2, shared_step=80, ctrl_step=600)
  assert rundir.RunDirectory.tick(state) == 682


def test_latest_description_names_epoch_and_steps(tmp_path):
  """After a save or restore, the description names path, epoch and steps."""
  workdir = str(tmp_path / "run")
  rd = rundir.RunDirectory(workdir, _config())
  try:
    rd.save(_state(epoch=2, shared_step=80, ctrl_step=5), {})
    description = rd.latest_description()
  finally:
    rd.close()
  assert "2 epochs done" in description
  assert "shared step 80" in description
  assert "controller step 5" in description
  assert os.path.join(workdir, "checkpoints", "87") in description

  rd = rundir.RunDirectory(workdir, _config())
  try:
    assert rd.latest_description().startswith("none")
    rd.restore(_state())
    assert "shared step 80" in rd.latest_description()
  finally:
    rd.close()


def test_run_directory_refuses_another_config(tmp_path):
  """Opening a run directory with another config raises WorkdirMismatch."""
  workdir = str(tmp_path / "run")
  rundir.RunDirectory(workdir, _config()).close()
  with pytest.raises(rundir.WorkdirMismatch, match="train.epochs"):
    rundir.RunDirectory(workdir, _config(epochs=11))
