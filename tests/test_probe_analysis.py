"""probe_analysis.analyse gives the numbers of one correlate call per pair."""

import numpy as np
import pytest

from benchmarks import probe_stats
from experiments import common
from nas_jax.analysis import edit_distance
from nas_jax.analysis import pairwise
from nas_jax.analysis import probe_analysis

from test_correlate_batch import _compare


@pytest.fixture(scope="module")
def analysed():
  """Synthetic probe data of 24 cells (two with infinite ppl), analysed."""
  args = probe_stats.parse_args(["--num-cells", "24", "--num-inf", "2",
                                 "--carry-dim", "8", "--seed", "3"])
  raw = probe_stats.synthetic_raw(args)
  p = common.probe_config()
  p.num_cells, p.num_permutations, p.num_bootstrap = 24, 49, 60
  p.ged_max_pairs, p.seed = 12, 3
  return raw, p, probe_analysis.analyse(raw, p, "synthetic")


def _one_call_per_pair(raw, arm, arm_res, p, pairs):
  """What probe_analysis computed before the batched path: one
  pairwise.correlate (or permuted_pairs_control) call per entry."""
  metrics, main_dist = arm_res["_matrices"], arm_res["_hidden_l2"]
  out = {}
  for carry in probe_analysis.CARRIES:
    x = probe_analysis._carry(raw, arm, carry)
    for kind in ("l2", "cosine"):
      full = (carry, kind) == ("h", "l2")
      dist = main_dist if full else probe_analysis._distance(x, kind)
      table = {}
      for name in probe_analysis.METRICS:
        kwargs = {}
        if name in probe_analysis.SUBSET_METRICS:
          known = np.isfinite(metrics[name][pairs[:, 0], pairs[:, 1]])
          kwargs["pairs"] = pairs[known]
        table[name] = pairwise.correlate(
            dist, metrics[name], num_permutations=p.num_permutations,
            num_bootstrap=p.num_bootstrap if full else 0, seed=p.seed,
            **kwargs)
      if full:
        ppl = raw[f"{arm}/ppl"]
        finite = np.isfinite(ppl)
        all_pairs = np.stack(pairwise.pairs_index(ppl.shape[0]), axis=1)
        keep = finite[all_pairs[:, 0]] & finite[all_pairs[:, 1]]
        table["abs_ppl_difference"] = pairwise.correlate(
            dist, probe_analysis._ppl_difference(ppl), pairs=all_pairs[keep],
            num_permutations=p.num_permutations,
            num_bootstrap=p.num_bootstrap, seed=p.seed)
      out[f"{carry}/{kind}"] = table
  return out


def test_correlations_equal_one_correlate_call_each(analysed):
  raw, p, results = analysed
  pairs = edit_distance.sample_pairs(24, p.ged_max_pairs, p.seed)
  for arm in probe_analysis.ARMS:
    arm_res = results["arms"][arm]
    ref = _one_call_per_pair(raw, arm, arm_res, p, pairs)
    assert list(arm_res["correlations"]) == list(ref)
    for key, table in ref.items():
      assert list(arm_res["correlations"][key]) == list(table)
      _compare(arm_res["correlations"][key], table, f"{arm}/{key}")


def test_permuted_control_equals_permuted_pairs_control(analysed):
  _, p, results = analysed
  trained = results["arms"]["trained"]
  assert "permuted" not in results["arms"]["untrained"]
  names = [n for n in probe_analysis.METRICS
           if n not in probe_analysis.SUBSET_METRICS]
  assert list(trained["permuted"]) == names
  for name in names:
    ref = pairwise.permuted_pairs_control(
        trained["_hidden_l2"], trained["_matrices"][name], seed=p.seed)
    assert ref["num_permutations"] == 999  # Its default, not the setting.
    _compare(trained["permuted"][name], ref, name)


def test_arm_keys_keep_their_order(analysed):
  """results.json's layout: the keys and their order are unchanged."""
  _, _, results = analysed
  assert list(results["arms"]["trained"]) == [
      "unique_cells", "ppl_median", "ppl_non_finite", "ged_timeouts",
      "correlations", "nearest_neighbour", "ridge", "permuted", "per_step",
      "_matrices", "_hidden_l2", "_properties"]
