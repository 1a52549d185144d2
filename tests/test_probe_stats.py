"""Probe statistics agree with scipy and brute force; find (no) structure."""

import itertools

import numpy as np
import pytest
from scipy import stats as sp_stats
from scipy.spatial import distance

from nas_jax.analysis import stats


def _structured(k, noise, seed=0, dim=16):
  """Cells with a 3-d 'graph feature'; hidden states are a noisy copy.

  Returns ``(hidden float[k, dim], graph_distance float[k, k])``.
  """
  rng = np.random.default_rng(seed)
  feature = rng.normal(size=(k, 3))
  hidden = feature @ rng.normal(size=(3, dim)) + noise * rng.normal(
      size=(k, dim))
  return hidden, stats.pairwise_l2(feature)


def _integer_metric(k, seed):
  """A symmetric integer 'common connections'-like matrix, with many ties."""
  rng = np.random.default_rng(seed)
  m = rng.integers(0, 6, size=(k, k)).astype(float)
  m = np.triu(m, 1)
  return m + m.T


def test_pairwise_l2_matches_scipy():
  x = 100.0 + np.random.default_rng(0).normal(size=(30, 8))
  d = stats.pairwise_l2(x)
  np.testing.assert_allclose(d, distance.squareform(distance.pdist(x)),
                             rtol=1e-9, atol=1e-9)
  assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0.0)
  same = stats.pairwise_l2(np.ones((3, 4)))
  assert np.all(same == 0.0)


def test_pairwise_cosine_matches_scipy_and_zero_rows():
  x = np.random.default_rng(1).normal(size=(20, 5))
  sim = stats.pairwise_cosine_similarity(x)
  np.testing.assert_allclose(
      sim, 1.0 - distance.squareform(distance.pdist(x, "cosine")),
      atol=1e-12)
  x[3] = 0.0
  sim = stats.pairwise_cosine_similarity(x)
  assert np.all(np.isfinite(sim))
  assert np.all(np.delete(sim[3], 3) == 0.0) and sim[3, 3] == 1.0
  assert np.all(np.abs(sim) <= 1.0)


def test_upper_triangle_and_pairs_index_are_row_major():
  m = np.arange(16.0).reshape(4, 4)
  i, j = stats.pairs_index(4)
  assert list(zip(i, j)) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
  np.testing.assert_array_equal(stats.upper_triangle(m), [1, 2, 3, 6, 7, 11])


def test_correlate_matches_scipy_on_pairs():
  hidden, _ = _structured(25, noise=1.0)
  a = stats.pairwise_l2(hidden)
  b = _integer_metric(25, seed=2)
  res = stats.correlate(a, b, num_permutations=0, num_bootstrap=0)
  x, y = stats.upper_triangle(a), stats.upper_triangle(b)
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
  a = stats.pairwise_l2(points)
  n = 199
  res = stats.correlate(np.exp(a), a, num_permutations=n, num_bootstrap=0)
  assert res["spearman"]["rho"] == pytest.approx(1.0, abs=1e-12)
  assert res["spearman"]["p_mantel"] == pytest.approx(1 / (n + 1))
  linear = stats.correlate(a, 3.0 * a + 1.0, num_permutations=n,
                           num_bootstrap=0)
  assert linear["pearson"]["r"] == pytest.approx(1.0, abs=1e-12)
  assert linear["pearson"]["p_mantel"] == pytest.approx(1 / (n + 1))
  assert linear["linear_fit"]["slope"] == pytest.approx(3.0)
  assert linear["linear_fit"]["intercept"] == pytest.approx(1.0)
  negative = stats.correlate(a, -a, num_permutations=n, num_bootstrap=0)
  assert negative["spearman"]["rho"] == pytest.approx(-1.0, abs=1e-12)
  assert negative["spearman"]["p_mantel"] == pytest.approx(1 / (n + 1))


def test_independent_matrices_are_not_significant():
  rng = np.random.default_rng(4)
  a = stats.pairwise_l2(rng.normal(size=(40, 8)))
  b = stats.pairwise_l2(rng.normal(size=(40, 3)))
  res = stats.correlate(a, b, num_permutations=199, num_bootstrap=0, seed=1)
  for key, stat in (("spearman", "rho"), ("pearson", "r")):
    assert abs(res[key][stat]) < 0.2
    assert res[key]["p_mantel"] > 0.01
  # The naive p-value is the anti-conservative one; Mantel is never smaller
  # than 1 / (n + 1).
  assert res["spearman"]["p_mantel"] >= 1 / 200


