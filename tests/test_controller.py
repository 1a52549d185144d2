"""Tests for nas_jax.controller: sampling, teacher forcing, carry dynamics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import controller
from nas_jax import search_space

CFG = controller.ControllerConfig(num_nodes=5, hidden_size=12)
NUM = 64


@pytest.fixture(scope="module")
def params():
  # A larger init range than the default makes the policy clearly non-uniform.
  cfg = controller.ControllerConfig(num_nodes=5, hidden_size=12, init_range=1.0)
  return controller.init(jax.random.key(0), cfg)


@pytest.fixture(scope="module")
def rollout(params):
  return controller.sample(params, jax.random.key(1), NUM, config=CFG)


def test_sample_shapes_and_valid_cells(rollout):
  """Tokens [num, 2N-1] are valid cells; per-step arrays have matching shapes."""
  steps = CFG.num_steps
  chex.assert_shape(rollout.tokens, (NUM, steps))
  chex.assert_shape([rollout.log_probs, rollout.entropies], (NUM, steps))
  chex.assert_shape([rollout.c, rollout.h], (NUM, steps, CFG.hidden_size))
  assert rollout.tokens.dtype == jnp.int32
  search_space.validate_tokens(np.asarray(rollout.tokens))
  assert np.all(np.asarray(rollout.log_probs) <= 0.0)


def test_sample_is_driven_only_by_the_key(params, rollout):
  """Same key gives the same cells; another key gives other cells."""
  again = controller.sample(params, jax.random.key(1), NUM, config=CFG)
  other = controller.sample(params, jax.random.key(2), NUM, config=CFG)
  chex.assert_trees_all_equal(rollout, again)
  assert np.any(np.asarray(rollout.tokens) != np.asarray(other.tokens))


@pytest.mark.parametrize("mode", controller.MODES)
def test_score_reproduces_sample(params, mode):
  """Teacher-forced score of sampled tokens reproduces log-probs and carries."""
  sampled = controller.sample(params, jax.random.key(3), NUM, config=CFG,
                              mode=mode)
  scored = controller.score(params, sampled.tokens, config=CFG, mode=mode)
  np.testing.assert_array_equal(scored.tokens, sampled.tokens)
  for field in ("log_probs", "entropies", "c", "h"):
    np.testing.assert_allclose(getattr(scored, field), getattr(sampled, field),
                               atol=1e-5, err_msg=field)


def test_score_reproduces_sample_from_initial_carry(params):
  """The initial carry is used by both sample and score."""
  carry = (jnp.ones((CFG.hidden_size,)), -jnp.ones((CFG.hidden_size,)))
  sampled = controller.sample(params, jax.random.key(4), NUM, config=CFG,
                              initial_carry=carry)
  scored = controller.score(params, sampled.tokens, config=CFG,
                            initial_carry=carry)
  np.testing.assert_allclose(scored.log_probs, sampled.log_probs, atol=1e-5)
  zero = controller.score(params, sampled.tokens, config=CFG)
  assert np.abs(np.asarray(zero.h[:, 0]) - np.asarray(scored.h[:, 0])).max() > 1e-3


def _reference_pass(params, tokens, mode):
  """Plain numpy forward pass: each step's distribution and carry (c, h)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  hidden = CFG.hidden_size
  sizes = search_space.decision_sizes(CFG.num_nodes)
  c = np.zeros(hidden)
  h = np.zeros(hidden)
  x = np.zeros(hidden)
  dists, cs, hs = [], [], []
  for t, token in enumerate(tokens):
    gates = np.concatenate([x, h]) @ p["lstm_w"] + p["lstm_b"]
    i, f, g, o = np.split(gates, 4)
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    cs.append(c)
    hs.append(h)
    logits = (h @ p["head_w"][t] + p["head_b"][t])[:sizes[t]] / CFG.temperature
    if mode == "train":
      logits = CFG.tanh_constant * np.tanh(logits)
    probs = np.exp(logits - logits.max())
    dists.append(probs / probs.sum())
    row = token if t % 2 == 0 else search_space.NUM_ACTIVATIONS + token
    x = p["embedding"][row]
  return dists, np.stack(cs), np.stack(hs)


