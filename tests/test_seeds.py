"""Stacked seeds: seed s of a vmap-ed run is the single run with seed s."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import common
from nas_jax import seeds
from nas_jax import train

VOCAB = 50
SEEDS = (0, 1, 5)


@pytest.fixture(scope="module")
def toy_data():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, VOCAB, (30, 8), dtype=np.int32))


def _leaves(state):
  """Comparable leaves: PRNG keys as their raw data."""
  return [np.asarray(jax.random.key_data(x)
                     if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
          for x in jax.tree.leaves(state)]


def _run(state, shared_step, controller_step, data, setup, *, epochs, shared,
         ctrl):
  """``epochs`` of ``shared`` then ``ctrl`` steps, as the host loop does."""
  logs = []
  for _ in range(epochs):
    for _ in range(shared):
      state, m = shared_step(state, data, setup=setup)
      logs.append(("shared", jax.device_get(m)))
    for _ in range(ctrl):
      state, m = controller_step(state, data, setup=setup)
      logs.append(("ctrl", jax.device_get(m)))
    state = seeds.next_epoch(state)
  return state, logs


@pytest.mark.parametrize("algorithm", ["enas", "random_ws"])
def test_each_stacked_seed_equals_its_single_run(toy_data, algorithm):
  """Two epochs of shared and controller steps: same cells exactly, same
  parameters, optimiser states, baselines and metrics to float tolerance."""
  config = common.apply_overrides(experiments.get_config("smoke")[1],
                                  {"search.algorithm": algorithm})
  setup = train.make_setup(config, VOCAB)
  ctrl = train.ctrl_steps_per_epoch(config)
  steps = dict(epochs=2, shared=3, ctrl=ctrl)
  states, logs = _run(seeds.init_states(config, setup, SEEDS),
                      seeds.shared_steps, seeds.controller_steps, toy_data,
                      setup, **steps)
  assert seeds.num_seeds(states) == len(SEEDS)
  for i, seed in enumerate(SEEDS):
    single, single_logs = _run(
        train.init_state(seeds.seed_config(config, seed), setup),
        train.shared_step, train.controller_step, toy_data, setup, **steps)
    mine = seeds.unstack(states, i)
    for a, b in zip(_leaves(mine), _leaves(single)):
      if np.issubdtype(a.dtype, np.integer):
        np.testing.assert_array_equal(a, b)
      else:
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert len(logs) == len(single_logs)
    for (kind, m), (kind1, m1) in zip(logs, single_logs):
      assert kind == kind1
      np.testing.assert_array_equal(m["cells"][i], m1["cells"])
      np.testing.assert_allclose(m["loss"][i], m1["loss"], rtol=1e-4,
                                 atol=1e-6)
  # Different seeds did differ.
  assert not np.array_equal(_leaves(seeds.unstack(states, 0))[0],
                            _leaves(seeds.unstack(states, 1))[0])


def test_stacked_steps_compile_once(toy_data):
  config = experiments.get_config("smoke")[1]
  setup = train.make_setup(config, VOCAB)
  states = seeds.init_states(config, setup, SEEDS)
  before = seeds.shared_steps._cache_size()  # pylint: disable=protected-access
  for _ in range(3):
    states, _ = seeds.shared_steps(states, toy_data, setup=setup)
  assert seeds.shared_steps._cache_size() - before <= 1  # pylint: disable=protected-access


def test_init_states_checks_seeds():
  config = experiments.get_config("smoke")[1]
  setup = train.make_setup(config, VOCAB)
  with pytest.raises(ValueError, match="distinct"):
    seeds.init_states(config, setup, [1, 1])
  with pytest.raises(ValueError, match="non-empty"):
    seeds.init_states(config, setup, [])
