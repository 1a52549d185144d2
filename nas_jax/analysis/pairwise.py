"""Pairwise matrices and their correlation, done honestly.

The probe (DESIGN.md, "The analyses"; Adam & Lorraine 2019) samples ``K``
cells, takes the controller's hidden state for each, and asks whether
pairwise distances between hidden states track pairwise graph similarity or
distance of the cells. The data are ``K (K - 1) / 2`` pairs, but the pairs are
not independent: every cell appears in ``K - 1`` of them. The p-values scipy
gives for Spearman's rho or Pearson's r on the pairs assume ``K (K - 1) / 2``
independent observations, so they are far too small (anti-conservative).
:func:`correlate` keeps them, labelled ``naive``, and adds the two standard
remedies:

* **Mantel permutation test.** Under the null hypothesis (hidden states carry
  no information about structure), which cell a hidden state belongs to is
  exchangeable. Relabelling the cells of one matrix with a random permutation
  ``pi`` (rows and columns together: ``a[pi][:, pi]``) and recomputing the
  statistic gives its null distribution with the dependence between pairs
  intact. Two-sided: ``p = (1 + #{|stat_perm| >= |stat_obs|}) / (1 + n_perm)``.
* **Bootstrap over cells.** ``K`` cells are drawn with replacement and the
  statistic recomputed over the pairs of the resample; the percentile interval
  of the bootstrap distribution is the confidence interval.

The fast null and bootstrap distributions are computed in
:mod:`nas_jax.analysis.resampling`; :func:`correlate_batch.correlate_many
<nas_jax.analysis.correlate_batch.correlate_many>` gives :func:`correlate`'s
results for many (distance, metric) pairs over the same cells at once. Also
here: pairwise L2 / cosine matrices
of hidden states (:func:`pairwise_l2`, :func:`pairwise_cosine_similarity`),
the pair order (:func:`pairs_index`, :func:`upper_triangle`) and the
"shuffled cells" control (:func:`permuted_pairs_control`).

Conventions used throughout (``K`` cells, ``M`` pairs):

* Pair matrices ``a``, ``b`` are symmetric ``[K, K]``; the diagonal is never
  read. Pairs are ``(i, j)`` with ``i < j`` in row-major order
  (:func:`pairs_index`), i.e. the order of ``np.triu_indices(K, 1)``.
* Spearman's rho is Pearson's r of average ranks (ties share the mean of
  their ranks), exactly as ``scipy.stats.spearmanr``.
* Random draws come from the streams ``MANTEL``, ``BOOTSTRAP`` and
  ``CONTROL`` of :mod:`nas_jax.streams` (see :func:`resampling.rng
  <nas_jax.analysis.resampling.rng>`).

Everything here is host-side NumPy/SciPy; never call it inside ``jax.jit``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special as sp_special
from scipy import stats as sp_stats

from nas_jax import streams
from nas_jax.analysis import resampling

# ---------------------------------------------------------------------------
# Pair matrices.
# ---------------------------------------------------------------------------


def as_points(x) -> np.ndarray:
  """``x`` as finite ``float64[K, D]`` points; raises ``ValueError`` if not."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"expected points as float[K, D], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("points contain NaN or inf")
  return x


def pairwise_l2(x) -> np.ndarray:
  """Euclidean distances between rows: ``float64[K, K]``.

  Computed from the Gram matrix of the *centred* rows (distances do not
  change under translation, and centring shrinks the norms that cause
  cancellation in ``|u|^2 + |v|^2 - 2 u.v``); squared distances are clipped at
  0 before the square root, the result is symmetrised and the diagonal set to
  exactly 0. The absolute error is about ``1e-8 * max_i |x_i - mean|``, so two
  identical rows get a distance of that order rather than exactly 0.

  Args:
    x: ``float[K, D]`` points (e.g. hidden states), finite.
  """
  x = as_points(x)
  xc = x - x.mean(axis=0, keepdims=True)
  gram = xc @ xc.T
  sq = np.diag(gram).copy()
  d2 = sq[:, None] + sq[None, :] - 2.0 * gram
  np.maximum(d2, 0.0, out=d2)
  d = np.sqrt(d2)
  d = 0.5 * (d + d.T)
  np.fill_diagonal(d, 0.0)
  return d


