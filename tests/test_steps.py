"""Tests for nas_jax.steps: the jitted shared and controller steps and the
shared learning-rate schedule, on toy data at the smoke sizes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import common
from nas_jax import controller
from nas_jax import data
from nas_jax import evaluation
from nas_jax import seeds
from nas_jax import settings
from nas_jax import steps
from nas_jax import streams

from conftest import TOY_VOCAB

VOCAB = TOY_VOCAB


def smoke_config(**overrides):
  return common.apply_overrides(experiments.get_config("smoke")[1], overrides)


@pytest.fixture(scope="module")
def setup():
  return settings.make_setup(smoke_config(), VOCAB)


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def test_shared_step_compiles_once_and_advances(setup, toy_data):
  """Many steps (new cells each) share one compilation; counters advance."""
  config = smoke_config()
  state = steps.init_state(setup, config.seed)
  before = steps.shared_step._cache_size()
  cells = set()
  for _ in range(12):
    state, m = steps.shared_step(state, toy_data, setup=setup)
    cells.add(tuple(np.asarray(m["cells"][0])))
    assert np.isfinite(float(m["loss"]))
  assert steps.shared_step._cache_size() <= before + 1
  assert len(cells) >= 5
  assert int(state.shared_step) == 12
  assert int(state.ctrl_step) == 0


def test_train_pointer_wraps_and_resets_the_carry(setup, toy_data):
  """The window advances by bptt; a window that no longer fits wraps to 0."""
  config = smoke_config()
  state = steps.init_state(setup, config.seed)
  bptt = config.train.bptt
  state, _ = steps.shared_step(state, toy_data, setup=setup)
  assert int(state.train_pos) == bptt
  assert float(jnp.abs(state.carry).max()) > 0
  # 30 rows, bptt 8: windows start at 0, 8, 16; 24 + 9 > 30 wraps.
  state, _ = steps.shared_step(state, toy_data, setup=setup)
  state, _ = steps.shared_step(state, toy_data, setup=setup)
  assert int(state.train_pos) == 0
  # A state saved past the end restarts at 0 with a zero carry.
  late = state._replace(train_pos=jnp.int32(29))
  nxt, _ = steps.shared_step(late, toy_data, setup=setup)
  assert int(nxt.train_pos) == bptt


def test_controller_step_reward_and_baseline(setup, toy_data):
  """Reward = c / ppl + w * entropy; baseline starts at the first mean reward."""
  config = smoke_config()
  state = steps.init_state(setup, config.seed)
  # The steps donate their input state: keep copies of what is compared.
  shared, ctrl = _copy(state.shared), _copy(state.ctrl)
  state1, m1 = steps.controller_step(state, toy_data, setup=setup)
  inputs, targets = toy_data[:8], toy_data[1:9]
  losses = evaluation.cell_losses(shared, jnp.asarray(m1["cells"]), inputs,
                             targets, config=setup.model)
  scored = controller.score(ctrl, jnp.asarray(m1["cells"]),
                            config=setup.ctrl)
  entropy = np.sum(np.asarray(scored.entropies), axis=-1)
  expected = setup.reinforce.reward_c / np.exp(losses) + setup.reinforce.entropy_weight * entropy
  np.testing.assert_allclose(m1["cell_rewards"], expected, rtol=1e-5)
  np.testing.assert_allclose(m1["baseline"], np.mean(expected), rtol=1e-6)
  state2, m2 = steps.controller_step(state1, toy_data, setup=setup)
  d = setup.reinforce.baseline_decay
  np.testing.assert_allclose(
      m2["baseline"], d * m1["baseline"] + (1 - d) * m2["reward"], rtol=1e-5)
  assert int(state2.valid_pos) == 2 * config.train.bptt
  # The shared weights are not touched by a controller step.
  chex.assert_trees_all_equal(state2.shared, shared)


@pytest.mark.parametrize("reset", [True, False])
def test_baseline_and_valid_pointer_restart_each_phase(toy_data, reset):
  """reset_each_phase (the authors'): a controller phase's first step sets
  the baseline to its own mean reward and reads the first validation
  window; without it both carry over from the previous phase."""
  config = smoke_config(**{"controller.reset_each_phase": reset})
  local = settings.make_setup(config, VOCAB)
  per_phase, bptt = config.controller.steps_per_epoch, config.train.bptt
  rows = toy_data.shape[0]

  def position_after(num_steps):  # The pointer after num_steps windows.
    pos = 0
    for _ in range(num_steps):
      pos = int(data.next_position(pos, bptt, rows))
    return pos

  state = steps.init_state(local, config.seed)
  for _ in range(per_phase):  # Epoch 0's phase.
    state, m = steps.controller_step(state, toy_data, setup=local)
  before = float(m["baseline"])
  assert int(state.valid_pos) == position_after(per_phase) != 0
  state, m = steps.controller_step(state, toy_data, setup=local)
  d = local.reinforce.baseline_decay
  if reset:
    np.testing.assert_allclose(m["baseline"], m["reward"], rtol=1e-6)
    assert int(state.valid_pos) == position_after(1)  # It read window 0.
  else:
    np.testing.assert_allclose(m["baseline"],
                               d * before + (1 - d) * m["reward"], rtol=1e-5)
    assert int(state.valid_pos) == position_after(per_phase + 1)


def test_search_derive_samples_in_the_configured_mode(toy_data):
  """derive.mode "train" (the authors' search) applies the tanh constant;
  "derive" only the temperature: the same key gives each mode's cells."""
  got = {}
  for mode in ("train", "derive"):
    config = smoke_config(**{"derive.mode": mode})
    local = settings.make_setup(config, VOCAB)
    state = steps.init_state(local, config.seed)
    # Sharp logits, so that the two modes' distributions differ clearly.
    state = state._replace(ctrl={**state.ctrl,
                                 "head_w": 40.0 * state.ctrl["head_w"]})
    cells, _ = steps.derive_cells(state, toy_data, setup=local)
    key = jax.random.fold_in(jax.random.fold_in(state.key, streams.DERIVE),
                             state.epoch)
    want = controller.sample(state.ctrl, key, local.derive.num_cells,
                             config=local.ctrl, mode=mode).tokens
    np.testing.assert_array_equal(cells, want)
    got[mode] = np.asarray(cells)
  assert not np.array_equal(got["train"], got["derive"])
  with pytest.raises(settings.ConfigError, match="derive.mode"):
    settings.make_setup(smoke_config(**{"derive.mode": "greedy"}), VOCAB)


def test_controller_step_follows_the_advantage(setup, toy_data):
  """The update raises log p of cells with positive advantage (REINFORCE)."""
  config = smoke_config(**{"controller.lr": 0.05})
  local = settings.make_setup(config, VOCAB)
  state = steps.init_state(local, config.seed)
  # Step 1 only sets the baseline (advantages sum to ~0); step 2 has signal.
  state, _ = steps.controller_step(state, toy_data, setup=local)
  before_ctrl = _copy(state.ctrl)
  state, m = steps.controller_step(state, toy_data, setup=local)
  adv = np.asarray(m["cell_rewards"]) - float(m["baseline"])
  cells = jnp.asarray(m["cells"])
  lp = lambda p: np.sum(np.asarray(controller.score(
      p, cells, config=local.ctrl).log_probs), axis=-1)
  change = lp(state.ctrl) - lp(before_ctrl)
  assert np.sum(adv * change) > 0


def test_per_step_entropy_bonus_is_the_authors_reinforce(toy_data):
  """entropy_bonus "step" (the authors', carpedm20's entropy_mode "reward"):
  decision t's reward is c / ppl + w * H_t, with its own EMA baseline, and
  the loss is -mean(sum_t log p_t * (r_t - b_t)); "cell" (the default)
  keeps one reward c / ppl + w * sum_t H_t and one baseline."""
  # A large entropy weight, so that the per-step bonuses matter.
  config = smoke_config(**{"controller.entropy_bonus": "step",
                           "controller.entropy_weight": 0.5})
  local = settings.make_setup(config, VOCAB)
  r = local.reinforce
  state = steps.init_state(local, config.seed)
  assert state.baseline.shape == (local.ctrl.num_steps,)
  baseline = None
  for _ in range(2):
    ctrl, shared = _copy(state.ctrl), _copy(state.shared)
    inputs, targets = data.window(toy_data, state.valid_pos, local.shared.bptt)
    state, m = steps.controller_step(state, toy_data, setup=local)
    cells = jnp.asarray(m["cells"])
    ppl = np.exp(np.asarray(evaluation.cell_losses(
        shared, cells, inputs, targets, config=local.model)))
    scored = controller.score(ctrl, cells, config=local.ctrl)
    reward = (r.reward_c / ppl[:, None]
              + r.entropy_weight * np.asarray(scored.entropies))
    baseline = (reward.mean(0) if baseline is None else
                r.baseline_decay * baseline
                + (1 - r.baseline_decay) * reward.mean(0))
    np.testing.assert_allclose(state.baseline, baseline, rtol=1e-5)
    np.testing.assert_allclose(m["cell_rewards"], reward.mean(-1), rtol=1e-5)
    np.testing.assert_allclose(m["baseline"], baseline.mean(), rtol=1e-5)
    loss = -np.mean(np.sum(np.asarray(scored.log_probs)
                           * (reward - baseline), axis=-1))
    # Advantages are small differences of rewards: float32 rounding.
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-4, atol=3e-5)
  # From the same state, the default's one reward per cell gives another
  # loss (and update).
  losses = {}
  for bonus in ("cell", "step"):
    other = settings.make_setup(common.apply_overrides(
        config, {"controller.entropy_bonus": bonus}), VOCAB)
    state = steps.init_state(other, config.seed)
    assert state.baseline.shape == ((local.ctrl.num_steps,)
                                    if bonus == "step" else ())
    _, m = steps.controller_step(state, toy_data, setup=other)
    losses[bonus] = float(m["loss"])
  assert abs(losses["cell"] - losses["step"]) > 1e-3 * abs(losses["cell"])
  with pytest.raises(settings.ConfigError, match="controller.entropy_bonus"):
    settings.make_setup(smoke_config(**{"controller.entropy_bonus": "sum"}),
                        VOCAB)


def test_per_step_baseline_under_stacked_seeds(toy_data):
  """The per-decision baseline is one more leaf of the state: stacked seeds
  advance it as the single runs do."""
  config = smoke_config(**{"controller.entropy_bonus": "step"})
  local = settings.make_setup(config, VOCAB)
  singles = []
  for seed in (0, 3):
    state = steps.init_state(local, seed)
    for _ in range(2):
      state, _ = steps.controller_step(state, toy_data, setup=local)
    singles.append(state.baseline)
  states = seeds.init_states(local, (0, 3))
  for _ in range(2):
    states, _ = seeds.controller_steps(states, toy_data, setup=local)
  np.testing.assert_allclose(states.baseline, np.stack(singles), rtol=1e-5)


def test_shared_learning_rate_schedule():
  """SGD: x0.96 per epoch from epoch 15 (0-based); Adam: constant."""
  config = smoke_config(**{"train.steps_per_epoch": 10})
  lr = steps.shared_learning_rate(settings.make_setup(config, VOCAB))
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 139, 149, 150, 160, 175)],
      [20.0, 20.0, 20.0, 20.0 * 0.96, 20.0 * 0.96**2, 20.0 * 0.96**3],
      rtol=1e-6)
  adam = smoke_config(**{"train.optimizer": "adam"})
  lr = steps.shared_learning_rate(settings.make_setup(adam, VOCAB))
  np.testing.assert_allclose(float(lr(10_000)), 3.5e-4, rtol=1e-6)


