"""Tests for nas_jax.policy_probe and controller.step_log_probs."""

# The KL helpers are tested directly.
# pylint: disable=protected-access

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import controller
from nas_jax import policy_probe
from nas_jax import search_space

# A larger init range than the default makes the policy clearly non-uniform.
CFG = controller.ControllerConfig(num_nodes=5, hidden_size=16, init_range=1.0)
NUM = 6


@pytest.fixture(scope="module")
def params():
  return controller.init(jax.random.key(0), CFG)


@pytest.fixture(scope="module")
def tokens():
  return search_space.sample_uniform(jax.random.key(1), CFG.num_nodes, NUM)


def _distance(positions, steps=CFG.num_steps):
  """``int[P, T]``: ``t - j`` of every entry of a ``[K, P, T]`` KL array."""
  return np.arange(steps)[None, :] - np.asarray(positions)[:, None]


def _reference_kl(log_p, log_q):
  """Plain float64 KL over the last axis, each side renormalised first."""
  log_p = np.asarray(log_p, np.float64)
  log_q = np.asarray(log_q, np.float64)
  log_p = log_p - np.log(np.sum(np.exp(log_p), -1, keepdims=True))
  log_q = log_q - np.log(np.sum(np.exp(log_q), -1, keepdims=True))
  return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


@pytest.mark.parametrize("mode", controller.MODES)
def test_step_log_probs_pick_score_log_probs(params, tokens, mode):
  """Indexed by the tokens, the full distributions give score's log-probs."""
  rollout = controller.score(params, tokens, config=CFG, mode=mode)
  log_p = controller.step_log_probs(params, rollout.h, config=CFG, mode=mode)
  chex.assert_shape(log_p, (NUM, CFG.num_steps, CFG.num_choices))
  picked = jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(picked, rollout.log_probs, rtol=1e-6, atol=1e-6)


def test_step_log_probs_normalised_over_valid_choices(params, tokens):
  """Rows sum to 1 over valid choices; invalid ones have probability 0."""
  h = controller.score(params, tokens, config=CFG, mode="derive").h
  log_p = np.asarray(controller.step_log_probs(params, h, config=CFG))
  valid = np.broadcast_to(np.asarray(controller.step_tables(CFG)[0]),
                          log_p.shape)
  assert np.all(np.isfinite(log_p))
  prob = np.exp(log_p)
  np.testing.assert_allclose(np.sum(np.where(valid, prob, 0.0), -1), 1.0,
                             atol=1e-6)
  assert np.all(prob[~valid] == 0.0)


def test_step_log_probs_rejects_bad_inputs(params):
  h = jnp.zeros((2, CFG.num_steps, CFG.hidden_size))
  with pytest.raises(ValueError, match="mode"):
    controller.step_log_probs(params, h, config=CFG, mode="greedy")
  with pytest.raises(ValueError, match="h must be"):
    controller.step_log_probs(params, h[:, 1:], config=CFG)


def test_changed_positions_skip_single_choice_parent():
  np.testing.assert_array_equal(policy_probe.changed_positions(5),
                                [0, 2, 3, 4, 5, 6, 7])


def test_changed_cells_differ_in_exactly_one_valid_position(tokens):
  changed, positions = policy_probe.changed_cells(tokens, jax.random.key(3))
  chex.assert_shape(changed, (NUM, len(positions), CFG.num_steps))
  changed, orig = np.asarray(changed), np.asarray(tokens)
  search_space.validate_tokens(changed)
  differs = changed != orig[:, None]
  expected = np.zeros(differs.shape[1:], bool)
  expected[np.arange(len(positions)), positions] = True
  np.testing.assert_array_equal(differs, np.broadcast_to(expected,
                                                         differs.shape))


