"""Pair matrices and their correlation agree with scipy; find (no) structure."""

import numpy as np
import pytest
from scipy import stats as sp_stats
from scipy.spatial import distance

from nas_jax.analysis import pairwise

from conftest import integer_metric as _integer_metric
from conftest import structured_carries as _structured


def test_pairwise_l2_matches_scipy():
  x = 100.0 + np.random.default_rng(0).normal(size=(30, 8))
  d = pairwise.pairwise_l2(x)
  np.testing.assert_allclose(d, distance.squareform(distance.pdist(x)),
                             rtol=1e-9, atol=1e-9)
  assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0.0)
  same = pairwise.pairwise_l2(np.ones((3, 4)))
  assert np.all(same == 0.0)


def test_pairwise_cosine_matches_scipy_and_zero_rows():
  x = np.random.default_rng(1).normal(size=(20, 5))
  sim = pairwise.pairwise_cosine_similarity(x)
  np.testing.assert_allclose(
      sim, 1.0 - distance.squareform(distance.pdist(x, "cosine")),
      atol=1e-12)
  x[3] = 0.0
  sim = pairwise.pairwise_cosine_similarity(x)
  assert np.all(np.isfinite(sim))
  assert np.all(np.delete(sim[3], 3) == 0.0) and sim[3, 3] == 1.0
  assert np.all(np.abs(sim) <= 1.0)


