"""Stacked seeds: seed s of a vmap-ed run is the single run with seed s."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import common
from nas_jax import seeds
from nas_jax import settings
from nas_jax import steps

from conftest import TOY_VOCAB

VOCAB = TOY_VOCAB
SEEDS = (0, 1, 5)


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
  setup = settings.make_setup(config, VOCAB)
  ctrl = setup.reinforce.steps_per_epoch
  counts = dict(epochs=2, shared=3, ctrl=ctrl)
  states, logs = _run(seeds.init_states(setup, SEEDS),
                      seeds.shared_steps, seeds.controller_steps, toy_data,
                      setup, **counts)
  assert seeds.num_seeds(states) == len(SEEDS)
  for i, seed in enumerate(SEEDS):
    single, single_logs = _run(
        steps.init_state(setup, seed),
        steps.shared_step, steps.controller_step, toy_data, setup, **counts)
    mine = seeds.unstack(states, i)
    # Adam moves an element by up to ~lr per step whatever the size of its
    # gradient, and the first REINFORCE step's advantages sum to 0 up to
    # rounding: a gradient of rounding size can move a controller element by
    # lr in either direction. The controller gets that bound; everything
    # else float tolerance.
    adam_bound = 2 * setup.reinforce.lr * counts["epochs"] * ctrl
    for name in steps.TrainState._fields:
      atol = adam_bound if name in ("ctrl", "ctrl_opt") else 1e-5
      for a, b in zip(_leaves(getattr(mine, name)),
                      _leaves(getattr(single, name))):
        if np.issubdtype(a.dtype, np.integer):
          np.testing.assert_array_equal(a, b)
        else:
          np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol)
    assert len(logs) == len(single_logs)
    for (kind, m), (kind1, m1) in zip(logs, single_logs):
      assert kind == kind1
      np.testing.assert_array_equal(m["cells"][i], m1["cells"])
      # A controller loss reads the controller, equal to the bound above;
      # at a phase's first step (reset_each_phase) the advantages are the
      # rewards minus their own mean, so the loss is a small difference of
      # rewards that batching changes by rounding: an absolute tolerance.
      if kind == "ctrl":
        np.testing.assert_allclose(m["loss"][i], m1["loss"], rtol=1e-3,
                                   atol=1e-5)
      else:
        np.testing.assert_allclose(m["loss"][i], m1["loss"], rtol=1e-4,
                                   atol=1e-6)
  # Different seeds did differ.
  assert not np.array_equal(_leaves(seeds.unstack(states, 0))[0],
                            _leaves(seeds.unstack(states, 1))[0])


def test_stacked_steps_compile_once(toy_data):
  config = experiments.get_config("smoke")[1]
  setup = settings.make_setup(config, VOCAB)
  states = seeds.init_states(setup, SEEDS)
  before = seeds.shared_steps._cache_size()  # pylint: disable=protected-access
  for _ in range(3):
    states, _ = seeds.shared_steps(states, toy_data, setup=setup)
  assert seeds.shared_steps._cache_size() - before <= 1  # pylint: disable=protected-access


def test_init_states_checks_seeds():
  config = experiments.get_config("smoke")[1]
  setup = settings.make_setup(config, VOCAB)
  with pytest.raises(ValueError, match="distinct"):
    seeds.init_states(setup, [1, 1])
  with pytest.raises(ValueError, match="non-empty"):
    seeds.init_states(setup, [])