@pytest.mark.parametrize("mode", controller.MODES)
def test_log_probs_and_entropies_match_reference(params, rollout, mode):
  """Log-probs/entropies follow DESIGN: zero first input, temperature, tanh."""
  tokens = np.asarray(rollout.tokens)[:4]
  scored = controller.score(params, jnp.asarray(tokens), config=CFG, mode=mode)
  for n, row in enumerate(tokens):
    dists, cs, hs = _reference_pass(params, row, mode)
    log_probs = [np.log(d[tok]) for d, tok in zip(dists, row)]
    entropies = [-np.sum(d * np.log(d)) for d in dists]
    np.testing.assert_allclose(scored.log_probs[n], log_probs, atol=1e-5)
    np.testing.assert_allclose(scored.entropies[n], entropies, atol=1e-5)
    # The carries separately (a swapped c/h would pass the checks above).
    np.testing.assert_allclose(scored.c[n], cs, atol=1e-5)
    np.testing.assert_allclose(scored.h[n], hs, atol=1e-5)


def test_rollout_h_is_the_state_the_logits_came_from(params, rollout):
  """log_softmax(step_logits(h[:, t])) at the token equals log_probs[:, t]."""
  valid, _ = controller.step_tables(CFG)
  for t in range(CFG.num_steps):
    logits = controller.step_logits(params, rollout.h[:, t], t, valid[t],
                                    config=CFG, mode="train")
    log_p = jax.nn.log_softmax(logits)
    got = jnp.take_along_axis(log_p, rollout.tokens[:, t:t + 1], axis=-1)[:, 0]
    np.testing.assert_allclose(got, rollout.log_probs[:, t], atol=1e-5)


def test_train_and_derive_modes_differ(params, rollout):
  """Train mode's tanh squashing changes the distribution derive mode uses."""
  train = controller.score(params, rollout.tokens, config=CFG, mode="train")
  derive = controller.score(params, rollout.tokens, config=CFG, mode="derive")
  assert not np.allclose(train.log_probs, derive.log_probs, atol=1e-4)


def test_first_parent_decision_is_certain(rollout):
  """Node 1 can only read node 0: its decision has entropy 0 and log-prob 0."""
  np.testing.assert_array_equal(np.asarray(rollout.tokens)[:, 1], 0)
  np.testing.assert_allclose(rollout.log_probs[:, 1], 0.0, atol=1e-6)
  np.testing.assert_allclose(rollout.entropies[:, 1], 0.0, atol=1e-6)


def test_carry_changes_with_the_tokens_fed_in(params):
  """Regression for the TF-ENAS bug: the LSTM state must depend on past tokens.

  Two cells that differ only in their first activation must have different
  carries at every later step.
  """
  base = search_space.chain(CFG.num_nodes, 0).tokens()
  changed = base.copy()
  changed[0] = 3
  scored = controller.score(params, jnp.asarray(np.stack([base, changed])),
                            config=CFG)
  np.testing.assert_allclose(scored.h[0, 0], scored.h[1, 0], atol=0)
  diff = np.abs(np.asarray(scored.h[0, 1:]) - np.asarray(scored.h[1, 1:]))
  assert np.all(diff.max(axis=-1) > 1e-6)


def test_score_is_differentiable(params, rollout):
  """Gradients of the summed log-prob reach every parameter array."""
  grads = jax.grad(lambda p: jnp.sum(controller.score(
      p, rollout.tokens, config=CFG).log_probs))(params)
  for name, g in grads.items():
    assert np.all(np.isfinite(g)), name
    assert np.abs(np.asarray(g)).max() > 0.0, name


def test_sample_compiles_once_per_size(params):
  """Different keys reuse one compiled sampler."""
  before = controller._sample._cache_size()
  for i in range(5):
    controller.sample(params, jax.random.key(100 + i), 7, config=CFG)
  assert controller._sample._cache_size() == before + 1


