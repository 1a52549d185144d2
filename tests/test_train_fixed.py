"""train_fixed: one cell trained alone through the search loop."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import common
from experiments import train_fixed
from nas_jax import metrics
from nas_jax import settings
from nas_jax import steps

from conftest import TOY_VOCAB
from conftest import interrupt_window

VOCAB = TOY_VOCAB
CELL = "1 0 2 1 0 2 3"  # 4 nodes, the smoke preset's model.num_nodes.


def _config(arch=CELL, **overrides):
  config = experiments.get_config("train_fixed:smoke")[1]
  config.arch = arch
  return common.apply_overrides(config, overrides)


def _outputs(workdir):
  out = {}
  for name in ("metrics.jsonl", "derived.jsonl", "archs.jsonl"):
    with open(os.path.join(workdir, name)) as f:
      out[name] = [{k: v for k, v in json.loads(line).items()
                    if not metrics.is_timing(k)} for line in f]
  with open(os.path.join(workdir, "best_arch.json")) as f:
    out["best"] = json.load(f)
  return out


def test_shared_step_trains_only_the_given_cell():
  """Every slot of every step runs the fixed cell; no controller steps."""
  config = train_fixed.run_config(_config(**{"train.cells_per_step": 2}))
  setup = settings.make_setup(config, VOCAB)
  assert setup.search.fixed_cell == tuple(int(t) for t in CELL.split())
  assert setup.reinforce.steps_per_epoch == 0
  state = steps.init_state(setup, config.seed)
  data = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (30, 8)),
                     jnp.int32)
  for _ in range(2):
    state, m = steps.shared_step(state, data, setup=setup)
    np.testing.assert_array_equal(
        np.asarray(m["cells"]), np.tile(setup.search.fixed_cell, (2, 1)))
  cells, ppl = steps.derive_cells(state, data, setup=setup)
  np.testing.assert_array_equal(np.asarray(cells), [setup.search.fixed_cell])
  assert np.all(np.isfinite(np.asarray(ppl)))


@pytest.mark.parametrize("arch, message", [
    ("", "config arch"),
    ("1 0 2", "model.num_nodes"),  # 2 nodes, the model has 4.
    ("1 0 2 5 0 2 3", "parent of node 2"),
    ("1 x 2", "not an integer"),
    ("missing/best_arch.json", "no file"),
])
def test_bad_arch_is_a_config_error(arch, message):
  with pytest.raises(settings.ConfigError, match=message):
    config = train_fixed.run_config(_config(arch))
    settings.make_setup(config, VOCAB)


def test_arch_is_refused_by_searches_and_derive_must_be_one_cell():
  search = experiments.get_config("smoke")[1]
  with search.unlocked():  # Search configs have no such key.
    search.search.arch = CELL
  with pytest.raises(settings.ConfigError, match="only used by"):
    settings.make_setup(search, VOCAB)
  config = train_fixed.run_config(_config(**{"derive.num_cells": 2,
                                             "derive.chunk_size": 2}))
  with pytest.raises(settings.ConfigError, match="derive.num_cells"):
    settings.make_setup(config, VOCAB)
  config = train_fixed.run_config(_config(**{"buffer.variant": "clean"}))
  with pytest.raises(settings.ConfigError, match="buffer.variant"):
    settings.make_setup(config, VOCAB)


def test_paper_preset_has_final_training_sizes():
  config = experiments.get_config("train_fixed:paper")[1]
  assert config.model.hidden_size == 750
  assert config.train.epochs == 300
  assert config.train.lr == 20.0 and config.train.grad_clip == 0.25
  assert config.train.batch_size == 64
  # Other experiments keep the common paper preset.
  assert experiments.get_config("enas_probe:paper")[1].model.hidden_size == 1000


def test_run_from_best_arch_json_and_resume_exactly(tmp_path, monkeypatch):
  """A best_arch.json path is the same cell as its tokens; an interrupted
  run resumes to the same logs and perplexities as an uninterrupted one."""
  path = tmp_path / "best_arch.json"
  path.write_text(json.dumps({"tokens": [int(t) for t in CELL.split()],
                              "arch": CELL, "valid_ppl": 1.0}))
  config = _config(str(path))
  assert (train_fixed.run_config(config).search.arch
          == train_fixed.run_config(_config(CELL)).search.arch == CELL)
  reference = str(tmp_path / "reference")
  best = train_fixed.run(config, reference)
  assert best["arch"] == CELL
  assert math.isfinite(best["valid_ppl"]) and math.isfinite(best["test_ppl"])
  out = _outputs(reference)
  assert out["archs.jsonl"] == []  # No controller phase.
  assert not any("ctrl/reward" in r for r in out["metrics.jsonl"])
  assert [d["cells"] for d in out["derived.jsonl"]] == [
      [[int(t) for t in CELL.split()]]] * len(out["derived.jsonl"])

  workdir = str(tmp_path / "interrupted")
  # Window 3: epoch 2 (4 steps an epoch), after a checkpoint.
  interrupt_window(monkeypatch, stop_at=3)
  with pytest.raises(KeyboardInterrupt):
    train_fixed.run(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "best_arch.json"))
  monkeypatch.undo()
  train_fixed.run(config, workdir)
  assert _outputs(workdir) == out
