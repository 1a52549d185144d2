"""The multi-seed probe's paired verdicts (nas_jax/analysis/across_seeds.py)."""

import json
import os

import numpy as np
import pytest

from nas_jax import files
from nas_jax import settings
from nas_jax.analysis import across_seeds
from nas_jax.analysis import probe_analysis

SEEDS = (0, 1, 2, 3, 4)


def _arm(score, kl, entropy=2.0, rng=None):
  """One controller's numbers as read_run returns them: every recency score
  ``score`` (plus a little noise), policy conditioning ``kl``."""
  noise = (lambda: 0.0) if rng is None else (lambda: rng.normal(0, 0.002))
  return {
      "recency_score": {v: {m: score + noise() for m in across_seeds.METRICS}
                        for v in across_seeds.VIEWS},
      "raw_score": {m: score + 0.2 + noise() for m in across_seeds.METRICS},
      "kl_beyond_last": kl, "kl_last": 10 * kl,
      "mean_step_entropy": entropy, "unique_cells": 100}


def _runs(trained_score, trained_kl, untrained_score=0.1, untrained_kl=1e-6,
          seed=0):
  rng = np.random.default_rng(seed)
  return {s: {"num_cells": 100,
              "trained": _arm(trained_score, trained_kl * (1 + 0.1 * s), rng=rng),
              "untrained": _arm(untrained_score,
                                untrained_kl * (1 + 0.1 * s) * rng.uniform(
                                    0.8, 1.25), rng=rng)}
          for s in SEEDS}


def test_training_that_adds_structure_and_conditioning_is_found():
  """Trained carries track more structure beyond the last decision and the
  trained policy conditions 10x more, in every seed: both claims fail."""
  results = across_seeds.compare(_runs(0.2, 1e-5), SEEDS, num_bootstrap=500)
  c = results["claim3"]["recency_score"]["h/l2"]["aligned_edit_distance"]
  assert c["mean_difference"] == pytest.approx(0.1, abs=0.01)
  assert c["p_t"] <= c["p_holm"] < 0.05 and c["ci"][0] > 0
  assert results["verdicts"]["claim3"].startswith("Not supported")
  k = results["claim4"]["log10_kl"]
  assert k["mean_difference"] == pytest.approx(1.0, abs=0.1)
  assert results["verdicts"]["claim4"].startswith("Not supported")
  assert "x the untrained" in results["verdicts"]["claim4"]


def test_no_difference_between_trained_and_untrained_is_consistent():
  """Equal controllers up to noise: neither claim is contradicted, and the
  extra KL's share of the entropy is that of the difference, not of the
  trained controller's KL."""
  runs = _runs(0.1, 1e-6, seed=3)
  results = across_seeds.compare(runs, SEEDS, num_bootstrap=500)
  assert results["verdicts"]["claim3"].startswith("Consistent with the claim")
  assert results["verdicts"]["claim4"].startswith("Consistent with the claim")
  share = results["claim4"]["entropy_share"]["mean_difference"]
  t = np.array([runs[s]["trained"]["kl_beyond_last"] for s in SEEDS])
  u = np.array([runs[s]["untrained"]["kl_beyond_last"] for s in SEEDS])
  assert share == pytest.approx(np.mean((t - u) / 2.0), rel=1e-12)
  assert abs(share) < 0.1 * np.mean(t / 2.0)
  # Holm: every adjusted p at least its raw p, and 15 tests.
  tests = [results["claim3"]["recency_score"][v][m]
           for v in across_seeds.VIEWS for m in across_seeds.METRICS]
  assert len(tests) == 15
  assert all(t["p_holm"] >= t["p_t"] for t in tests)


def test_lower_trained_conditioning_is_the_claims_side():
  results = across_seeds.compare(_runs(0.1, 1e-7, seed=1), SEEDS,
                                 num_bootstrap=500)
  assert "less than an untrained LSTM" in results["verdicts"]["claim4"]


def test_one_seed_is_not_testable_over_seeds():
  runs = _runs(0.2, 1e-5)
  results = across_seeds.compare({0: runs[0]}, (0,), num_bootstrap=100)
  for claim in ("claim3", "claim4"):
    assert results["verdicts"][claim].startswith("Not testable over seeds")
    assert "One seed" in results["verdicts"][claim]