def test_mantel_null_matches_brute_force():
  k = 8
  rng = np.random.default_rng(5)
  a = stats.pairwise_l2(rng.normal(size=(k, 3)))
  b = _integer_metric(k, seed=6)
  i, j = stats.pairs_index(k)
  x, y = a[i, j], b[i, j]
  rx, ry = sp_stats.rankdata(x), sp_stats.rankdata(y)
  perms = stats._cell_permutations(25, k, np.random.default_rng(7))
  fast = stats._mantel_all_pairs(a, x, rx, y, ry, i, j, perms)
  generic = stats._mantel_subset(a, y, ry, i, j, perms)
  brute = np.array([
      [sp_stats.pearsonr(a[np.ix_(p, p)][i, j], y).statistic,
       sp_stats.spearmanr(a[np.ix_(p, p)][i, j], y).statistic]
      for p in perms])
  np.testing.assert_allclose(fast, brute, atol=1e-12)
  np.testing.assert_allclose(generic, brute, atol=1e-12)
  # And the subset path on a real subset.
  sub = np.array([[0, 3], [5, 1], [2, 7], [4, 6], [1, 2], [0, 7]])
  si, sj = np.minimum(sub[:, 0], sub[:, 1]), np.maximum(sub[:, 0], sub[:, 1])
  ys = b[si, sj]
  null = stats._mantel_subset(a, ys, sp_stats.rankdata(ys), si, sj, perms)
  brute = np.array([
      [sp_stats.pearsonr(a[p[si], p[sj]], ys).statistic,
       sp_stats.spearmanr(a[p[si], p[sj]], ys).statistic] for p in perms])
  np.testing.assert_allclose(null, brute, atol=1e-12)


def test_bootstrap_weights_match_explicit_resamples():
  k = 9
  rng = np.random.default_rng(8)
  a = stats.pairwise_l2(rng.normal(size=(k, 2)))
  b = _integer_metric(k, seed=9)
  i, j = stats.pairs_index(k)
  boot = stats._PairBootstrap(a[i, j], b[i, j], i, j)
  draws = rng.integers(0, k, size=(6, k))
  counts = np.stack([np.bincount(d, minlength=k) for d in draws]).astype(float)
  got = boot(counts)
  for row, d in zip(got, draws):
    # Explicit resample: pairs of distinct positions, same-cell pairs dropped.
    pos = [(u, v) for u, v in itertools.combinations(d, 2) if u != v]
    xs = np.array([a[u, v] for u, v in pos])
    ys = np.array([b[u, v] for u, v in pos])
    assert row[0] == pytest.approx(sp_stats.pearsonr(xs, ys).statistic,
                                   abs=1e-10)
    assert row[1] == pytest.approx(sp_stats.spearmanr(xs, ys).statistic,
                                   abs=1e-10)


def test_bootstrap_ci_contains_estimate_and_shrinks_with_k():
  widths = []
  for k in (20, 80):
    hidden, graph = _structured(k, noise=2.0, seed=10)
    res = stats.correlate(stats.pairwise_l2(hidden), graph,
                          num_permutations=0, num_bootstrap=200, seed=2)
    for key, stat in (("spearman", "rho"), ("pearson", "r")):
      lo, hi = res[key]["ci"]
      assert lo <= res[key][stat] <= hi
      assert res[key]["bootstrap_valid"] == 200
    widths.append(res["spearman"]["ci"][1] - res["spearman"]["ci"][0])
  assert widths[1] < 0.7 * widths[0]


def test_structure_is_detected_and_permuted_control_removes_it():
  hidden, graph = _structured(40, noise=1.0, seed=11)
  a = stats.pairwise_l2(hidden)
  res = stats.correlate(a, graph, num_permutations=199, num_bootstrap=100)
  assert res["spearman"]["rho"] > 0.5
  assert res["spearman"]["p_mantel"] == pytest.approx(1 / 200)
  assert res["spearman"]["ci"][0] > 0.3
  control = stats.permuted_pairs_control(a, graph, seed=0,
                                         num_permutations=199)
  assert abs(control["spearman"]["rho"]) < 0.2
  assert control["spearman"]["p_mantel"] > 0.01
  perm = stats.control_permutation(40, seed=0)
  assert sorted(perm) == list(range(40)) and control["control_seed"] == 0
  direct = stats.correlate(a[np.ix_(perm, perm)], graph, num_permutations=0,
                           num_bootstrap=0)
  assert direct["spearman"]["rho"] == control["spearman"]["rho"]


