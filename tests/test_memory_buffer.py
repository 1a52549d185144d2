"""The memory_buffer experiment: configs, the comparison, one tiny run."""

import json
import math
import os

import numpy as np
import pytest

import experiments
from experiments import common
from experiments import memory_buffer
from nas_jax import files
from nas_jax import settings
from nas_jax.analysis import buffer_comparison
from nas_jax.analysis import probe_analysis

PTB_VOCAB = 10000


def _config(preset=None):
  spec = "memory_buffer" if preset is None else f"memory_buffer:{preset}"
  return experiments.get_config(spec)[1]


def test_default_config_pairs_seeds_and_arms():
  """Defaults: six seeds, plain ENAS against the clean buffer."""
  config = _config()
  assert tuple(config.seeds) == (0, 1, 2, 3, 4, 5)
  assert tuple(config.arms) == ("none", "clean")
  assert config.buffer.variant == "none"
  assert tuple(_config("paper").seeds) == tuple(config.seeds)
  assert tuple(_config("smoke").seeds) == (0, 1)


@pytest.mark.parametrize("preset", (None, "paper", "smoke"))
@pytest.mark.parametrize("arm", sorted(memory_buffer.ARMS))
def test_run_config_sets_seed_and_arm_and_passes_make_setup(preset, arm):
  """A run's config is the experiment's with its seed and arm, minus its own
  keys, and make_setup accepts it."""
  config = _config(preset)
  sub = memory_buffer.run_config(config, arm, 7)
  assert sub.seed == 7
  assert "seeds" not in sub and "arms" not in sub
  assert sub.buffer.variant == arm
  setup = settings.make_setup(sub, vocab_size=PTB_VOCAB)
  assert setup.buffer.variant == arm
  assert setup.buffer.policy == ("authors" if arm == "faithful"
                                 else config.buffer.policy)
  # Only the seed and the buffer settings differ between arms.
  other = memory_buffer.run_config(config, "none", 7).to_dict()
  mine = sub.to_dict()
  assert {k for k in mine if mine[k] != other[k]} <= {"buffer"}
  # The experiment's config is not changed.
  assert config.buffer.variant == "none"


def test_paper_preset_uses_the_authors_schedule():
  """Paper sizes store from epoch 5 and replay from epoch 10 (DESIGN)."""
  config = _config("paper")
  assert config.buffer.store_start_epoch == 5
  assert config.buffer.replay_start_epoch == 10
  assert config.buffer.store_per_epoch == 1000
  assert config.buffer.replay_samples == 100
  assert config.buffer.weight == 1.0


@pytest.mark.parametrize("overrides, message", [
    ({"arms": ("none", "replay")}, "unknown"),
    ({"arms": ("clean",)}, "'none'"),
    ({"arms": ("none",)}, "at least one"),
    ({"arms": ("none", "clean", "clean")}, "each once"),
    ({"seeds": ()}, "seeds"),
    ({"seeds": (0, 0)}, "seeds"),
    ({"seeds": (0, 1.5)}, "seeds"),
    ({"buffer.variant": "clean"}, "--config.arms"),
])
def test_bad_experiment_config_is_a_config_error(overrides, message):
  """Bad arms, seeds or a global buffer variant fail before any run starts."""
  config = common.apply_overrides(_config("smoke"), overrides)
  with pytest.raises(settings.ConfigError, match=message):
    memory_buffer.run(config, "/nonexistent/never-created")


def test_check_puts_the_baseline_first():
  config = _config()
  config.arms = ("faithful", "none", "clean")
  arms, seeds = memory_buffer._check(config)  # pylint: disable=protected-access
  assert arms == ("none", "faithful", "clean")
  assert seeds == (0, 1, 2, 3, 4, 5)