def _write_probe(directory, *, with_controls=True):
  """A results.json with the fields read_run reads."""
  def arm(rho, kl):
    out = {"unique_cells": 7,
           "per_step": {"zero_state_entropy": [1.0, 3.0]},
           "correlations": {"h/l2": {
               m: {"spearman": {"rho": rho}} for m in across_seeds.METRICS}}}
    if with_controls:
      out["recency"] = {v: {m: {"given_last_decision": {"partial_rho": rho}}
                            for m in across_seeds.METRICS}
                        for v in across_seeds.VIEWS}
      out["conditioning"] = {"beyond_last_mean": kl, "last_mean": 2 * kl}
    return out
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, files.RESULTS_FILE), "w") as f:
    json.dump({"num_cells": 7,
               "arms": {"trained": arm(-0.3, 4e-6),
                        "untrained": arm(0.1, 1e-6)}}, f)


def test_read_run_signs_scores_and_refuses_probes_without_controls(tmp_path):
  """Similarities are negated (higher score = more structure); a probe from
  before the recency controls is refused with the command that redoes it."""
  _write_probe(str(tmp_path / "a"))
  run = across_seeds.read_run(str(tmp_path / "a"))
  for name in across_seeds.METRICS:
    larger_similar = probe_analysis.METRICS[name]
    expected = 0.3 if larger_similar else -0.3
    assert run["trained"]["recency_score"]["c/l2"][name] == expected
    assert run["trained"]["raw_score"][name] == expected
  assert run["trained"]["mean_step_entropy"] == 2.0
  assert run["untrained"]["kl_beyond_last"] == 1e-6
  assert "derived" not in run  # No best_arch.json.
  _write_probe(str(tmp_path / "b"), with_controls=False)
  with pytest.raises(settings.ConfigError, match="--experiment=probe"):
    across_seeds.read_run(str(tmp_path / "b"))


def test_report_and_figure_are_written(tmp_path):
  results = across_seeds.compare(_runs(0.2, 1e-5), SEEDS, num_bootstrap=200)
  across_seeds.write_outputs(results, str(tmp_path))
  report = (tmp_path / files.REPORT_FILE).read_text()
  assert "over 5 seeds" in report and results["verdicts"]["claim3"] in report
  assert (tmp_path / files.FIGURES_DIR / "across_seeds.png").stat().st_size
  saved = json.loads((tmp_path / files.RESULTS_FILE).read_text())
  assert saved["verdicts"] == results["verdicts"]


def test_training_that_removes_structure_is_the_claims_side_with_numbers():
  """Trained scores below untrained in every seed: claim 3 is consistent,
  and the verdict counts the tests that fall and gives the trained score's
  own one-sample test."""
  runs = _runs(0.0, 1e-6, untrained_score=0.1, seed=2)
  results = across_seeds.compare(runs, SEEDS, num_bootstrap=500)
  text = results["verdicts"]["claim3"]
  assert text.startswith("Consistent with the claim: training does not raise")
  assert "of 15 tests it lowers it" in text
  own = results["claim3"]["trained_recency_score"]
  assert own["n"] == 5 and abs(own["mean_difference"]) < 0.01
  assert "The trained score itself, against 0" in text


def test_a_seed_without_a_number_is_dropped_and_left_out_of_holm():
  """A NaN score (an untestable correlation) drops that seed from its
  comparison; a test with no p stays NaN and does not count in Holm."""
  runs = _runs(0.2, 1e-5)
  runs[3]["trained"]["recency_score"]["h/l2"]["wl_kernel"] = float("nan")
  for s in SEEDS[1:]:  # One seed left: no test possible for this one.
    runs[s]["untrained"]["recency_score"]["c/l2"]["jaccard_edges"] = float(
        "nan")
  results = across_seeds.compare(runs, SEEDS, num_bootstrap=200)
  rec = results["claim3"]["recency_score"]
  assert rec["h/l2"]["wl_kernel"]["n"] == 4
  assert rec["h/l2"]["wl_kernel"]["dropped"] == 1
  untestable = rec["c/l2"]["jaccard_edges"]
  assert untestable["n"] == 1 and np.isnan(untestable["p_holm"])
  # Holm over the 14 testable ones: the smallest p times 14 at most.
  ps = [rec[v][m]["p_t"] for v in across_seeds.VIEWS
        for m in across_seeds.METRICS if np.isfinite(rec[v][m]["p_t"])]
  assert len(ps) == 14
  smallest = min(range(14), key=lambda i: ps[i])
  finite = [rec[v][m] for v in across_seeds.VIEWS
            for m in across_seeds.METRICS if np.isfinite(rec[v][m]["p_t"])]
  assert finite[smallest]["p_holm"] == pytest.approx(min(1.0, 14 * ps[smallest]))


def test_seeds_probed_with_different_cell_counts_are_refused():
  runs = _runs(0.2, 1e-5)
  runs[4]["num_cells"] = 1000
  with pytest.raises(settings.ConfigError, match="seed 4: K = 1000"):
    across_seeds.compare(runs, SEEDS, num_bootstrap=100)
