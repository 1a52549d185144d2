"""Tests for nas_jax.buffer and the replay loss inside the controller step."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import common
from nas_jax import buffer
from nas_jax import controller
from nas_jax import metrics
from nas_jax import rundir
from nas_jax import search_space
from nas_jax import settings
from nas_jax import steps
from nas_jax import train

from conftest import TOY_VOCAB
from conftest import interrupt_window

VOCAB = TOY_VOCAB
CTRL = controller.ControllerConfig(num_nodes=4, hidden_size=16)
L = CTRL.num_steps


def _rows(n, start=0):
  """``n`` distinct rows: row i holds i + start in column 0."""
  rows = np.zeros((n, L), np.int32)
  rows[:, 0] = np.arange(start, start + n)
  return jnp.asarray(rows)


def _ids(buf):
  return np.asarray(buf.tokens)[:int(buf.size), 0].tolist()


def _cells(n, seed=0):
  return search_space.sample_uniform(jax.random.key(seed), CTRL.num_nodes, n)


# ---------------------------------------------------------------------------
# The buffer.


def test_init_is_empty_and_checks_sizes():
  buf = buffer.init(8, L)
  assert buf.tokens.shape == (8, L) and int(buf.size) == 0
  assert int(buf.seen) == 0
  with pytest.raises(ValueError, match="capacity"):
    buffer.init(0, L)


@pytest.mark.parametrize("policy", buffer.POLICIES)
def test_every_policy_appends_while_not_full(policy):
  buf = buffer.add(buffer.init(10, L), _rows(4), jax.random.key(0),
                   policy=policy, replace_rows=3)
  buf = buffer.add(buf, _rows(3, start=4), jax.random.key(1), policy=policy,
                   replace_rows=3)
  assert _ids(buf) == list(range(7))
  assert int(buf.size) == 7 and int(buf.seen) == 7


def test_fifo_keeps_the_newest_rows():
  buf = buffer.init(5, L)
  for start in (0, 3, 6):  # 9 rows offered, in batches of 3.
    buf = buffer.add(buf, _rows(3, start), jax.random.key(0), policy="fifo")
  assert int(buf.size) == 5 and int(buf.seen) == 9
  assert sorted(_ids(buf)) == [4, 5, 6, 7, 8]
  # A batch larger than the buffer: its last `capacity` rows remain.
  big = buffer.add(buffer.init(5, L), _rows(12), jax.random.key(0),
                   policy="fifo")
  assert sorted(_ids(big)) == list(range(7, 12))


def test_authors_policy_only_replaces_the_last_rows():
  """Full: a batch's first R rows overwrite the last R rows; others drop."""
  buf = buffer.add(buffer.init(6, L), _rows(4), jax.random.key(0),
                   policy="authors", replace_rows=2)
  # 4 stored; this batch fills rows 4, 5, then its next 2 rows replace rows
  # 4, 5 and the last one is dropped.
  buf = buffer.add(buf, _rows(5, start=10), jax.random.key(0),
                   policy="authors", replace_rows=2)
  assert _ids(buf) == [0, 1, 2, 3, 12, 13]
  buf = buffer.add(buf, _rows(3, start=20), jax.random.key(0),
                   policy="authors", replace_rows=2)
  assert _ids(buf) == [0, 1, 2, 3, 20, 21]
  assert int(buf.seen) == 12 and int(buf.size) == 6


def test_reservoir_keeps_each_offered_row_with_equal_probability():
  """Algorithm R: P(row i kept) = capacity / seen for every i."""
  capacity, offered, trials = 4, 16, 3000
  add = jax.jit(jax.vmap(
      lambda k: buffer.add(buffer.init(capacity, L), _rows(offered), k,
                           policy="reservoir").tokens[:, 0]))
  kept = np.asarray(add(jax.random.split(jax.random.key(0), trials)))
  # Every buffer holds distinct offered rows.
  assert all(len(set(row)) == capacity for row in kept)
  freq = np.bincount(kept.ravel(), minlength=offered) / trials
  np.testing.assert_allclose(freq, capacity / offered, atol=0.04)