def test_sample_frequencies_follow_the_policy(params):
  """Empirical first-activation frequencies match the policy's softmax."""
  draws = controller.sample(params, jax.random.key(5), 20000, config=CFG)
  freq = np.bincount(np.asarray(draws.tokens[:, 0]), minlength=4) / 20000
  probs = np.exp(np.asarray(draws.log_probs[:, 0]))
  expected = np.array([probs[np.asarray(draws.tokens[:, 0]) == a][0]
                       for a in range(4)])
  np.testing.assert_allclose(freq, expected, atol=0.015)


def test_bad_arguments_raise(params):
  """Unknown mode, wrong token width and mismatched config are ValueErrors."""
  with pytest.raises(ValueError, match="mode"):
    controller.sample(params, jax.random.key(0), 2, config=CFG, mode="greedy")
  with pytest.raises(ValueError, match="tokens must be"):
    controller.score(params, jnp.zeros((2, 5), jnp.int32), config=CFG)
  with pytest.raises(ValueError, match=r"params\[.*needs"):
    controller.sample(params, jax.random.key(0), 2,
                      config=controller.ControllerConfig(num_nodes=6))
  wrong_hidden = controller.ControllerConfig(num_nodes=5, hidden_size=13)
  with pytest.raises(ValueError, match="embedding"):
    controller.score(params, jnp.zeros((2, CFG.num_steps), jnp.int32),
                     config=wrong_hidden)
  with pytest.raises(ValueError, match="num must be"):
    controller.sample(params, jax.random.key(0), 0, config=CFG)


def test_invalid_tokens_are_rejected_by_score(params):
  """A prev index >= its node or an unknown activation names row and position."""
  tokens = np.tile(search_space.chain(CFG.num_nodes).tokens(), (3, 1))
  tokens[2, 3] = 2  # prev_2 may only be 0 or 1.
  with pytest.raises(ValueError, match=r"row \(2,\): token 3"):
    controller.score(params, jnp.asarray(tokens), config=CFG)
  tokens[2, 3] = 0
  tokens[1, 0] = 4  # No fifth activation.
  with pytest.raises(ValueError, match=r"row \(1,\): token 0"):
    controller.score(params, jnp.asarray(tokens), config=CFG)


def test_initial_carry_shape_is_checked(params):
  """A carry of the wrong width is a clear error, not a broadcast failure."""
  bad = (jnp.zeros((CFG.hidden_size + 1,)), jnp.zeros((CFG.hidden_size + 1,)))
  with pytest.raises(ValueError, match="initial_carry c"):
    controller.sample(params, jax.random.key(0), 2, config=CFG,
                      initial_carry=bad)


# ---------------------------------------------------------------------------
# The fast sampler and scorer against the plain formulation.