def pairwise_cosine_similarity(x) -> np.ndarray:
  """Cosine similarity between rows: ``float64[K, K]`` in ``[-1, 1]``.

  Convention for zero rows (norm exactly 0), where the cosine is undefined
  (scipy returns NaN): their similarity to every *other* row is 0, as for
  orthogonal vectors, and the diagonal is 1 for every row, zero or not, so
  ``1 - similarity`` is a dissimilarity with a zero diagonal. Rows are *not*
  centred (that would change the cosine). Values are clipped to ``[-1, 1]``.

  Args:
    x: ``float[K, D]`` points, finite.
  """
  x = as_points(x)
  norms = np.linalg.norm(x, axis=1)
  nonzero = norms > 0
  unit = np.zeros_like(x)
  unit[nonzero] = x[nonzero] / norms[nonzero, None]
  sim = unit @ unit.T
  sim = 0.5 * (sim + sim.T)
  np.clip(sim, -1.0, 1.0, out=sim)
  np.fill_diagonal(sim, 1.0)
  return sim


def pairs_index(k: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column of every pair ``i < j`` of ``k`` cells, row-major.

  Returns:
    ``(i, j)``, each ``int64[k (k - 1) / 2]``; the same order as
    ``np.triu_indices(k, 1)`` and as ``edit_distance.sample_pairs`` when it
    returns all pairs.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
    raise ValueError(f"k must be an int >= 0, got {k!r}")
  i, j = np.triu_indices(int(k), 1)
  return i.astype(np.int64), j.astype(np.int64)


def as_square(m, name: str) -> np.ndarray:
  """``m`` as a ``float64[K, K]`` matrix; ``ValueError`` naming it if not."""
  m = np.asarray(m, dtype=np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f"{name} must be a square [K, K] matrix, got {m.shape}")
  return m


def check_symmetric(m: np.ndarray, name: str) -> None:
  """Raises ``ValueError`` unless ``m`` is symmetric where it is finite
  (off the diagonal, to a relative tolerance of ``1e-9``)."""
  if np.array_equal(m, m.T, equal_nan=True):  # Exactly: the usual case.
    return
  i, j = pairs_index(m.shape[0])
  upper, lower = m[i, j], m[j, i]
  both = np.isfinite(upper) & np.isfinite(lower)
  upper, lower = upper[both], lower[both]
  # Both ways round, as allclose is not symmetric in its arguments.
  if not (np.allclose(upper, lower, rtol=1e-9, atol=1e-12)
          and np.allclose(lower, upper, rtol=1e-9, atol=1e-12)):
    raise ValueError(f"{name} must be symmetric")


def upper_triangle(m) -> np.ndarray:
  """Entries above the diagonal, row-major: ``float64[K (K - 1) / 2]``.

  Args:
    m: ``[K, K]`` matrix (the diagonal and lower triangle are not read).
  """
  m = as_square(m, "m")
  i, j = pairs_index(m.shape[0])
  return m[i, j]


# ---------------------------------------------------------------------------
# Small helpers for correlations.
# ---------------------------------------------------------------------------


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson's r as the dot product of the standardised vectors."""
  return float(np.einsum("m,m->", resampling.standardise(x),
                         resampling.standardise(y)))


def naive_p_values(rho: float, r: float, n: int) -> tuple[float, float]:
  """scipy's p-values of ``spearmanr`` and ``pearsonr`` for ``n`` pairs,
  computed from the coefficients with scipy's formulas (Student's t with
  ``n - 2`` degrees of freedom for rho, the beta distribution of r), so the
  pairs are not ranked again. They treat pairs as independent: too small.

  scipy computes the coefficient itself (``corrcoef`` of the ranks), which
  differs from ``rho`` by rounding, so the p-values agree to ~1e-12
  relative; at ``|rho| = 1`` to rounding this gives 0 where scipy may give
  ~1e-60.
  """
  dof = n - 2
  rho, r = np.float64(rho), np.clip(np.float64(r), -1.0, 1.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = rho * np.sqrt(np.clip(dof / ((rho + 1.0) * (1.0 - rho)), 0.0, None))
  p_spearman = float(2.0 * sp_special.stdtr(dof, -abs(t)))
  ab = n / 2.0 - 1.0
  p_pearson = float(2.0 * sp_special.betaincc(ab, ab, (abs(r) + 1.0) / 2.0))
  return p_spearman, p_pearson


def two_sided_permutation_p(null: np.ndarray, observed: float) -> float:
  """``(1 + #{|null| >= |observed|}) / (1 + len(null))``; NaN if undefined.

  ``null`` entries that are NaN (a degenerate permutation) count as not
  extreme but stay in the denominator. A tolerance of ``1e-10`` absorbs
  rounding between the observed and permuted computations.

  Args:
    null: ``float[n]`` statistics under random relabelling.
    observed: the statistic on the data.
  """
  null = np.asarray(null, dtype=np.float64)
  if null.size == 0 or not math.isfinite(observed):
    return math.nan
  with np.errstate(invalid="ignore"):
    hits = np.sum(np.abs(null) >= abs(observed) - resampling.P_TOL)
  return float((1 + hits) / (1 + null.size))


def _null_sd(null: np.ndarray) -> float:
  null = null[np.isfinite(null)]
  return float(np.std(null)) if null.size >= 2 else math.nan


def check_pairs(pairs, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Validated ``(i, j)``, ``i < j`` (each pair reordered), in input order."""
  p = np.asarray(pairs)
  if p.ndim != 2 or p.shape[1] != 2 or not (
      np.issubdtype(p.dtype, np.integer) or p.size == 0):
    raise ValueError(f"pairs must be int[M, 2], got {p.dtype} {p.shape}")
  p = p.astype(np.int64)
  if p.size and (p.min() < 0 or p.max() >= k):
    raise ValueError(f"pairs index cells outside [0, {k})")
  i, j = np.minimum(p[:, 0], p[:, 1]), np.maximum(p[:, 0], p[:, 1])
  if np.any(i == j):
    raise ValueError("pairs must join two distinct cells (found i == j)")
  if np.unique(i * k + j).size != i.size:
    raise ValueError("pairs contain duplicates ((i, j) and (j, i) count as "
                     "the same pair)")
  return i, j


# ---------------------------------------------------------------------------
# Correlation with Mantel p-values and bootstrap CIs.
# ---------------------------------------------------------------------------


def correlate(a, b, *, pairs=None, num_permutations: int = 999,
              num_bootstrap: int = 1000, seed: int = 0,
              ci: float = 0.95) -> dict[str, Any]:
  """Spearman and Pearson between two pair matrices, with honest p and CI.

  Args:
    a: symmetric ``float[K, K]``, e.g. hidden-state L2 distance. It must be
      finite off the diagonal when ``pairs`` is given (the Mantel test looks
      it up at permuted pairs outside the subset); it is the matrix whose
      cells are permuted.
    b: symmetric ``float[K, K]``, e.g. a graph metric. With ``pairs`` it is
      only read at those pairs (NaN elsewhere is fine).
    pairs: optional ``int[M, 2]`` subset of pairs of distinct cells, for
      metrics only computed on some pairs (graph edit distance); either
      order within a pair. Default: all ``K (K - 1) / 2`` pairs.
    num_permutations: cell permutations for the Mantel test; 0 skips it.
    num_bootstrap: cell resamples for the CIs; 0 skips them.
    seed: seed of the permutations and resamples.
    ci: confidence level of the percentile bootstrap interval.

  Returns:
    A dict::

      num_cells, num_pairs, pairs ('all' or 'subset'), num_permutations,
      num_bootstrap, ci_level, seed, constant_input (bool),
      spearman: {rho, p_naive, p_mantel, ci: (lo, hi), null_sd,
                 bootstrap_valid},
      pearson:  {r, p_naive, p_mantel, ci: (lo, hi), null_sd,
                 bootstrap_valid},
      linear_fit: {slope, intercept, r2}   # b ~ slope * a + intercept

    ``p_naive`` is scipy's p-value treating pairs as independent (too small);
    ``p_mantel`` is the two-sided permutation p-value (NaN when skipped);
    ``null_sd`` is the standard deviation of the permutation null (roughly
    the statistic's standard error under "no relation"); ``ci`` is NaN when
    skipped or when fewer than 2 resamples were non-degenerate
    (``bootstrap_valid`` counts them). When ``a`` or ``b`` is constant over
    the pairs every statistic is NaN and ``constant_input`` is True.

  Notes:
    Mantel: the cells of ``a`` are permuted (``a[pi][:, pi]``) and the
    statistic recomputed over the same pairs; with all pairs this equals
    permuting ``b``. Bootstrap: see
    :class:`nas_jax.analysis.resampling.PairBootstrap`; pairs of resample
    positions holding the same original cell are dropped, so an original
    pair ``(u, v)`` counts ``c[u] c[v]`` times.
  """
  a, b = as_square(a, "a"), as_square(b, "b")
  check_settings(a, b, num_permutations, num_bootstrap, ci)
  i, j = pairs_used(a, b, pairs, num_permutations)
  k = a.shape[0]
  x, y = a[i, j], b[i, j]
  out: dict[str, Any] = {
      "num_cells": k, "num_pairs": int(i.size),
      "pairs": "all" if pairs is None else "subset",
      "num_permutations": int(num_permutations),
      "num_bootstrap": int(num_bootstrap), "ci_level": float(ci),
      "seed": int(seed), "constant_input": False,
  }
  if resampling.is_constant(x) or resampling.is_constant(y):
    out.update(constant_input())
    return out

  rx, ry = sp_stats.rankdata(x), sp_stats.rankdata(y)
  rho, r = pearson(rx, ry), pearson(x, y)
  p_spearman = float(sp_stats.spearmanr(x, y).pvalue)
  p_pearson = float(sp_stats.pearsonr(x, y).pvalue)
  null = _mantel_null(a, x, rx, y, ry, i, j, all_pairs=pairs is None,
                      num_permutations=num_permutations, seed=seed)
  boot = _bootstrap(x, y, i, j, k, num_bootstrap, seed)
  out.update(
      spearman=summary("rho", rho, p_spearman, null[:, 1], boot[:, 1], ci),
      pearson=summary("r", r, p_pearson, null[:, 0], boot[:, 0], ci),
      linear_fit=linear_fit(x, y, r))
  return out


def check_settings(a: np.ndarray, b: np.ndarray, num_permutations: int,
                    num_bootstrap: int, ci: float) -> None:
  if a.shape != b.shape:
    raise ValueError(f"a and b differ in shape: {a.shape} vs {b.shape}")
  if not 0.0 < ci < 1.0:
    raise ValueError(f"ci must be in (0, 1), got {ci}")
  for name, value in (("num_permutations", num_permutations),
                      ("num_bootstrap", num_bootstrap)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")


def pairs_used(a: np.ndarray, b: np.ndarray, pairs,
                num_permutations: int) -> tuple[np.ndarray, np.ndarray]:
  """The pairs ``(i, j)`` :func:`correlate` reads, after checking the values
  of ``a`` and ``b`` it needs."""
  k = a.shape[0]
  if pairs is None:
    i, j = pairs_index(k)
  else:
    i, j = check_pairs(pairs, k)
  if i.size < 3:
    raise ValueError(f"need at least 3 pairs, got {i.size}")
  if not (np.all(np.isfinite(a[i, j])) and np.all(np.isfinite(b[i, j]))):
    raise ValueError("a and b must be finite at every pair used; pass `pairs` "
                     "to restrict to the pairs where a metric is known")
  if pairs is not None and num_permutations:
    off = ~np.eye(k, dtype=bool)
    if not np.all(np.isfinite(a[off])):
      raise ValueError("with `pairs` and permutations, a must be finite off "
                       "the diagonal (it is looked up at permuted pairs)")
  check_symmetric(a, "a")
  check_symmetric(b, "b")
  return i, j


def constant_input() -> dict[str, Any]:
  """The statistics of :func:`correlate` when a matrix is constant: NaN."""
  blank = {"p_naive": math.nan, "p_mantel": math.nan,
           "ci": (math.nan, math.nan), "null_sd": math.nan,
           "bootstrap_valid": 0}
  return {"constant_input": True,
          "spearman": {"rho": math.nan, **blank},
          "pearson": {"r": math.nan, **blank},
          "linear_fit": {"slope": math.nan, "intercept": math.nan,
                         "r2": math.nan}}


def _mantel_null(a: np.ndarray, x: np.ndarray, rx: np.ndarray, y: np.ndarray,
                 ry: np.ndarray, i: np.ndarray, j: np.ndarray, *,
                 all_pairs: bool, num_permutations: int,
                 seed: int) -> np.ndarray:
  """Null ``float64[n, 2]`` (Pearson, Spearman); ``[0, 2]`` when skipped."""
  if not num_permutations:
    return np.full((0, 2), np.nan)
  perms = resampling.cell_permutations(
      num_permutations, a.shape[0], resampling.rng(seed, streams.MANTEL))
  if all_pairs:
    return resampling.mantel_all_pairs(a, x, rx, y, ry, i, j, perms)
  return resampling.mantel_subset(a, y, ry, i, j, perms)


def _bootstrap(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray,
               num_cells: int, num_bootstrap: int, seed: int) -> np.ndarray:
  """Bootstrap ``float64[n, 2]`` (Pearson, Spearman); ``[0, 2]`` if skipped."""
  if not num_bootstrap:
    return np.full((0, 2), np.nan)
  return resampling.bootstrap_over_cells(
      x, y, i, j, num_cells, num_bootstrap,
      resampling.rng(seed, streams.BOOTSTRAP))


def summary(name: str, value: float, p_naive: float, null: np.ndarray,
             boot: np.ndarray, ci: float) -> dict[str, Any]:
  """One coefficient's entry of :func:`correlate`, from its null and
  bootstrap distributions (empty when skipped)."""
  res = {name: value, "p_naive": p_naive,
         "p_mantel": two_sided_permutation_p(null, value),
         "ci": (math.nan, math.nan), "null_sd": _null_sd(null),
         "bootstrap_valid": int(np.sum(np.isfinite(boot)))}
  if boot.size:
    res["ci"] = resampling.percentile_ci(boot, ci)
  return res


def linear_fit(x: np.ndarray, y: np.ndarray, r: float) -> dict[str, float]:
  """Least-squares ``y ~ slope * x + intercept``; ``r2`` is ``r`` squared."""
  slope = float(np.dot(x - x.mean(), y - y.mean()) /
                np.dot(x - x.mean(), x - x.mean()))
  return {"slope": slope, "intercept": float(y.mean() - slope * x.mean()),
          "r2": r * r}


# ---------------------------------------------------------------------------
# The "shuffled cells" control.
# ---------------------------------------------------------------------------


def permuted_pairs_control(a, b, *, seed: int = 0, pairs=None,
                           num_permutations: int = 999,
                           num_bootstrap: int = 0,
                           ci: float = 0.95) -> dict[str, Any]:
  """:func:`correlate` after shuffling which cell each row of ``a`` belongs to.

  One random permutation ``pi`` of the cells (its own seed stream) is applied
  to ``a`` (rows and columns: ``a[pi][:, pi]``); the relation to ``b`` is
  destroyed while both marginal distributions and the pair dependence stay.
  This is what "no correlation" looks like for these data, for the report
  tables. ``a`` rather than ``b`` is permuted because ``a`` (hidden-state
  distances) is known at every pair, so ``pairs`` work too; with all pairs it
  is equivalent to permuting ``b`` by ``pi``'s inverse.

  Args:
    a, b, pairs, num_permutations, num_bootstrap, ci: as :func:`correlate`
      (bootstrap is off by default: the control needs no interval).
    seed: seeds the control permutation and the statistics.

  Returns:
    :func:`correlate`'s dict plus ``control_seed`` (``pi`` is
    :func:`control_permutation` of ``(K, seed)``).
  """
  a = as_square(a, "a")
  perm = control_permutation(a.shape[0], seed)
  res = correlate(a[np.ix_(perm, perm)], b, pairs=pairs,
                  num_permutations=num_permutations,
                  num_bootstrap=num_bootstrap, seed=seed, ci=ci)
  res["control_seed"] = int(seed)
  return res


def control_permutation(k: int, seed: int) -> np.ndarray:
  """The cell permutation ``int64[k]`` :func:`permuted_pairs_control` uses."""
  return resampling.rng(seed, streams.CONTROL).permutation(k)
