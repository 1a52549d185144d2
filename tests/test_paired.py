"""Paired comparisons across seeds and rank agreement agree with scipy."""

import numpy as np
import pytest
from scipy import stats as sp_stats

from nas_jax.analysis import paired

# ---------------------------------------------------------------------------
# paired_comparison (the memory_buffer experiment's test across seeds).


def test_paired_comparison_matches_scipy():
  """t, p and Wilcoxon p are scipy's; d_z and the CI follow their definitions."""
  a = np.array([0.10, 0.25, 0.31, 0.05, 0.40, 0.22, 0.18])
  b = np.array([0.15, 0.22, 0.41, 0.12, 0.47, 0.30, 0.17])
  out = paired.paired_comparison(a, b, num_bootstrap=4000, seed=3)
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
  again = paired.paired_comparison(a, b, num_bootstrap=4000, seed=3)
  other = paired.paired_comparison(a, b, num_bootstrap=4000, seed=4)
  assert again["ci"] == out["ci"]
  assert other["ci"] != out["ci"]


def test_paired_comparison_known_values():
  """Hand-checkable cases: a clear shift, exact Wilcoxon p = 2 / 2**n."""
  a = np.zeros(5)
  b = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
  out = paired.paired_comparison(a, b)
  # t = mean / (sd / sqrt(n)) = 3 / (sqrt(2.5) / sqrt(5)) = 3 sqrt(2).
  assert out["t"] == pytest.approx(3 * np.sqrt(2))
  assert out["p_wilcoxon"] == pytest.approx(2 / 2 ** 5)
  assert out["mean_a"] == 0.0 and out["mean_b"] == 3.0


def test_paired_comparison_edge_cases():
  """NaN pairs are dropped; constant and too-few differences give NaN tests."""
  out = paired.paired_comparison([1.0, np.nan, 3.0, 4.0], [2.0, 5.0, 4.0, 6.0])
  assert out["n"] == 3 and out["dropped"] == 1
  assert out["differences"] == [1.0, 1.0, 2.0]
  same = paired.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
  assert same["mean_difference"] == 0.0
  assert np.isnan(same["p_t"]) and np.isnan(same["cohens_dz"])
  assert same["p_wilcoxon"] == 1.0 and same["ci"] == [0.0, 0.0]
  one = paired.paired_comparison([1.0], [2.0])
  assert one["n"] == 1 and one["mean_difference"] == 1.0
  assert np.isnan(one["p_t"]) and all(np.isnan(one["ci"]))
  with pytest.raises(ValueError, match="same length"):
    paired.paired_comparison([1.0, 2.0], [1.0])


# ---------------------------------------------------------------------------
# rank_agreement (the weight-sharing proxy: shared-weight vs from-scratch).


def test_rank_agreement_matches_scipy_and_known_values():
  rng = np.random.default_rng(1)
  x = rng.normal(size=25)
  y = x + rng.normal(size=25)
  out = paired.rank_agreement(x, y, num_bootstrap=500, seed=2)
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
  small = paired.rank_agreement([1, 2, 3, 4], [1, 3, 2, 4], num_bootstrap=10)
  assert small["kendall_tau"] == pytest.approx(4 / 6)
  assert small["spearman_rho"] == pytest.approx(0.8)
  ordered = paired.rank_agreement(np.arange(6), np.arange(6) ** 2,
                                 num_bootstrap=10)
  assert ordered["kendall_tau"] == pytest.approx(1.0)
  reversed_ = paired.rank_agreement(np.arange(6), -np.arange(6.0),
                                   num_bootstrap=10)
  assert reversed_["spearman_rho"] == pytest.approx(-1.0)


def test_rank_agreement_edge_cases():
  out = paired.rank_agreement([1.0, np.nan, 3.0, 4.0, 2.0],
                             [1.0, 2.0, np.inf, 4.0, 3.0], num_bootstrap=10)
  assert out["n"] == 3 and out["dropped"] == 2
  assert out["kendall_tau"] == pytest.approx(1.0)
  constant = paired.rank_agreement([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
  assert np.isnan(constant["kendall_tau"]) and constant["bootstrap_valid"] == 0
  assert np.isnan(paired.rank_agreement([1.0, 2.0], [2.0, 1.0])["p_kendall"])
  with pytest.raises(ValueError, match="same length"):
    paired.rank_agreement([1.0, 2.0, 3.0], [1.0, 2.0])