def test_add_checks_its_input():
  with pytest.raises(ValueError, match="tokens must be"):
    buffer.add(buffer.init(4, L), jnp.zeros((2, L + 1), jnp.int32),
               jax.random.key(0), policy="fifo")
  with pytest.raises(ValueError, match="policy"):
    buffer.add(buffer.init(4, L), _rows(2), jax.random.key(0), policy="lifo")


def test_sample_draws_filled_rows_without_replacement():
  buf = buffer.add(buffer.init(20, L), _rows(12), jax.random.key(0),
                   policy="fifo")
  seen = set()
  for i in range(20):
    tokens, mask = buffer.sample(buf, jax.random.key(i), 5)
    ids = np.asarray(tokens)[:, 0].tolist()
    assert len(set(ids)) == 5 and set(ids) <= set(range(12))
    assert bool(np.all(mask))
    seen |= set(ids)
  assert seen == set(range(12))  # Every stored row gets drawn.
  # Fewer rows than asked: all of them, the rest masked.
  small = buffer.add(buffer.init(20, L), _rows(3), jax.random.key(0),
                     policy="fifo")
  tokens, mask = buffer.sample(small, jax.random.key(0), 5)
  assert np.asarray(mask).tolist() == [True] * 3 + [False] * 2
  assert sorted(np.asarray(tokens)[:3, 0].tolist()) == [0, 1, 2]
  with pytest.raises(ValueError, match="capacity"):
    buffer.sample(small, jax.random.key(0), 21)


def test_buffer_config_rejects_bad_values():
  with pytest.raises(ValueError, match="variant"):
    buffer.BufferConfig(variant="always")
  with pytest.raises(ValueError, match="replay_samples"):
    buffer.BufferConfig(capacity=10, replay_samples=11)
  with pytest.raises(ValueError, match="weight"):
    buffer.BufferConfig(weight=float("nan"))


# ---------------------------------------------------------------------------
# The replay loss.


@pytest.fixture(scope="module")
def params():
  return controller.init(jax.random.key(0), CTRL)


def test_clean_loss_is_the_negative_mean_score_log_prob(params):
  cells = _cells(7)
  loss = buffer.replay_loss(params, cells, jnp.ones(7, bool), config=CTRL,
                            variant="clean")
  scored = controller.score(params, cells, config=CTRL, mode="train")
  np.testing.assert_allclose(loss, -np.mean(scored.log_probs), rtol=1e-6)
  # Masked rows do not count.
  mask = jnp.arange(7) < 3
  masked = buffer.replay_loss(params, cells, mask, config=CTRL,
                              variant="clean")
  np.testing.assert_allclose(masked, -np.mean(scored.log_probs[:3]),
                             rtol=1e-6)
  assert float(buffer.replay_loss(params, cells, jnp.zeros(7, bool),
                                  config=CTRL, variant="clean")) == 0.0


@pytest.mark.parametrize("variant", ["clean", "faithful"])
def test_replay_gradient_reaches_the_controller(params, variant):
  cells = _cells(6)
  grads = jax.grad(lambda p: buffer.replay_loss(
      p, cells, jnp.ones(6, bool), config=CTRL, variant=variant))(params)
  for name, g in grads.items():
    assert float(jnp.abs(g).max()) > 0, name
  # Training on the replay loss makes the stored cells more likely.
  step = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
  before = controller.score(params, cells, config=CTRL).log_probs.sum()
  after = controller.score(step, cells, config=CTRL).log_probs.sum()
  assert float(after) > float(before)