def test_changed_cells_are_driven_only_by_the_key(tokens):
  a, _ = policy_probe.changed_cells(tokens, jax.random.key(3))
  b, _ = policy_probe.changed_cells(tokens, jax.random.key(3))
  c, _ = policy_probe.changed_cells(tokens, jax.random.key(4))
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_changed_cells_draw_every_other_choice():
  """Activation 0 becomes each of 1, 2, 3 about equally often, never 0."""
  cells = jnp.zeros((3000, CFG.num_steps), jnp.int32)
  changed, _ = policy_probe.changed_cells(cells, jax.random.key(5))
  counts = np.bincount(np.asarray(changed[:, 0, 0]), minlength=4)
  assert counts[0] == 0
  np.testing.assert_allclose(counts[1:] / 3000, 1 / 3, atol=0.04)


def test_conditioning_kl_nonnegative_and_nan_exactly_before(params, tokens):
  kl = np.asarray(policy_probe.conditioning_kl(
      params, tokens, jax.random.key(3), config=CFG))
  positions = policy_probe.changed_positions(CFG.num_nodes)
  chex.assert_shape(kl, (NUM, len(positions), CFG.num_steps))
  later = np.broadcast_to(_distance(positions) > 0, kl.shape)
  np.testing.assert_array_equal(np.isnan(kl), ~later)
  assert np.all(kl[later] >= 0.0)


def test_conditioning_kl_matches_a_direct_computation(params, tokens):
  """Against a float64 KL of separately scored cells; chunking changes
  nothing (5 does not divide the 36 changed cells)."""
  key = jax.random.key(3)
  kl = policy_probe.conditioning_kl(params, tokens, key, config=CFG, chunk=5)
  changed, positions = policy_probe.changed_cells(tokens, key)

  def log_probs(cells):
    h = controller.score(params, cells, config=CFG, mode="derive").h
    return controller.step_log_probs(params, h, config=CFG)

  num_pos = len(positions)
  log_q = log_probs(changed.reshape(-1, CFG.num_steps)).reshape(
      NUM, num_pos, CFG.num_steps, -1)
  ref = _reference_kl(log_probs(tokens)[:, None], log_q)
  later = np.broadcast_to(_distance(positions) > 0, ref.shape)
  np.testing.assert_allclose(np.asarray(kl)[later], ref[later], rtol=1e-3,
                             atol=1e-9)
  whole = policy_probe.conditioning_kl(params, tokens, key, config=CFG)
  # Other batch shapes round the carries differently (~1e-7 absolute in the
  # log-probabilities).
  np.testing.assert_allclose(kl, whole, rtol=1e-4, atol=1e-12)


def test_kl_of_identical_inputs_is_zero(params, tokens):
  """An unchanged "change" gives KL 0 at every later step."""
  positions = policy_probe.changed_positions(CFG.num_nodes)
  same = jnp.repeat(tokens[:, None], len(positions), axis=1)
  kl = np.asarray(policy_probe._changed_kl(
      params, tokens, same, positions, config=CFG, mode="derive", chunk=1024))
  later = np.broadcast_to(_distance(positions) > 0, kl.shape)
  np.testing.assert_allclose(kl[later], 0.0, atol=1e-6)
  log_p = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (3, 4)))
  valid = jnp.ones((4,), bool)
  assert np.all(np.asarray(policy_probe._kl(log_p, log_p, valid)) == 0.0)


def test_kl_is_accurate_for_nearly_equal_distributions():
  """Float32 inputs, KLs from ~1e-12 to ~1: agrees with float64 to 1e-3
  relative, where the plain float32 sum would be off by ~1e-8 absolute. The
  masked-out choice carries mass: each side is renormalised over the rest."""
  rng = np.random.default_rng(7)
  logits = 3 * rng.normal(size=(5, 1, 7))
  scale = np.array([1e-6, 1e-4, 1e-2, 1.0])[None, :, None]
  other = logits + scale * rng.normal(size=(5, 4, 7))
  log_p = jax.nn.log_softmax(
      jnp.asarray(np.broadcast_to(logits, other.shape), jnp.float32))
  log_q = jax.nn.log_softmax(jnp.asarray(other, jnp.float32))
  valid = jnp.arange(7) < 6  # The last choice is "invalid": ignored.
  log_p = jnp.where(valid, log_p, -1e9)
  log_q = jnp.where(valid, log_q, -1e9)
  kl = np.asarray(policy_probe._kl(log_p, log_q, valid))
  # The reference renormalises over the valid choices.
  ref = _reference_kl(np.asarray(log_p)[..., :6], np.asarray(log_q)[..., :6])
  assert ref.min() < 1e-10 and ref.max() > 1e-2
  # atol: the float64 reference's own rounding (~1e-16 * |log p|).
  np.testing.assert_allclose(kl, ref, rtol=1e-3, atol=1e-15)


