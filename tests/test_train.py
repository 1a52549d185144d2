"""Tests for nas_jax.train: the jitted steps, and whole runs of the loop.

Whole runs use the ``smoke`` config (tiny sizes, every phase); the resume
test kills a real ``launch.py`` process with SIGKILL.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import common
from nas_jax import controller
from nas_jax import data
from nas_jax import metrics
from nas_jax import search_space
from nas_jax import supernet
from nas_jax import train

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 50


def smoke_config(**overrides):
  return common.apply_overrides(experiments.get_config("smoke")[1], overrides)


@pytest.fixture(scope="module")
def setup():
  return train.make_setup(smoke_config(), VOCAB)


@pytest.fixture(scope="module")
def toy_data():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, VOCAB, (30, 8), dtype=np.int32))


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


def _read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _without_timing(records):
  return [{k: v for k, v in r.items() if not metrics.is_timing(k)}
          for r in records]


def _run_outputs(workdir):
  return {
      "metrics": _without_timing(_read_lines(
          os.path.join(workdir, "metrics.jsonl"))),
      "archs": _read_lines(os.path.join(workdir, "archs.jsonl")),
      "derived": _read_lines(os.path.join(workdir, "derived.jsonl")),
      "best": json.load(open(os.path.join(workdir, "best_arch.json"))),
  }


# ---------------------------------------------------------------------------
# Steps.


def test_shared_step_compiles_once_and_advances(setup, toy_data):
  """Many steps (new cells each) share one compilation; counters advance."""
  config = smoke_config()
  state = train.init_state(config, setup)
  before = train.shared_step._cache_size()
  cells = set()
  for _ in range(12):
    state, m = train.shared_step(state, toy_data, setup=setup)
    cells.add(tuple(np.asarray(m["cells"][0])))
    assert np.isfinite(float(m["loss"]))
  assert train.shared_step._cache_size() <= before + 1
  assert len(cells) >= 5
  assert int(state.shared_step) == 12
  assert int(state.ctrl_step) == 0


def test_train_pointer_wraps_and_resets_the_carry(setup, toy_data):
  """The window advances by bptt; a window that no longer fits wraps to 0."""
  config = smoke_config()
  state = train.init_state(config, setup)
  bptt = config.train.bptt
  state, _ = train.shared_step(state, toy_data, setup=setup)
  assert int(state.train_pos) == bptt
  assert float(jnp.abs(state.carry).max()) > 0
  # 30 rows, bptt 8: windows start at 0, 8, 16; 24 + 9 > 30 wraps.
  state, _ = train.shared_step(state, toy_data, setup=setup)
  state, _ = train.shared_step(state, toy_data, setup=setup)
  assert int(state.train_pos) == 0
  # A state saved past the end restarts at 0 with a zero carry.
  late = state._replace(train_pos=jnp.int32(29))
  nxt, _ = train.shared_step(late, toy_data, setup=setup)
  assert int(nxt.train_pos) == bptt


def test_controller_step_reward_and_baseline(setup, toy_data):
  """Reward = c / ppl + w * entropy; baseline starts at the first mean reward."""
  config = smoke_config()
  state = train.init_state(config, setup)
  # The steps donate their input state: keep copies of what is compared.
  shared, ctrl = _copy(state.shared), _copy(state.ctrl)
  state1, m1 = train.controller_step(state, toy_data, setup=setup)
  inputs, targets = toy_data[:8], toy_data[1:9]
  losses = train.cell_losses(shared, jnp.asarray(m1["cells"]), inputs,
                             targets, config=setup.model)
  scored = controller.score(ctrl, jnp.asarray(m1["cells"]),
                            config=setup.ctrl)
  entropy = np.sum(np.asarray(scored.entropies), axis=-1)
  expected = setup.reward_c / np.exp(losses) + setup.entropy_weight * entropy
  np.testing.assert_allclose(m1["cell_rewards"], expected, rtol=1e-5)
  np.testing.assert_allclose(m1["baseline"], np.mean(expected), rtol=1e-6)
  state2, m2 = train.controller_step(state1, toy_data, setup=setup)
  d = setup.baseline_decay
  np.testing.assert_allclose(
      m2["baseline"], d * m1["baseline"] + (1 - d) * m2["reward"], rtol=1e-5)
  assert int(state2.valid_pos) == 2 * config.train.bptt
  # The shared weights are not touched by a controller step.
  chex.assert_trees_all_equal(state2.shared, shared)


def test_controller_step_follows_the_advantage(setup, toy_data):
  """The update raises log p of cells with positive advantage (REINFORCE)."""
  config = smoke_config(**{"controller.lr": 0.05})
  local = train.make_setup(config, VOCAB)
  state = train.init_state(config, local)
  # Step 1 only sets the baseline (advantages sum to ~0); step 2 has signal.
  state, _ = train.controller_step(state, toy_data, setup=local)
  before_ctrl = _copy(state.ctrl)
  state, m = train.controller_step(state, toy_data, setup=local)
  adv = np.asarray(m["cell_rewards"]) - float(m["baseline"])
  cells = jnp.asarray(m["cells"])
  lp = lambda p: np.sum(np.asarray(controller.score(
      p, cells, config=local.ctrl).log_probs), axis=-1)
  change = lp(state.ctrl) - lp(before_ctrl)
  assert np.sum(adv * change) > 0


def test_shared_learning_rate_schedule():
  """SGD: x0.96 per epoch from epoch 15 (0-based); Adam: constant."""
  config = smoke_config(**{"train.steps_per_epoch": 10})
  lr = train.shared_learning_rate(train.make_setup(config, VOCAB))
  np.testing.assert_allclose(
      [float(lr(s)) for s in (0, 139, 149, 150, 160, 175)],
      [20.0, 20.0, 20.0, 20.0 * 0.96, 20.0 * 0.96**2, 20.0 * 0.96**3],
      rtol=1e-6)
  adam = smoke_config(**{"train.optimizer": "adam"})
  lr = train.shared_learning_rate(train.make_setup(adam, VOCAB))
  np.testing.assert_allclose(float(lr(10_000)), 3.5e-4, rtol=1e-6)


_jit_loss = jax.jit(supernet.loss, static_argnames=("config", "train"))


def test_evaluate_cell_matches_a_window_loop():
  """Exact ppl: every target once, carry passed along, tail window included."""
  cfg = supernet.SupernetConfig(vocab_size=VOCAB, hidden_size=8, num_nodes=4)
  params = supernet.init(jax.random.key(0), cfg)
  split = np.random.default_rng(1).integers(0, VOCAB, 500, dtype=np.int32)
  cell = jnp.asarray(search_space.chain(4, 1).tokens())
  got, tokens = train.evaluate_cell(params, cell, split, config=cfg, bptt=7,
                                    batch_size=6)
  columns = data.batchify(split, 6)
  carry = supernet.init_carry(6, cfg)
  total, count = 0.0, 0
  for batch in data.iterate_bptt(columns, 7):
    loss, carry = _jit_loss(params, cell, jnp.asarray(batch.inputs),
                            jnp.asarray(batch.targets), carry, config=cfg)
    total += float(loss) * batch.targets.size
    count += batch.targets.size
  assert tokens == count == (columns.shape[0] - 1) * 6
  np.testing.assert_allclose(got, math.exp(total / count), rtol=1e-5)
  # A partial evaluation covers the first windows only and says so.
  part, part_tokens = train.evaluate_cell(params, cell, split, config=cfg,
                                          bptt=7, batch_size=6, max_windows=3)
  assert part_tokens == 3 * 7 * 6
  carry = supernet.init_carry(6, cfg)
  total = 0.0
  for batch in list(data.iterate_bptt(columns, 7))[:3]:
    loss, carry = _jit_loss(params, cell, jnp.asarray(batch.inputs),
                            jnp.asarray(batch.targets), carry, config=cfg)
    total += float(loss) * batch.targets.size
  np.testing.assert_allclose(part, math.exp(total / part_tokens), rtol=1e-5)


# ---------------------------------------------------------------------------
# Whole runs.


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """One uninterrupted smoke run, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("runs") / "smoke")
  best = train.train_and_evaluate(smoke_config(), workdir)
  return workdir, best