def _faithful_reference(params, cells):
  """The authors' replay, one step at a time on the host."""
  valid, _ = controller.step_tables(CTRL)
  cells = np.asarray(cells)
  c = h = jnp.zeros((cells.shape[0], CTRL.hidden_size))
  # Stored tokens fed as raw ids: parent j reads embedding row j.
  x = params["embedding"][cells[:, 0]]  # Token 0 as first input.
  losses = []
  for t in range(1, L):
    c, h = controller.lstm_cell(params, x, (c, h))
    logits = np.asarray(controller.step_logits(
        params, h, t, valid[t], config=CTRL, mode="train"), np.float64)
    k = int(np.asarray(valid[t]).sum())
    p = np.exp(logits[:, :k] - logits[:, :k].max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    # torch.nn.CrossEntropyLoss applied to probabilities.
    ce = np.log(np.exp(p).sum(-1)) - p[np.arange(len(p)), cells[:, t]]
    losses.append(ce)
    x = params["embedding"][cells[:, t]]
  return np.mean(losses)


def test_faithful_loss_matches_the_authors_recipe(params):
  cells = _cells(5, seed=3)
  loss = buffer.replay_loss(params, cells, jnp.ones(5, bool), config=CTRL,
                            variant="faithful")
  np.testing.assert_allclose(loss, _faithful_reference(params, cells),
                             rtol=1e-5)
  # The first decision's head is never trained by it (head 1, prev_1, has a
  # single choice: no gradient either); head 2 (act_1) is.
  grads = jax.grad(lambda p: buffer.replay_loss(
      p, cells, jnp.ones(5, bool), config=CTRL, variant="faithful"))(params)
  assert float(jnp.abs(grads["head_w"][0]).max()) == 0.0
  assert float(jnp.abs(grads["head_w"][2]).max()) > 0.0
  # Raw ids: only rows 0 .. N-2 (activations 0-3 and parents 0 .. N-2 share
  # them) are read; the parent rows 4 + j of the sampler get no gradient.
  rows = np.flatnonzero(np.abs(np.asarray(grads["embedding"])).sum(-1) > 0)
  assert rows.max() < max(search_space.NUM_ACTIVATIONS, CTRL.num_nodes - 1)
  assert CTRL.num_embeddings > search_space.NUM_ACTIVATIONS


# ---------------------------------------------------------------------------
# Inside the search.


def _config(**overrides):
  return common.apply_overrides(experiments.get_config("smoke")[1], overrides)


def _controller_steps(config, toy_data, num_steps):
  """Runs ``num_steps`` controller steps, storing and ending epochs as the
  loop does."""
  setup = settings.make_setup(config, VOCAB)
  state = steps.init_state(setup, config.seed)
  per_epoch = config.controller.steps_per_epoch
  logs = []
  for i in range(num_steps):
    if steps.store_due(setup, epoch=int(state.epoch), ctrl_step=i):
      state = steps.store_cells(state, setup=setup)
    state, m = steps.controller_step(state, toy_data, setup=setup)
    logs.append(jax.device_get(m))
    if (i + 1) % per_epoch == 0:
      state = state._replace(epoch=state.epoch + 1)
  return state, logs


def test_weight_zero_is_plain_enas(toy_data):
  """Buffer on with lambda 0: the same controller, baseline and rewards."""
  num_steps = 9  # Epochs 0-2: storing from epoch 0, replaying from epoch 1.
  plain, plain_logs = _controller_steps(_config(), toy_data, num_steps)
  zero, zero_logs = _controller_steps(
      _config(**{"buffer.variant": "clean", "buffer.weight": 0.0}), toy_data,
      num_steps)
  assert int(zero.buffer.size) == 3 * 16  # It did store and sample.
  assert float(zero_logs[-1]["replay_loss"]) > 0
  chex.assert_trees_all_close(zero.ctrl, plain.ctrl, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(zero.ctrl_opt, plain.ctrl_opt, rtol=1e-6,
                              atol=1e-7)
  for a, b in zip(plain_logs, zero_logs):
    np.testing.assert_array_equal(a["cells"], b["cells"])
    np.testing.assert_allclose(a["reward"], b["reward"], rtol=1e-6)
  # With weight 1 the replay loss does move the controller.
  one, _ = _controller_steps(_config(**{"buffer.variant": "clean"}), toy_data,
                             num_steps)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       one.ctrl, plain.ctrl)
  assert max(jax.tree.leaves(moved)) > 1e-5


def test_store_schedule_and_policy(toy_data):
  config = _config(**{"buffer.variant": "faithful", "buffer.policy": "authors",
                      "buffer.store_start_epoch": 1, "buffer.capacity": 24})
  state, logs = _controller_steps(config, toy_data, 12)
  sizes = [int(m["buffer_size"]) for m in logs]
  assert sizes == [0] * 4 + [16] * 4 + [24] * 4
  # The weight switches on at buffer.replay_start_epoch (1 in the smoke
  # preset) once the buffer holds cells; the loss is reported before too.
  assert [float(m["replay_weight"]) for m in logs] == [0.0] * 4 + [1.0] * 8
  replay = [float(m["replay_loss"]) for m in logs]
  assert replay[:4] == [0.0] * 4 and all(v > 0 for v in replay[4:])
  assert int(state.buffer.seen) == 32
  search_space.validate_tokens(np.asarray(state.buffer.tokens))


def test_bad_buffer_settings_name_the_key():
  with pytest.raises(settings.ConfigError, match="buffer.variant"):
    settings.make_setup(_config(**{"buffer.variant": "yes"}), VOCAB)
  with pytest.raises(settings.ConfigError, match="config buffer"):
    settings.make_setup(_config(**{"buffer.variant": "clean",
                                "buffer.replay_samples": 100}), VOCAB)
  with pytest.raises(settings.ConfigError, match="random_ws"):
    settings.make_setup(_config(**{"buffer.variant": "clean",
                                "search.algorithm": "random_ws"}), VOCAB)


def _final_buffer(workdir, config):
  setup = settings.make_setup(config, 10_000)
  run = rundir.RunDirectory(workdir, config)
  try:
    state, _ = run.restore(steps.init_state(setup, config.seed))
  finally:
    run.close()
  return jax.device_get(state.buffer)


def _outputs(workdir):
  lines = {}
  for name in ("metrics.jsonl", "archs.jsonl"):
    with open(os.path.join(workdir, name)) as f:
      lines[name] = [{k: v for k, v in json.loads(r).items()
                      if not metrics.is_timing(k)} for r in f]
  return lines


def test_interrupted_run_resumes_with_the_same_buffer(tmp_path, monkeypatch):
  """Stop a buffered run mid-epoch, resume: same buffer, same logs."""
  config = _config(**{"buffer.variant": "clean"})
  reference = str(tmp_path / "reference")
  train.train_and_evaluate(config, reference)
  records = _outputs(reference)["metrics.jsonl"]
  assert any("ctrl/replay_loss" in r for r in records)
  assert [r["buffer/size"] for r in records if "buffer/size" in r] == [
      16, 16, 32, 32]

  workdir = str(tmp_path / "interrupted")
  # 4 controller steps per epoch in windows of 2 (log_every), a checkpoint
  # every 2. The first stop (3rd controller window: epoch 1, steps 4-5)
  # resumes from the end of epoch 0, before epoch 1's store, which the
  # resumed run must do; the second (2nd controller window after resuming:
  # steps 6-7) from ctrl step 6, after that store, which it must not repeat.
  for stop_at, size in ((3, 16), (2, 32)):
    interrupt_window(monkeypatch, stop_at, only_step=steps.controller_step)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(config, workdir)
    monkeypatch.undo()
    assert int(_final_buffer(workdir, config).size) == size
  train.train_and_evaluate(config, workdir)
  chex.assert_trees_all_equal(_final_buffer(workdir, config),
                              _final_buffer(reference, config))
  assert _outputs(workdir) == _outputs(reference)
