"""Paired comparisons: two numbers per seed, or two rankings of the same cells.

* :func:`paired_comparison`: method ``b`` against method ``a``, paired by
  position (one number per seed and method): mean difference with a
  bootstrap CI, paired t-test, Wilcoxon signed-rank test, Cohen's ``d_z``.
* :func:`rank_agreement`: how well one ranking of items agrees with another
  (Kendall's tau-b and Spearman's rho with bootstrap CIs), e.g. the
  weight-sharing proxy's ppl of cells against their from-scratch ppl.

Pairs where either value is not finite are dropped and counted. Bootstrap
resamples come from the ``BOOTSTRAP`` stream of :mod:`nas_jax.streams`.
Everything here is host-side NumPy/SciPy; never call it inside ``jax.jit``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sp_stats

from nas_jax import streams
from nas_jax.analysis import resampling


def _finite_pairs(a, b) -> tuple[np.ndarray, np.ndarray, int]:
  """The pairs ``(a[i], b[i])`` where both are finite, and how many were not."""
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"the two samples must have the same length, got "
                     f"{a.shape} and {b.shape}")
  keep = np.isfinite(a) & np.isfinite(b)
  return a[keep], b[keep], int(keep.size - keep.sum())


def paired_comparison(a, b, *, num_bootstrap: int = 10_000, ci: float = 0.95,
                      seed: int = 0) -> dict[str, Any]:
  """Compares ``b`` with ``a``, paired by position (e.g. by seed).

  The differences are ``d = b - a`` over the pairs where both are finite.
  Returns their mean and standard deviation, a percentile bootstrap CI of
  the mean difference (``num_bootstrap`` resamples of the pairs), the paired
  t-test (``scipy.stats.ttest_rel``), the Wilcoxon signed-rank test (exact
  for small ``n``; ``p = 1`` when every difference is 0) and Cohen's
  ``d_z = mean(d) / sd(d)``. Tests and intervals need ``n >= 2`` pairs
  (NaN otherwise). With ``n`` pairs the smallest two-sided Wilcoxon p-value
  is ``2 / 2**n`` (0.25 for 3 seeds), so few seeds cannot reach 0.05.
  """
  a, b, dropped = _finite_pairs(a, b)
  d = b - a
  n = int(d.size)
  nan = math.nan
  out: dict[str, Any] = {
      "n": n, "dropped": dropped,
      "mean_a": float(np.mean(a)) if n else nan,
      "mean_b": float(np.mean(b)) if n else nan,
      "mean_difference": float(np.mean(d)) if n else nan,
      "sd_difference": float(np.std(d, ddof=1)) if n >= 2 else nan,
      "ci": [nan, nan], "ci_level": ci, "t": nan, "p_t": nan,
      "p_wilcoxon": nan, "cohens_dz": nan, "differences": d.tolist()}
  if n < 2:
    return out
  generator = resampling.rng(seed, streams.BOOTSTRAP)
  means = d[generator.integers(0, n, (num_bootstrap, n))].mean(axis=1)
  out["ci"] = list(resampling.percentile_ci(means, ci))
  if np.all(d == d[0]):
    # Constant differences: t and d_z are undefined (sd 0); Wilcoxon still is.
    out["p_wilcoxon"] = 1.0 if d[0] == 0 else float(
        sp_stats.wilcoxon(d).pvalue)
    return out
  t = sp_stats.ttest_rel(b, a)
  out["t"], out["p_t"] = float(t.statistic), float(t.pvalue)
  out["p_wilcoxon"] = float(sp_stats.wilcoxon(d).pvalue)
  out["cohens_dz"] = float(np.mean(d) / np.std(d, ddof=1))
  return out


def rank_agreement(x, y, *, num_bootstrap: int = 10_000, ci: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
  """How well the ranking by ``x`` agrees with the ranking by ``y``.

  For the weight-sharing proxy: ``x`` the cells' shared-weight ppl, ``y``
  their from-scratch ppl. Over the items where both are finite: Kendall's
  tau-b and Spearman's rho with scipy's p-values (``scipy.stats.kendalltau``
  / ``spearmanr``, two-sided) and percentile bootstrap CIs over items
  (``num_bootstrap`` resamples; resamples with a constant side are skipped
  and counted in ``bootstrap_valid``). Needs ``n >= 3`` (NaN otherwise).
  """
  x, y, dropped = _finite_pairs(x, y)
  n = int(x.size)
  nan = math.nan
  out: dict[str, Any] = {
      "n": n, "dropped": dropped, "ci_level": ci,
      "kendall_tau": nan, "p_kendall": nan, "kendall_ci": [nan, nan],
      "spearman_rho": nan, "p_spearman": nan, "spearman_ci": [nan, nan],
      "bootstrap_valid": 0}
  if n < 3 or resampling.is_constant(x) or resampling.is_constant(y):
    return out
  tau = sp_stats.kendalltau(x, y)
  rho = sp_stats.spearmanr(x, y)
  out.update(kendall_tau=float(tau.statistic), p_kendall=float(tau.pvalue),
             spearman_rho=float(rho.statistic), p_spearman=float(rho.pvalue))
  generator = resampling.rng(seed, streams.BOOTSTRAP)
  taus, rhos = [], []
  for _ in range(num_bootstrap):
    i = generator.integers(0, n, n)
    if resampling.is_constant(x[i]) or resampling.is_constant(y[i]):
      continue
    taus.append(sp_stats.kendalltau(x[i], y[i]).statistic)
    rhos.append(sp_stats.spearmanr(x[i], y[i]).statistic)
  out["bootstrap_valid"] = len(taus)
  if taus:
    out["kendall_ci"] = list(resampling.percentile_ci(np.asarray(taus), ci))
    out["spearman_ci"] = list(resampling.percentile_ci(np.asarray(rhos), ci))
  return out