def _fake_run(scores, valid_ppl):
  """One run's collected numbers with the given signed encoding scores."""
  return {
      "metrics": {name: {"rho": buffer_comparison._sign(name) * scores[name],  # pylint: disable=protected-access
                         "ci": [math.nan, math.nan], "p_mantel": 0.01,
                         "score": scores[name]}
                  for name in buffer_comparison.METRICS},
      "all": {variant: {name: {"spearman": buffer_comparison._sign(name)  # pylint: disable=protected-access
                               * scores[name], "pearson": 0.0,
                               "score": scores[name]}
                        for name in buffer_comparison.METRICS}
              for variant in ("h/l2", "c/cosine")},
      "untrained": {name: 0.0 for name in buffer_comparison.METRICS},
      "ridge_r2": {"depth": 0.5},
      "derived": {"arch": "0 0", "valid_ppl": valid_ppl,
                  "test_ppl": valid_ppl + 1.0},
      "unique_cells": 10,
  }


def _fake_runs(shift, num_seeds=8, seed=0):
  rng = np.random.default_rng(seed)
  runs = {"none": {}, "clean": {}}
  for s in range(num_seeds):
    base = {n: float(rng.uniform(0.1, 0.3))
            for n in buffer_comparison.METRICS}
    noise = 0.01 * rng.normal()
    runs["none"][s] = _fake_run(base, 300.0 + s)
    runs["clean"][s] = _fake_run({n: v + shift + noise
                                  for n, v in base.items()}, 290.0 + s)
  return runs


@pytest.mark.parametrize("shift, words", [
    (0.1, "raised the correlation"),
    (-0.1, "lowered the correlation"),
    (0.0, "No significant change"),
])
def test_verdict_follows_the_numbers(shift, words):
  """A clear rise, a clear fall and no change give the three verdicts."""
  seeds = list(range(8))
  results = buffer_comparison.compare(_fake_runs(shift), ("none", "clean"),
                                      seeds, num_bootstrap=500)
  comp = results["comparisons"]["clean"]
  primary = comp["encoding_score"][buffer_comparison.PRIMARY]
  assert primary["n"] == 8
  if shift:
    assert primary["mean_difference"] == pytest.approx(shift, abs=0.02)
  assert words in comp["verdict"]
  # Every carry / distance is compared the same way.
  for variant in ("h/l2", "c/cosine"):
    assert (comp["all_correlations"][variant][buffer_comparison.PRIMARY]
            == primary)
  # The derived cells are 10 ppl better in every seed.
  assert comp["derived"]["valid_ppl"]["mean_difference"] == pytest.approx(-10)