def _plain_unroll(params, config, mode, *, key=None, tokens=None, num=None,
                  initial_carry=None, initial_input=None):
  """The plain controller, written out: at every step the LSTM on
  ``[x; h] @ lstm_w`` with ``x`` the embedding of the previous token (at
  step 0 ``initial_input``, zeros by default), the padded masked head, and
  ``jax.random.categorical(fold_in(key, t), logits)`` (or the given token).
  Returns a ``controller.Rollout``."""
  hidden = config.hidden_size
  sizes = search_space.decision_sizes(config.num_nodes)
  num = tokens.shape[0] if tokens is not None else num
  if initial_carry is None:
    c = h = jnp.zeros((num, hidden))
  else:
    c, h = (jnp.broadcast_to(a, (num, hidden)) for a in initial_carry)
  x = jnp.broadcast_to(
      jnp.zeros(hidden) if initial_input is None else initial_input,
      (num, hidden))
  out = {name: [] for name in controller.Rollout._fields}
  for t in range(config.num_steps):
    gates = jnp.concatenate([x, h], -1) @ params["lstm_w"] + params["lstm_b"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    logits = h @ params["head_w"][t] + params["head_b"][t]
    logits = logits / config.temperature
    if mode == "train":
      logits = config.tanh_constant * jnp.tanh(logits)
    valid = jnp.arange(config.num_choices) < sizes[t]
    logits = jnp.where(valid, logits, -1e9)
    log_p = jax.nn.log_softmax(logits)
    if tokens is None:
      token = jax.random.categorical(jax.random.fold_in(key, t), logits)
    else:
      token = tokens[:, t]
    token = token.astype(jnp.int32)
    out["tokens"].append(token)
    out["log_probs"].append(
        jnp.take_along_axis(log_p, token[:, None], -1)[:, 0])
    out["entropies"].append(
        -jnp.sum(jnp.where(valid, jnp.exp(log_p) * log_p, 0.0), -1))
    out["c"].append(c)
    out["h"].append(h)
    row = token + (0 if t % 2 == 0 else search_space.NUM_ACTIVATIONS)
    x = params["embedding"][row]
  return controller.Rollout(**{k: jnp.stack(v, 1) for k, v in out.items()})


def _assert_rollouts_match(got, want):
  np.testing.assert_array_equal(got.tokens, want.tokens)
  assert got.tokens.dtype == jnp.int32
  for field in ("log_probs", "entropies", "c", "h"):
    assert getattr(got, field).shape == getattr(want, field).shape, field
    np.testing.assert_allclose(getattr(got, field), getattr(want, field),
                               atol=2e-6, err_msg=field)


def _carries(kind, num, hidden):
  """Initial carries of each kind: shared ones take the prefix-tree path."""
  key = jax.random.key(9)
  if kind == "zero":
    return None
  if kind == "shared":  # [H] parts.
    return tuple(jax.random.normal(jax.random.fold_in(key, i), (hidden,))
                 for i in range(2))
  if kind == "per_cell":  # [num, H] parts.
    return tuple(jax.random.normal(jax.random.fold_in(key, i), (num, hidden))
                 for i in range(2))
  # One part per cell, one shared: the cells' states differ from step 0.
  return (jax.random.normal(key, (hidden,)),
          jax.random.normal(key, (num, hidden)))


@pytest.mark.parametrize("mode,carry", [
    ("train", "zero"), ("derive", "zero"), ("train", "shared"),
    ("derive", "per_cell"), ("train", "mixed")])
def test_sample_matches_the_plain_controller(params, mode, carry):
  """Same keys, same tokens; log-probs, entropies and carries to tolerance."""
  initial_carry = _carries(carry, NUM, CFG.hidden_size)
  for seed in (11, 12, 13):
    key = jax.random.key(seed)
    got = controller.sample(params, key, NUM, config=CFG, mode=mode,
                            initial_carry=initial_carry)
    want = _plain_unroll(params, CFG, mode, key=key, num=NUM,
                         initial_carry=initial_carry)
    _assert_rollouts_match(got, want)


@pytest.mark.parametrize("num_nodes,num", [
    (2, 64),  # Fewer distinct prefixes than cells at every step.
    (5, 1),  # One cell: no shared prefixes.
    (3, 20),  # Prefixes for all steps but the last: an empty loop.
    # As for the default 1000 cells: 7 prefix steps (384 prefixes), then 16.
    (12, 400),
])
def test_sample_matches_the_plain_controller_at_every_size(num_nodes, num):
  """The prefix-tree phase and the per-cell phase, each alone and together."""
  config = controller.ControllerConfig(num_nodes=num_nodes, hidden_size=12)
  # Drawn with numpy: controller.init would compile for every config.
  rng = np.random.default_rng(num_nodes)
  shapes = jax.eval_shape(controller.init, jax.random.key(0), config)
  params = {name: jnp.asarray(rng.uniform(-1.0, 1.0, s.shape), jnp.float32)
            for name, s in shapes.items()}
  key = jax.random.key(4)
  got = controller.sample(params, key, num, config=config)
  want = _plain_unroll(params, config, "train", key=key, num=num)
  _assert_rollouts_match(got, want)


@pytest.mark.parametrize("mode,carry", [
    ("train", "zero"), ("derive", "zero"), ("train", "mixed")])
def test_score_matches_the_plain_controller(params, rollout, mode, carry):
  """Teacher-forced outputs equal the plain formulation's."""
  initial_carry = _carries(carry, NUM, CFG.hidden_size)
  got = controller.score(params, rollout.tokens, config=CFG, mode=mode,
                         initial_carry=initial_carry)
  want = _plain_unroll(params, CFG, mode, tokens=rollout.tokens,
                       initial_carry=initial_carry)
  _assert_rollouts_match(got, want)


@pytest.mark.parametrize("mode,carry,per_cell", [
    ("derive", "per_cell", True),  # What the authors' random-state probe does.
    ("train", "zero", False), ("train", "zero", True)])
def test_initial_input_matches_the_plain_controller(params, mode, carry,
                                                    per_cell):
  """Step 0 reads ``initial_input`` (``[H]``: the prefix tree still applies;
  ``[num, H]``: one row per cell) in sample and score, as in the plain
  formulation, and it changes the policy."""
  initial_carry = _carries(carry, NUM, CFG.hidden_size)
  shape = (NUM, CFG.hidden_size) if per_cell else (CFG.hidden_size,)
  x0 = 3.0 * jax.random.normal(jax.random.key(8), shape)
  key = jax.random.key(14)
  got = controller.sample(params, key, NUM, config=CFG, mode=mode,
                          initial_carry=initial_carry, initial_input=x0)
  want = _plain_unroll(params, CFG, mode, key=key, num=NUM,
                       initial_carry=initial_carry, initial_input=x0)
  _assert_rollouts_match(got, want)
  scored = controller.score(params, got.tokens, config=CFG, mode=mode,
                            initial_carry=initial_carry, initial_input=x0)
  _assert_rollouts_match(scored, want)
  zero_input = controller.score(params, got.tokens, config=CFG, mode=mode,
                                initial_carry=initial_carry)
  assert np.abs(np.asarray(zero_input.entropies[:, 0])
                - np.asarray(got.entropies[:, 0])).max() > 1e-3


def test_zero_initial_input_is_the_default(params, rollout):
  """An explicit zero input gives the default rollout."""
  again = controller.sample(params, jax.random.key(1), NUM, config=CFG,
                            initial_input=jnp.zeros((CFG.hidden_size,)))
  _assert_rollouts_match(again, rollout)
  with pytest.raises(ValueError, match="initial_input must have shape"):
    controller.sample(params, jax.random.key(0), 2, config=CFG,
                      initial_input=jnp.zeros((3, CFG.hidden_size)))


def test_score_gradients_match_the_plain_controller(params, rollout):
  """Gradients through the input table equal those of ``[x; h] @ W``."""
  weights = jax.random.normal(jax.random.key(6), rollout.log_probs.shape)

  def loss(p, unroll):
    scored = unroll(p)
    return (jnp.sum(scored.log_probs * weights) + jnp.sum(scored.entropies)
            + jnp.sum(scored.h[:, -1]))

  got = jax.grad(loss)(params, lambda p: controller.score(
      p, rollout.tokens, config=CFG))
  want = jax.jit(jax.grad(loss), static_argnums=1)(
      params, lambda p: _plain_unroll(p, CFG, "train", tokens=rollout.tokens))
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                               err_msg=name)


@pytest.mark.parametrize("key", [
    jax.random.key(21),
    jax.random.PRNGKey(22),  # A raw uint32[2] key.
    jax.random.key(23, impl="rbg"),  # Not threefry: jax.random.gumbel itself.
], ids=["threefry", "raw", "rbg"])
def test_gumbel_noise_is_that_of_jax_random(key):
  """Bitwise the noise ``jax.random.categorical(fold_in(key, t), .)`` adds."""
  noise = controller._gumbel_noise(key, NUM, CFG)
  want = jnp.stack([
      jax.random.gumbel(jax.random.fold_in(key, t), (NUM, CFG.num_choices))
      for t in range(CFG.num_steps)])
  np.testing.assert_array_equal(noise, want)


def test_head_biases_start_at_zero():
  """As in the authors' code; the other parameters are
  U(-init_range, init_range) and not all zero."""
  params = controller.init(jax.random.key(3), CFG)
  np.testing.assert_array_equal(params["head_b"], 0.0)
  for name in ("embedding", "lstm_w", "lstm_b", "head_w"):
    values = np.asarray(params[name])
    assert np.abs(values).max() <= CFG.init_range and values.std() > 0, name