def _memoryless(params):
  """No recurrent weights, forget gate shut: h_t depends on token t-1 only."""
  hidden = CFG.hidden_size
  lstm_w = params["lstm_w"].at[hidden:].set(0.0)
  # Gate order i, f, g, o: the forget gate's bias is the second block.
  lstm_b = params["lstm_b"].at[hidden:2 * hidden].set(-1e4)
  return {**params, "lstm_w": lstm_w, "lstm_b": lstm_b}


def test_memoryless_controller_conditions_on_the_last_decision_only(
    params, tokens):
  kl = np.asarray(policy_probe.conditioning_kl(
      _memoryless(params), tokens, jax.random.key(3), config=CFG))
  positions = policy_probe.changed_positions(CFG.num_nodes)
  dist = np.broadcast_to(_distance(positions), kl.shape)
  # Distance 1, except step 1 (a single choice, always KL 0).
  step = np.broadcast_to(np.arange(CFG.num_steps), kl.shape)
  assert np.all(kl[(dist == 1) & (step != 1)] > 0.0)
  assert np.all(kl[dist >= 2] < 1e-6)
  summary = policy_probe.kl_by_distance(kl, positions)
  assert summary["mean"][0] > 0.0 and np.all(summary["mean"][1:] < 1e-6)


def test_random_controller_conditions_beyond_the_last_decision(params, tokens):
  kl = np.asarray(policy_probe.conditioning_kl(
      params, tokens, jax.random.key(3), config=CFG))
  positions = policy_probe.changed_positions(CFG.num_nodes)
  dist = np.broadcast_to(_distance(positions), kl.shape)
  assert np.any(kl[dist >= 2] > 1e-5)
  assert np.all(policy_probe.kl_by_distance(kl, positions)["mean"] > 0.0)


def test_kl_by_distance_averages_within_cells_first():
  """N = 3 (T = 5), positions (0, 2, 3): distance 1 has three (j, t) pairs
  per cell, (0, 1), (2, 3), (3, 4); distance 2 two, (0, 2), (2, 4)."""
  positions = np.array([0, 2, 3])
  kl = np.full((2, 3, 5), np.nan)
  for cell, values in enumerate(([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])):
    kl[cell, 0, 1:] = [values[0], 10.0 * cell, 0.5, 0.25]
    kl[cell, 1, 3:] = [values[1], 2.0]
    kl[cell, 2, 4] = values[2]
  out = policy_probe.kl_by_distance(kl, positions)
  np.testing.assert_array_equal(out["distance"], [1, 2, 3, 4])
  np.testing.assert_array_equal(out["n"], [2, 2, 2, 2])
  np.testing.assert_array_equal(out["pairs"], [3, 2, 1, 1])
  # Distance 1: cell means 2 and 5; the standard error is over these two,
  # not over the six pairs.
  np.testing.assert_allclose(out["mean"], [3.5, 3.5, 0.5, 0.25])
  np.testing.assert_allclose(
      out["sem"][:2], [np.std([2.0, 5.0], ddof=1) / np.sqrt(2),
                       np.std([1.0, 6.0], ddof=1) / np.sqrt(2)])
  np.testing.assert_allclose(out["sem"][2:], 0.0)