def test_subset_pairs_with_unknown_values_elsewhere():
  k = 30
  hidden, graph = _structured(k, noise=1.0, seed=12)
  a = stats.pairwise_l2(hidden)
  rng = np.random.default_rng(13)
  i, j = stats.pairs_index(k)
  pick = np.sort(rng.choice(i.size, size=120, replace=False))
  pairs = np.stack([j[pick], i[pick]], axis=1)  # Either order is accepted.
  b = np.full((k, k), np.nan)
  b[i[pick], j[pick]] = graph[i[pick], j[pick]]
  b[j[pick], i[pick]] = graph[i[pick], j[pick]]
  res = stats.correlate(a, b, pairs=pairs, num_permutations=199,
                        num_bootstrap=100)
  xs, ys = a[i[pick], j[pick]], graph[i[pick], j[pick]]
  assert res["pairs"] == "subset" and res["num_pairs"] == 120
  assert res["spearman"]["rho"] == pytest.approx(
      sp_stats.spearmanr(xs, ys).statistic, abs=1e-12)
  assert res["spearman"]["p_mantel"] == pytest.approx(1 / 200)
  lo, hi = res["spearman"]["ci"]
  assert lo <= res["spearman"]["rho"] <= hi
  with pytest.raises(ValueError, match="finite"):
    stats.correlate(a, b, num_permutations=0, num_bootstrap=0)


def test_all_pairs_given_explicitly_match_the_fast_path():
  hidden, graph = _structured(15, noise=3.0, seed=14)
  a = stats.pairwise_l2(hidden)
  i, j = stats.pairs_index(15)
  fast = stats.correlate(a, graph, num_permutations=99, num_bootstrap=50)
  generic = stats.correlate(a, graph, pairs=np.stack([i, j], 1),
                            num_permutations=99, num_bootstrap=50)
  for key in ("spearman", "pearson"):
    for field in ("p_mantel", "ci", "null_sd"):
      np.testing.assert_allclose(fast[key][field], generic[key][field],
                                 atol=1e-10)


def test_deterministic_given_seed_and_skippable_parts():
  hidden, graph = _structured(20, noise=4.0, seed=15)
  a = stats.pairwise_l2(hidden)
  one = stats.correlate(a, graph, num_permutations=99, num_bootstrap=50,
                        seed=3)
  two = stats.correlate(a, graph, num_permutations=99, num_bootstrap=50,
                        seed=3)
  assert one == two
  other = stats.correlate(a, graph, num_permutations=99, num_bootstrap=50,
                          seed=4)
  assert other["spearman"]["ci"] != one["spearman"]["ci"]
  # Streams are separate: skipping the bootstrap leaves the Mantel p alone.
  no_boot = stats.correlate(a, graph, num_permutations=99, num_bootstrap=0,
                            seed=3)
  assert no_boot["spearman"]["p_mantel"] == one["spearman"]["p_mantel"]
  assert np.all(np.isnan(no_boot["spearman"]["ci"]))


def test_constant_input_and_bad_input():
  a = stats.pairwise_l2(np.random.default_rng(16).normal(size=(10, 2)))
  res = stats.correlate(a, np.ones((10, 10)), num_permutations=9,
                        num_bootstrap=9)
  assert res["constant_input"]
  assert np.isnan(res["spearman"]["rho"]) and np.isnan(res["pearson"]["r"])
  with pytest.raises(ValueError, match="symmetric"):
    stats.correlate(a, np.triu(a), num_permutations=0, num_bootstrap=0)
  with pytest.raises(ValueError, match="distinct"):
    stats.correlate(a, a, pairs=[[1, 1], [0, 2], [3, 4]])
  with pytest.raises(ValueError, match="duplicates"):
    stats.correlate(a, a, pairs=[[1, 2], [2, 1], [3, 4]])


def test_two_sided_permutation_p():
  assert stats.two_sided_permutation_p(np.array([0.1, -0.5, 0.2]), 0.4) == 0.5
  assert stats.two_sided_permutation_p(np.array([0.1, 0.2, 0.3]), -0.9) == 0.25
  assert np.isnan(stats.two_sided_permutation_p(np.zeros(0), 0.4))