def test_tiny_experiment_end_to_end(tmp_path):
  """One seed, both arms, smoke sizes: runs, probes, compares; the same
  command again finds every run finished and rewrites the same numbers."""
  config = _config("smoke")
  config.seeds = (0,)
  config.train.epochs = 2
  workdir = str(tmp_path / "mb")
  results = memory_buffer.run(config, workdir)
  for arm in ("none", "clean"):
    d = files.run_dir(workdir, arm, 0)
    assert os.path.isfile(os.path.join(d, "results.json"))
    assert os.path.isfile(os.path.join(d, "best_arch.json"))
  # The buffered run logged its buffer and replay loss; the baseline did not.
  with open(os.path.join(files.run_dir(workdir, "clean", 0),
                         "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  sizes = [r["buffer/size"] for r in rows if "buffer/size" in r]
  assert sizes and max(sizes) == config.buffer.store_per_epoch * 2
  assert any(r.get("ctrl/replay_weight") == 1.0 for r in rows)
  with open(os.path.join(files.run_dir(workdir, "none", 0),
                         "metrics.jsonl")) as f:
    assert not any("buffer/size" in json.loads(line) for line in f)
  for name in ("report.md", "results.json",
               os.path.join("figures", "encoding_score_by_arm.png")):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  comp = results["comparisons"]["clean"]
  assert comp["encoding_score"][buffer_comparison.PRIMARY]["n"] == 1
  assert "Too few seeds" in comp["verdict"]
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "clean vs none" in report and buffer_comparison.PRIMARY in report
  # It opens with the runs: each one's returned cell and own report.
  assert "## The searches" in report
  assert "[report](clean/seed_0/report.md)" in report
  assert os.path.getsize(os.path.join(workdir, "figures",
                                      "returned_cells.png")) > 0
  with open(os.path.join(files.run_dir(workdir, "clean", 0),
                         "report.md")) as f:
    assert "## The search\n" in f.read()
  again = memory_buffer.run(config, workdir)
  assert (again["comparisons"]["clean"]["encoding_score"]
          == comp["encoding_score"])


class _Stop(Exception):
  pass


@pytest.mark.parametrize("mode, expected", [
    ("stacked", [("none", (0, 1, 2)), ("clean", (0, 1, 2))]),
    ("sequential", [("none", (0,)), ("clean", (0,)), ("none", (1,)),
                    ("clean", (1,)), ("none", (2,)), ("clean", (2,))]),
])
def test_seeds_mode_batches_the_runs(mode, expected, monkeypatch, tmp_path):
  """Stacked: each arm's seeds in one train_many call (stacked); sequential:
  seed by seed, whole pairs first. Each run keeps its own directory."""
  calls = []

  def train_many(configs, workdirs, *, stacked):
    arms = {c.buffer.variant for c in configs}
    calls.append((arms.pop(), tuple(c.seed for c in configs)))
    assert not arms and stacked == (len(configs) > 1)
    assert workdirs == [files.run_dir(str(tmp_path), calls[-1][0], c.seed)
                        for c in configs]
    return []

  def stop(*args, **kwargs):
    raise _Stop

  monkeypatch.setattr(memory_buffer.train, "train_many", train_many)
  monkeypatch.setattr(buffer_comparison, "collect", stop)
  config = _config("smoke")
  config.seeds = (0, 1, 2)
  config.seeds_mode = mode
  with pytest.raises(_Stop):
    memory_buffer.run(config, str(tmp_path))
  assert calls == expected
  config.seeds_mode = "parallel"
  with pytest.raises(settings.ConfigError, match="seeds_mode"):
    memory_buffer.run(config, str(tmp_path))


def test_auto_seeds_mode_is_sequential_on_a_cpu():
  assert not common.stacked_seeds(_config())  # The tests run on the CPU.
  assert _config().seeds_mode == "auto"


def test_verdict_is_judged_on_the_recency_controlled_score():
  """With recency-controlled scores in every run, the verdict follows them,
  not the raw score: a raw rise that vanishes given the last decision is no
  support; the policy conditioning's change is reported beside it."""
  seeds = list(range(8))
  runs = _fake_runs(0.1)
  rng = np.random.default_rng(5)
  for arm, by_seed in runs.items():
    for run in by_seed.values():
      run["recency_score"] = {n: float(rng.normal(0.02, 0.01))
                              for n in probe_analysis.WHOLE_METRICS}
      run["conditioning_log10"] = -6.0 + (1.0 if arm == "clean" else 0.0)
  comp = buffer_comparison.compare(runs, ("none", "clean"), seeds,
                                   num_bootstrap=500)["comparisons"]["clean"]
  assert comp["encoding_score"][buffer_comparison.PRIMARY][
      "mean_difference"] == pytest.approx(0.1, abs=0.02)
  assert "beyond the last decision" in comp["verdict"]
  assert "No significant change" in comp["verdict"]
  assert comp["conditioning_log10"]["mean_difference"] == pytest.approx(1.0)
  assert "Policy conditioning" in comp["verdict"]
  # Without them (runs probed before the control) the raw score decides.
  plain = buffer_comparison.compare(_fake_runs(0.1), ("none", "clean"),
                                    seeds, num_bootstrap=500)
  assert "raised the correlation" in plain["comparisons"]["clean"]["verdict"]
  assert "no recency control" in plain["comparisons"]["clean"]["verdict"]