def test_smoke_run_writes_the_run_directory(smoke_run):
  """config.json, logs with the documented keys, best_arch.json, TB events."""
  workdir, best = smoke_run
  config = smoke_config()
  for name in ("config.json", "metrics.jsonl", "archs.jsonl",
               "derived.jsonl", "best_arch.json", "checkpoints", "tb"):
    assert os.path.exists(os.path.join(workdir, name)), name
  keys = set()
  for r in _read_lines(os.path.join(workdir, "metrics.jsonl")):
    keys |= set(r)
  for key in ("train/loss", "train/ppl", "valid/ppl", "test/ppl",
              "ctrl/reward", "ctrl/baseline", "ctrl/entropy", "train/lr",
              "ctrl/lr", "train/steps_per_s", "ctrl/steps_per_s"):
    assert key in keys, key
  archs = _read_lines(os.path.join(workdir, "archs.jsonl"))
  steps = config.train.epochs * config.controller.steps_per_epoch
  assert len(archs) == steps * config.controller.samples_per_step
  search_space.validate_tokens([a["tokens"] for a in archs])
  stored = json.load(open(os.path.join(workdir, "best_arch.json")))
  assert stored == best
  assert math.isfinite(stored["valid_ppl"]) and math.isfinite(stored["test_ppl"])
  search_space.Architecture.from_tokens(stored["tokens"])
  assert any(f.startswith("events") for f in os.listdir(
      os.path.join(workdir, "tb")))