def test_nearest_neighbour_check_finds_structure_only_when_present():
  hidden, graph = _structured(60, noise=0.3, seed=17)
  near = stats.nearest_neighbour_check(
      stats.pairwise_l2(hidden), graph, larger_is_similar=False, k=2,
      num_permutations=199)
  assert near["neighbour_mean"] < 0.5 * near["random_mean"]
  assert near["similarity_gain"] > 0 and near["difference"] < 0
  assert near["p_value"] == pytest.approx(1 / 200)
  assert near["p_mannwhitney_naive"] < 1e-6
  assert near["num_neighbour_pairs"] == 120
  # The same, phrased as a similarity.
  as_similarity = stats.nearest_neighbour_check(
      stats.pairwise_l2(hidden), -graph, larger_is_similar=True, k=2,
      num_permutations=199)
  assert as_similarity["p_value"] == near["p_value"]
  independent = np.random.default_rng(18).normal(size=(60, 16))
  none = stats.nearest_neighbour_check(
      stats.pairwise_l2(independent), graph, larger_is_similar=False,
      num_permutations=199, seed=1)
  assert none["p_value"] > 0.01
  assert abs(none["difference"]) < 3 * none["null_sd"]


def test_nearest_neighbours_ties_and_diagonal():
  d = np.array([[0, 1, 1], [1, 0, 2], [1, 2, 0]], float)
  np.testing.assert_array_equal(stats.nearest_neighbours(d, 1), [[1], [0], [0]])


def test_ridge_cv_recovers_linear_target():
  rng = np.random.default_rng(19)
  x = rng.normal(size=(100, 10)) * rng.uniform(0.1, 10.0, size=10) + 5.0
  y = x @ rng.normal(size=10) + 0.01 * rng.normal(size=100)
  res = stats.ridge_cv(x, y, seed=0)
  assert res["r2"] > 0.99 and res["r2_fold_mean"] > 0.99
  assert res["r2_constant"] <= 0.0
  assert len(res["alpha_per_fold"]) == 5
  assert res == stats.ridge_cv(x, y, seed=0)


@pytest.mark.parametrize("dim", [10, 150])
def test_ridge_cv_independent_target_has_no_skill(dim):
  rng = np.random.default_rng(20)
  x = rng.normal(size=(100, dim))
  y = rng.normal(size=100)
  # 3 folds: 12 small SVDs, cheap even where busy cores slow OpenBLAS down.
  res = stats.ridge_cv(x, y, folds=3, seed=1)
  assert res["r2"] <= 0.1
  assert res["r2_constant"] <= 0.0 and res["r2_constant_fold_mean"] <= 0.0
  assert not res["constant_target"]


def test_ridge_cv_constant_target():
  x = np.random.default_rng(21).normal(size=(30, 4))
  res = stats.ridge_cv(x, np.full(30, 2.5))
  assert res["constant_target"]
  assert np.isnan(res["r2"]) and np.isnan(res["r2_constant"])
  with pytest.raises(ValueError, match="folds"):
    stats.ridge_cv(x[:7], np.arange(7.0))


# ---------------------------------------------------------------------------
# paired_comparison (the memory_buffer experiment's test across seeds).


