"""Tests for the controller probe: collection from a run, analysis, report."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import probe
from nas_jax import controller
from nas_jax import data
from nas_jax import probe_sampling
from nas_jax import search_space
from nas_jax import settings
from nas_jax import steps

from conftest import TOY_VOCAB


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
  """A smoke search run, then the probe on it (what enas_probe:smoke does)."""
  workdir = str(tmp_path_factory.mktemp("runs") / "enas_probe_smoke")
  module, config = experiments.get_config("enas_probe:smoke")
  results = module.run(config, workdir)
  return workdir, config, results


def test_probe_writes_report_figures_results_and_raw_data(probed_run):
  """report.md, figures/*.png, results.json and probe.npz in the run dir."""
  workdir, config, results = probed_run
  num_steps = search_space.num_tokens(config.model.num_nodes)
  for name in ("report.md", "results.json", "probe.npz", "best_arch.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  figures = os.listdir(os.path.join(workdir, "figures"))
  # The probe's figures (the search report adds its own beside them), with
  # the t-SNE one from 20 cells on.
  probe_figures = {"hidden_distance_density.png", "hidden_vs_graph_metrics.png",
                   "closest_farthest_pairs.png", "hidden_vs_ppl_difference.png",
                   "hidden_pca.png", "per_step_decisions.png",
                   "policy_conditioning.png"}
  if config.probe.num_cells >= 20:
    probe_figures.add("hidden_tsne.png")
  assert probe_figures <= set(figures)
  report = open(os.path.join(workdir, "report.md")).read()
  for text in ("Claim 3", "Claim 4", "has **not** seen the last",
               "aligned_edit_distance", "untrained", "permuted"):
    assert text in report, text
  for line in report.splitlines():
    if line.startswith("![") and "](" in line:
      target = line.split("](")[1].rstrip(")")
      assert os.path.isfile(os.path.join(workdir, target)), target
  stored = json.load(open(os.path.join(workdir, "results.json")))
  assert stored["num_cells"] == config.probe.num_cells
  assert stored["num_pairs"] == 20 * 19 // 2
  assert set(stored["arms"]) == {"trained", "untrained"}
  main = stored["arms"]["trained"]["correlations"]["h/l2"]
  for name in ("aligned_edit_distance", "common_connections",
               "common_activations", "jaccard_edges", "wl_kernel",
               "topological_ged", "labelled_ged", "abs_ppl_difference"):
    assert name in main, name
    assert -1.0 <= main[name]["spearman"]["rho"] <= 1.0
  assert "claim3" in stored["verdicts"] and "claim4" in stored["verdicts"]
  assert results["timing"]["total_seconds"] > 0
  # The recency controls and the policy-conditioning test, for both arms.
  for arm in ("trained", "untrained"):
    rec = stored["arms"][arm]["recency"]
    assert set(rec) == {"h/l2", "c/l2", "ch/l2"}
    assert "p_holm" in rec["h/l2"]["wl_kernel"]["given_last_decision"]
    curve = stored["arms"][arm]["conditioning"]["curve"]
    assert curve["distance"][0] == 1 and len(curve["mean"]) == num_steps - 1
  assert 0.0 <= stored["conditioning_test"]["p"] <= 1.0
  for text in ("Recency controls", "Policy conditioning"):
    assert text in report, text


def test_probe_npz_holds_the_last_step_carries(probed_run):
  """h/c in probe.npz are the carries of the last decision step (re-scored)."""
  workdir, config, _ = probed_run
  raw = np.load(os.path.join(workdir, "probe.npz"))
  k = config.probe.num_cells
  num_steps = search_space.num_tokens(config.model.num_nodes)
  assert raw["trained/tokens"].shape == (k, num_steps)
  assert raw["trained/h"].shape == (k, config.controller.hidden_size)
  assert raw["trained/ppl"].shape == (k,)
  positions = raw["conditioning_positions"]
  assert raw["trained/conditioning_kl"].shape == (k, len(positions),
                                                   num_steps)
  assert np.all(np.isfinite(raw["trained/ppl"]))
  # Re-score the untrained controller's cells: its carries at the last step.
  setup = settings.make_setup(config, 10_000)
  cfg = setup.ctrl
  params = steps.init_state(setup, config.seed).ctrl
  scored = controller.score(params, jnp.asarray(raw["untrained/tokens"]),
                            config=cfg, mode="derive")
  np.testing.assert_allclose(raw["untrained/h"], scored.h[:, -1], atol=1e-5)
  np.testing.assert_allclose(raw["untrained/c"], scored.c[:, -1], atol=1e-5)
  # The trained controller moved away from its initial parameters.
  assert not np.allclose(raw["trained/h"], raw["untrained/h"])


def test_probe_experiment_reanalyses_an_existing_run(probed_run, capsys):
  """--experiment=probe --config.run_dir=DIR reproduces the same numbers."""
  workdir, _, results = probed_run
  module, config = experiments.get_config("probe:smoke")
  config.run_dir = workdir
  again = module.run(config, None)
  main = lambda r: r["arms"]["trained"]["correlations"]["h/l2"][
      "aligned_edit_distance"]["spearman"]["rho"]
  assert main(again) == pytest.approx(main(results))


def test_probe_of_a_directory_without_a_run_is_a_config_error(tmp_path):
  """A run_dir that is not a search run gives a ConfigError naming it."""
  module, config = experiments.get_config("probe:smoke")
  config.run_dir = str(tmp_path)
  with pytest.raises(settings.ConfigError, match="config.json"):
    module.run(config, None)


def test_random_input_randomises_step_0_of_the_random_state_samples(toy_data):
  """probe.random_input (the authors' probe): the random-state samples also
  read a random step-0 input; every other array is the default's."""
  config = experiments.get_config("smoke")[1]
  setup = settings.make_setup(config, TOY_VOCAB)
  state = steps.init_state(setup, config.seed)
  window = data.window(toy_data, 0, setup.shared.bptt)
  key = jax.random.key(5)
  default, randomised = (
      probe_sampling.sample_arm(state.ctrl, state.shared, key, 8, setup,
                                window, 4, random_input)
      for random_input in (False, True))
  assert default.keys() == randomised.keys()
  for name, value in default.items():
    if name.startswith("random_init_"):
      assert not np.allclose(value[:, 0], randomised[name][:, 0]), name
    else:
      np.testing.assert_array_equal(value, randomised[name], err_msg=name)


def test_the_probe_passes_random_input_to_collect(monkeypatch, tmp_path):
  """The probe section's random_input reaches probe_sampling.collect."""
  seen = []

  def collect(run, num_cells, seed, random_input):
    seen.append(random_input)
    raise InterruptedError  # Nothing after the sampling is needed.

  monkeypatch.setattr(probe_sampling, "collect", collect)
  for preset in ("smoke", "paper"):
    config = experiments.get_config(f"probe:{preset}")[1]
    with pytest.raises(InterruptedError):
      probe.run_probe(config.probe, None, str(tmp_path))
  assert seen == [False, True]