def _authors_epoch_lrs(epochs, decay_after=15, lr=20.0, decay=0.96):
  """The shared lr of each epoch in the authors' loop (carpedm20's
  ``Trainer.train``): the optimiser starts at ``shared_lr`` of epoch 0 and,
  after epoch ``e >= shared_decay_after`` (0-based) is done, is set to
  ``lr * decay ** max(e - shared_decay_after + 1, 0)``."""
  current, lrs = lr * decay ** max(0 - decay_after + 1, 0), []
  for epoch in range(epochs):
    lrs.append(current)
    if epoch >= decay_after:
      current = lr * decay ** max(epoch - decay_after + 1, 0)
  return np.asarray(lrs)


def test_lr_decay_start_epoch_16_is_the_authors_timing():
  """Their x0.96 first applies in epoch 17 (1-based), one epoch after ours
  at the default lr_decay_start_epoch 15; 16 reproduces theirs exactly."""
  per_epoch = 10
  theirs = _authors_epoch_lrs(40)
  for start, want in ((15, np.append(theirs[1:], theirs[-1] * 0.96)),
                      (16, theirs)):
    config = smoke_config(**{"train.steps_per_epoch": per_epoch,
                             "train.lr_decay_start_epoch": start})
    lr = steps.shared_learning_rate(settings.make_setup(config, VOCAB))
    got = [float(lr(e * per_epoch + k)) for e in range(40) for k in (0, 9)]
    np.testing.assert_allclose(got, np.repeat(want, 2), rtol=1e-6)