def test_same_seed_same_results(smoke_run, tmp_path):
  """A second run with the same seed: identical logs apart from timing."""
  workdir, _ = smoke_run
  again = str(tmp_path / "again")
  train.train_and_evaluate(smoke_config(), again)
  assert _run_outputs(again) == _run_outputs(workdir)
  other = str(tmp_path / "other")
  train.train_and_evaluate(smoke_config(seed=1), other)
  assert _run_outputs(other)["archs"] != _run_outputs(workdir)["archs"]


def test_rerunning_a_finished_run_changes_nothing(smoke_run):
  """The same command on a finished workdir reports and keeps the files."""
  workdir, best = smoke_run
  before = _run_outputs(workdir)
  assert train.train_and_evaluate(smoke_config(), workdir) == best
  assert _run_outputs(workdir) == before


def test_resume_after_sigkill_gives_identical_results(smoke_run, tmp_path):
  """SIGKILL a launch.py run twice at different moments; resume; compare."""
  reference, _ = smoke_run
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "launch.py", "--experiment=smoke",
         f"--workdir={workdir}"]
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # The three processes share a compilation cache: only the first compiles.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  # Kill once after the first checkpoint, once after at least four.
  for wanted in (1, 4):
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      done = [d for d in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir)
                          else []) if d.isdigit()]
      if done and max(int(d) for d in done) >= _min_tick(wanted):
        break
      time.sleep(0.05)
    assert proc.poll() is None, "run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(workdir, "best_arch.json"))
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resumed" in result.stdout
  assert _run_outputs(workdir) == _run_outputs(reference)


def _min_tick(n):
  # Smoke checkpoints every 2 steps: the n-th lands at tick >= 2 n.
  return 2 * n


def test_random_ws_trains_no_controller(tmp_path):
  """random_ws: no controller phase, controller untouched, a derived cell."""
  config = smoke_config(**{"search.algorithm": "random_ws"})
  workdir = str(tmp_path / "rs")
  best = train.train_and_evaluate(config, workdir)
  assert _read_lines(os.path.join(workdir, "archs.jsonl")) == []
  assert math.isfinite(best["test_ppl"])
  records = _read_lines(os.path.join(workdir, "metrics.jsonl"))
  assert not any("ctrl/reward" in r for r in records)
  variant = smoke_config(**{"search.algorithm": "random_ws",
                            "search.random_sampler": "controller"})
  best = train.train_and_evaluate(variant, str(tmp_path / "rs_ctrl"))
  assert math.isfinite(best["valid_ppl"])


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
  """A NaN learning rate: the run stops naming the step; no best_arch.json."""
  config = smoke_config(**{"train.lr": float("nan")})
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.TrainingDiverged,
                     match=r"shared step 1 .*last good checkpoint"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "best_arch.json"))