def test_paired_comparison_matches_scipy():
  """t, p and Wilcoxon p are scipy's; d_z and the CI follow their definitions."""
  a = np.array([0.10, 0.25, 0.31, 0.05, 0.40, 0.22, 0.18])
  b = np.array([0.15, 0.22, 0.41, 0.12, 0.47, 0.30, 0.17])
  out = stats.paired_comparison(a, b, num_bootstrap=4000, seed=3)
  d = b - a
  t = sp_stats.ttest_rel(b, a)
  assert out["n"] == 7 and out["dropped"] == 0
  assert out["mean_difference"] == pytest.approx(d.mean())
  assert out["sd_difference"] == pytest.approx(d.std(ddof=1))
  assert out["t"] == pytest.approx(t.statistic)
  assert out["p_t"] == pytest.approx(t.pvalue)
  assert out["p_wilcoxon"] == pytest.approx(sp_stats.wilcoxon(d).pvalue)
  assert out["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
  assert out["differences"] == pytest.approx(d.tolist())
  lo, hi = out["ci"]
  assert min(d) <= lo < d.mean() < hi <= max(d)
  # The same seed gives the same interval; another seed a different one.
  again = stats.paired_comparison(a, b, num_bootstrap=4000, seed=3)
  other = stats.paired_comparison(a, b, num_bootstrap=4000, seed=4)
  assert again["ci"] == out["ci"]
  assert other["ci"] != out["ci"]


def test_paired_comparison_known_values():
  """Hand-checkable cases: a clear shift, exact Wilcoxon p = 2 / 2**n."""
  a = np.zeros(5)
  b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  out = stats.paired_comparison(a, b)
  # t = mean / (sd / sqrt(n)) = 3 / (sqrt(2.5) / sqrt(5)) = 3 sqrt(2).
  assert out["t"] == pytest.approx(3 * np.sqrt(2))
  assert out["p_wilcoxon"] == pytest.approx(2 / 2 ** 5)
  assert out["mean_a"] == 0.0 and out["mean_b"] == 3.0


def test_paired_comparison_edge_cases():
  """NaN pairs are dropped; constant and too-few differences give NaN tests."""
  out = stats.paired_comparison([1.0, np.nan, 3.0, 4.0], [2.0, 5.0, 4.0, 6.0])
  assert out["n"] == 3 and out["dropped"] == 1
  assert out["differences"] == [1.0, 1.0, 2.0]
  same = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
  assert same["mean_difference"] == 0.0
  assert np.isnan(same["p_t"]) and np.isnan(same["cohens_dz"])
  assert same["p_wilcoxon"] == 1.0 and same["ci"] == [0.0, 0.0]
  one = stats.paired_comparison([1.0], [2.0])
  assert one["n"] == 1 and one["mean_difference"] == 1.0
  assert np.isnan(one["p_t"]) and all(np.isnan(one["ci"]))
  with pytest.raises(ValueError, match="same length"):
    stats.paired_comparison([1.0, 2.0], [1.0])


# ---------------------------------------------------------------------------
# rank_agreement (the weight-sharing proxy: shared-weight vs from-scratch).


def test_rank_agreement_matches_scipy_and_known_values():
  rng = np.random.default_rng(1)
  x = rng.normal(size=25)
  y = x + rng.normal(size=25)
  out = stats.rank_agreement(x, y, num_bootstrap=500, seed=2)
  tau, rho = sp_stats.kendalltau(x, y), sp_stats.spearmanr(x, y)
  assert out["n"] == 25 and out["bootstrap_valid"] == 500
  assert out["kendall_tau"] == pytest.approx(tau.statistic)
  assert out["p_kendall"] == pytest.approx(tau.pvalue)
  assert out["spearman_rho"] == pytest.approx(rho.statistic)
  assert out["p_spearman"] == pytest.approx(rho.pvalue)
  for name, value in (("kendall", tau.statistic), ("spearman", rho.statistic)):
    lo, hi = out[f"{name}_ci"]
    assert -1 <= lo < value < hi <= 1
  # One discordant pair of six: tau = (5 - 1) / 6.
  small = stats.rank_agreement([1, 2, 3, 4], [1, 3, 2, 4], num_bootstrap=10)
  assert small["kendall_tau"] == pytest.approx(4 / 6)
  assert small["spearman_rho"] == pytest.approx(0.8)
  ordered = stats.rank_agreement(np.arange(6), np.arange(6) ** 2,
                                 num_bootstrap=10)
  assert ordered["kendall_tau"] == pytest.approx(1.0)
  reversed_ = stats.rank_agreement(np.arange(6), -np.arange(6.0),
                                   num_bootstrap=10)
  assert reversed_["spearman_rho"] == pytest.approx(-1.0)


def test_rank_agreement_edge_cases():
  out = stats.rank_agreement([1.0, np.nan, 3.0, 4.0, 2.0],
                             [1.0, 2.0, np.inf, 4.0, 3.0], num_bootstrap=10)
  assert out["n"] == 3 and out["dropped"] == 2
  assert out["kendall_tau"] == pytest.approx(1.0)
  constant = stats.rank_agreement([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
  assert np.isnan(constant["kendall_tau"]) and constant["bootstrap_valid"] == 0
  assert np.isnan(stats.rank_agreement([1.0, 2.0], [2.0, 1.0])["p_kendall"])
  with pytest.raises(ValueError, match="same length"):
    stats.rank_agreement([1.0, 2.0, 3.0], [1.0, 2.0])