def test_upper_triangle_and_pairs_index_are_row_major():
  m = np.arange(16.0).reshape(4, 4)
  i, j = pairwise.pairs_index(4)
  assert list(zip(i, j)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
  np.testing.assert_array_equal(pairwise.upper_triangle(m), [1, 2, 3, 6, 7, 11])


def test_correlate_matches_scipy_on_pairs():
  hidden, _ = _structured(25, noise=1.0)
  a = pairwise.pairwise_l2(hidden)
  b = _integer_metric(25, seed=2)
  res = pairwise.correlate(a, b, num_permutations=0, num_bootstrap=0)
  x, y = pairwise.upper_triangle(a), pairwise.upper_triangle(b)
  sp, pe = sp_stats.spearmanr(x, y), sp_stats.pearsonr(x, y)
  assert res["num_pairs"] == 300 and res["num_cells"] == 25
  assert res["spearman"]["rho"] == pytest.approx(sp.statistic, abs=1e-12)
  assert res["spearman"]["p_naive"] == pytest.approx(sp.pvalue, rel=1e-9)
  assert res["pearson"]["r"] == pytest.approx(pe.statistic, abs=1e-12)
  assert res["pearson"]["p_naive"] == pytest.approx(pe.pvalue, rel=1e-9)
  slope, intercept = np.polyfit(x, y, 1)
  fit = res["linear_fit"]
  assert fit["slope"] == pytest.approx(slope, rel=1e-9)
  assert fit["intercept"] == pytest.approx(intercept, rel=1e-9)
  assert fit["r2"] == pytest.approx(pe.statistic ** 2, abs=1e-12)
  assert np.isnan(res["spearman"]["p_mantel"])
  assert np.all(np.isnan(res["spearman"]["ci"]))


def test_monotone_relation_gives_rho_one_and_smallest_mantel_p():
  points = np.random.default_rng(3).normal(size=(30, 4))
  a = pairwise.pairwise_l2(points)
  n = 199
  res = pairwise.correlate(np.exp(a), a, num_permutations=n, num_bootstrap=0)
  assert res["spearman"]["rho"] == pytest.approx(1.0, abs=1e-12)
  assert res["spearman"]["p_mantel"] == pytest.approx(1 / (n + 1))
  linear = pairwise.correlate(a, 3.0 * a + 1.0, num_permutations=n,
                           num_bootstrap=0)
  assert linear["pearson"]["r"] == pytest.approx(1.0, abs=1e-12)
  assert linear["pearson"]["p_mantel"] == pytest.approx(1 / (n + 1))
  assert linear["linear_fit"]["slope"] == pytest.approx(3.0)
  assert linear["linear_fit"]["intercept"] == pytest.approx(1.0)
  negative = pairwise.correlate(a, -a, num_permutations=n, num_bootstrap=0)
  assert negative["spearman"]["rho"] == pytest.approx(-1.0, abs=1e-12)
  assert negative["spearman"]["p_mantel"] == pytest.approx(1 / (n + 1))


def test_independent_matrices_are_not_significant():
  rng = np.random.default_rng(4)
  a = pairwise.pairwise_l2(rng.normal(size=(40, 8)))
  b = pairwise.pairwise_l2(rng.normal(size=(40, 3)))
  res = pairwise.correlate(a, b, num_permutations=199, num_bootstrap=0, seed=1)
  for key, stat in (("spearman", "rho"), ("pearson", "r")):
    assert abs(res[key][stat]) < 0.2
    assert res[key]["p_mantel"] > 0.01
  # The naive p-value is the anti-conservative one; Mantel is never smaller
  # than 1 / (n + 1).
  assert res["spearman"]["p_mantel"] >= 1 / 200


def test_bootstrap_ci_contains_estimate_and_shrinks_with_k():
  widths = []
  for k in (20, 80):
    hidden, graph = _structured(k, noise=2.0, seed=10)
    res = pairwise.correlate(pairwise.pairwise_l2(hidden), graph,
                          num_permutations=0, num_bootstrap=200, seed=2)
    for key, stat in (("spearman", "rho"), ("pearson", "r")):
      lo, hi = res[key]["ci"]
      assert lo <= res[key][stat] <= hi
      assert res[key]["bootstrap_valid"] == 200
    widths.append(res["spearman"]["ci"][1] - res["spearman"]["ci"][0])
  assert widths[1] < 0.7 * widths[0]


def test_structure_is_detected_and_permuted_control_removes_it():
  hidden, graph = _structured(40, noise=1.0, seed=11)
  a = pairwise.pairwise_l2(hidden)
  res = pairwise.correlate(a, graph, num_permutations=199, num_bootstrap=100)
  assert res["spearman"]["rho"] > 0.5
  assert res["spearman"]["p_mantel"] == pytest.approx(1 / 200)
  assert res["spearman"]["ci"][0] > 0.3
  control = pairwise.permuted_pairs_control(a, graph, seed=0,
                                         num_permutations=199)
  assert abs(control["spearman"]["rho"]) < 0.2
  assert control["spearman"]["p_mantel"] > 0.01
  perm = pairwise.control_permutation(40, seed=0)
  assert sorted(perm) == list(range(40)) and control["control_seed"] == 0
  direct = pairwise.correlate(a[np.ix_(perm, perm)], graph, num_permutations=0,
                           num_bootstrap=0)
  assert direct["spearman"]["rho"] == control["spearman"]["rho"]


def test_subset_pairs_with_unknown_values_elsewhere():
  k = 30
  hidden, graph = _structured(k, noise=1.0, seed=12)
  a = pairwise.pairwise_l2(hidden)
  rng = np.random.default_rng(13)
  i, j = pairwise.pairs_index(k)
  pick = np.sort(rng.choice(i.size, size=120, replace=False))
  pairs = np.stack([j[pick], i[pick]], axis=1)  # Either order is accepted.
  b = np.full((k, k), np.nan)
  b[i[pick], j[pick]] = graph[i[pick], j[pick]]
  b[j[pick], i[pick]] = graph[i[pick], j[pick]]
  res = pairwise.correlate(a, b, pairs=pairs, num_permutations=199,
                        num_bootstrap=100)
  xs, ys = a[i[pick], j[pick]], graph[i[pick], j[pick]]
  assert res["pairs"] == "subset" and res["num_pairs"] == 120
  assert res["spearman"]["rho"] == pytest.approx(
      sp_stats.spearmanr(xs, ys).statistic, abs=1e-12)
  assert res["spearman"]["p_mantel"] == pytest.approx(1 / 200)
  lo, hi = res["spearman"]["ci"]
  assert lo <= res["spearman"]["rho"] <= hi
  with pytest.raises(ValueError, match="finite"):
    pairwise.correlate(a, b, num_permutations=0, num_bootstrap=0)


def test_all_pairs_given_explicitly_match_the_fast_path():
  hidden, graph = _structured(15, noise=3.0, seed=14)
  a = pairwise.pairwise_l2(hidden)
  i, j = pairwise.pairs_index(15)
  fast = pairwise.correlate(a, graph, num_permutations=99, num_bootstrap=50)
  generic = pairwise.correlate(a, graph, pairs=np.stack([i, j], 1),
                            num_permutations=99, num_bootstrap=50)
  for key in ("spearman", "pearson"):
    for field in ("p_mantel", "ci", "null_sd"):
      np.testing.assert_allclose(fast[key][field], generic[key][field],
                                 atol=1e-10)


def test_deterministic_given_seed_and_skippable_parts():
  hidden, graph = _structured(20, noise=4.0, seed=15)
  a = pairwise.pairwise_l2(hidden)
  one = pairwise.correlate(a, graph, num_permutations=99, num_bootstrap=50,
                        seed=3)
  two = pairwise.correlate(a, graph, num_permutations=99, num_bootstrap=50,
                        seed=3)
  assert one == two
  other = pairwise.correlate(a, graph, num_permutations=99, num_bootstrap=50,
                          seed=4)
  assert other["spearman"]["ci"] != one["spearman"]["ci"]
  # Streams are separate: skipping the bootstrap leaves the Mantel p alone.
  no_boot = pairwise.correlate(a, graph, num_permutations=99, num_bootstrap=0,
                            seed=3)
  assert no_boot["spearman"]["p_mantel"] == one["spearman"]["p_mantel"]
  assert np.all(np.isnan(no_boot["spearman"]["ci"]))


def test_constant_input_and_bad_input():
  a = pairwise.pairwise_l2(np.random.default_rng(16).normal(size=(10, 2)))
  res = pairwise.correlate(a, np.ones((10, 10)), num_permutations=9,
                        num_bootstrap=9)
  assert res["constant_input"]
  assert np.isnan(res["spearman"]["rho"]) and np.isnan(res["pearson"]["r"])
  with pytest.raises(ValueError, match="symmetric"):
    pairwise.correlate(a, np.triu(a), num_permutations=0, num_bootstrap=0)
  with pytest.raises(ValueError, match="distinct"):
    pairwise.correlate(a, a, pairs=[[1, 1], [0, 2], [3, 4]])
  with pytest.raises(ValueError, match="duplicates"):
    pairwise.correlate(a, a, pairs=[[1, 2], [2, 1], [3, 4]])


def test_two_sided_permutation_p():
  assert pairwise.two_sided_permutation_p(np.array([0.1, -0.5, 0.2]),
                                          0.4) == 0.5
  assert pairwise.two_sided_permutation_p(np.array([0.1, 0.2, 0.3]),
                                          -0.9) == 0.25
  assert np.isnan(pairwise.two_sided_permutation_p(np.zeros(0), 0.4))


@pytest.mark.parametrize("n, slope", [(5, 0.0), (40, 0.3), (3000, 0.05),
                                      (3000, 0.9)])
def test_naive_p_values_match_scipy(n, slope):
  """From the coefficients, without ranking again: scipy's p-values."""
  rng = np.random.default_rng(n)
  x = rng.normal(size=n)
  y = slope * x + rng.normal(size=n)
  rho = pairwise.pearson(sp_stats.rankdata(x), sp_stats.rankdata(y))
  p_spearman, p_pearson = pairwise.naive_p_values(rho, pairwise.pearson(x, y),
                                                  n)
  assert p_spearman == pytest.approx(sp_stats.spearmanr(x, y).pvalue,
                                     rel=1e-9)
  assert p_pearson == pytest.approx(sp_stats.pearsonr(x, y).pvalue, rel=1e-9)