def _leaves(state):
  return [np.asarray(jax.random.key_data(x)
                     if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
          for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("name", ["shared_step", "controller_step"])
def test_run_window_equals_the_steps_one_by_one(setup, toy_data, name):
  """A fused window: the same cells, metrics and state as single steps."""
  step = getattr(steps, name)
  single = steps.init_state(setup, 3)
  logs = []
  for _ in range(5):
    single, m = step(single, toy_data, setup=setup)
    logs.append(jax.device_get(m))
  fused, stacked = steps.run_window(steps.init_state(setup, 3), toy_data,
                                    step=step, length=5, setup=setup)
  stacked = jax.device_get(stacked)
  for k, m in enumerate(logs):
    np.testing.assert_array_equal(stacked["cells"][k], m["cells"])
    np.testing.assert_allclose(stacked["loss"][k], m["loss"], rtol=1e-5,
                               atol=1e-6)
  for a, b in zip(_leaves(fused), _leaves(single)):
    if np.issubdtype(a.dtype, np.integer):
      np.testing.assert_array_equal(a, b)
    else:
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_run_window_compiles_once_per_length(setup, toy_data):
  state = steps.init_state(setup, 0)
  state, _ = steps.run_window(state, toy_data, step=steps.shared_step,
                              length=3, setup=setup)
  before = steps.run_window._cache_size()  # pylint: disable=protected-access
  for _ in range(3):
    state, _ = steps.run_window(state, toy_data, step=steps.shared_step,
                                length=3, setup=setup)
  assert steps.run_window._cache_size() == before  # pylint: disable=protected-access
  state, m = steps.run_window(state, toy_data, step=steps.shared_step,
                              length=2, setup=setup)
  assert steps.run_window._cache_size() == before + 1  # pylint: disable=protected-access
  assert m["loss"].shape == (2,)
  assert int(state.shared_step) == 14


def test_one_cell_is_scored_unbatched_with_the_same_loss(setup, toy_data):
  """K = 1 skips vmap (lax.switch stays a branch): the same loss as one row
  of a batched call."""
  params = steps.init_state(setup, 0).shared
  cells = jnp.asarray([[2, 0, 1, 1, 3, 0, 0], [2, 0, 1, 1, 3, 0, 0]],
                      jnp.int32)
  inputs, targets = toy_data[:8], toy_data[1:9]
  one = evaluation.cell_losses(params, cells[:1], inputs, targets,
                               config=setup.model)
  two = evaluation.cell_losses(params, cells, inputs, targets,
                               config=setup.model)
  assert one.shape == (1,)
  np.testing.assert_allclose(one[0], two[0], rtol=1e-6)
