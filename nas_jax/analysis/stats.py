"""Statistics for the controller probe: pair correlations done honestly.

The probe (DESIGN.md, "The analyses"; Adam & Lorraine 2019) samples ``K``
cells, takes the controller's hidden state for each, and asks whether
pairwise distances between hidden states track pairwise graph similarity or
distance of the cells. The data are ``K (K - 1) / 2`` pairs, but the pairs are
not independent: every cell appears in ``K - 1`` of them. The p-values scipy
gives for Spearman's rho or Pearson's r on the pairs assume ``K (K - 1) / 2``
independent observations, so they are far too small (anti-conservative). This
module keeps them, labelled ``naive``, and adds the two standard remedies:

* **Mantel permutation test.** Under the null hypothesis (hidden states carry
  no information about structure), which cell a hidden state belongs to is
  exchangeable. Relabelling the cells of one matrix with a random permutation
  ``pi`` (rows and columns together: ``a[pi][:, pi]``) and recomputing the
  statistic gives its null distribution with the dependence between pairs
  intact. Two-sided: ``p = (1 + #{|stat_perm| >= |stat_obs|}) / (1 + n_perm)``.
* **Bootstrap over cells.** ``K`` cells are drawn with replacement and the
  statistic recomputed over the pairs of the resample; the percentile interval
  of the bootstrap distribution is the confidence interval.

Also here: pairwise L2 / cosine matrices of hidden states
(:func:`pairwise_l2`, :func:`pairwise_cosine_similarity`), a nearest-neighbour
check (:func:`nearest_neighbour_check`), a nested cross-validated ridge probe
(:func:`ridge_cv`) and the "shuffled cells" control
(:func:`permuted_pairs_control`).

Conventions used throughout (``K`` cells, ``M`` pairs):

* Pair matrices ``a``, ``b`` are symmetric ``[K, K]``; the diagonal is never
  read. Pairs are ``(i, j)`` with ``i < j`` in row-major order
  (:func:`pairs_index`), i.e. the order of ``np.triu_indices(K, 1)``.
* Spearman's rho is Pearson's r of average ranks (ties share the mean of
  their ranks), exactly as ``scipy.stats.spearmanr``.
* Every random draw comes from a ``numpy.random.Generator`` seeded from
  ``(seed, stream)``, with one stream per purpose (cell permutations of the
  Mantel test, bootstrap resamples, the control permutation, CV folds), so
  results are deterministic given ``seed`` and skipping one part (e.g.
  ``num_bootstrap=0``) does not change the numbers of another.

Speed (``K = 1000``, 499,500 pairs, single-threaded): the Mantel test
gathers the upper triangle of a pre-ranked, pre-standardised matrix once per
permutation (rank once: a permutation of cells only permutes the pair
values), about 10 ms per permutation for Spearman and Pearson together; the
bootstrap works on pair weights (:class:`_PairBootstrap`) without sorting,
20-40 ms per resample. So 999 permutations and 1000 resamples take about
10 s and 20-40 s on a busy 2-core machine; ``K = 100`` takes well under a
second. No BLAS call sits in the loops (einsum), so the results do not
depend on the number of BLAS threads.

Everything here is host-side NumPy/SciPy; never call it inside ``jax.jit``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats as sp_stats

# Generator streams: one per purpose, so results are deterministic per seed
# and independent of which other parts ran.
_STREAM_MANTEL = 0
_STREAM_BOOTSTRAP = 1
_STREAM_CONTROL = 2
_STREAM_FOLDS = 3
_STREAM_NEIGHBOURS = 4

# A permuted statistic counts as "at least as extreme" when it is within this
# absolute tolerance of the observed one (statistics lie in [-1, 1]); this
# absorbs summation-order rounding between the observed and permuted paths.
_P_TOL = 1e-10

# Bound on the number of float64 entries of one working chunk ([rows, M]).
_CHUNK_ENTRIES = 1 << 21

DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-3, 6))


def _rng(seed: int, stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


# ---------------------------------------------------------------------------
# Pair matrices.
# ---------------------------------------------------------------------------


def _as_points(x) -> np.ndarray:
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
  x = _as_points(x)
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
  x = _as_points(x)
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
    ``np.triu_indices(k, 1)`` and as ``graph_metrics.sample_pairs`` when it
    returns all pairs.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
    raise ValueError(f"k must be an int >= 0, got {k!r}")
  i, j = np.triu_indices(int(k), 1)
  return i.astype(np.int64), j.astype(np.int64)


def _as_square(m, name: str) -> np.ndarray:
  m = np.asarray(m, dtype=np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f"{name} must be a square [K, K] matrix, got {m.shape}")
  return m


def upper_triangle(m) -> np.ndarray:
  """Entries above the diagonal, row-major: ``float64[K (K - 1) / 2]``.

  Args:
    m: ``[K, K]`` matrix (the diagonal and lower triangle are not read).
  """
  m = _as_square(m, "m")
  i, j = pairs_index(m.shape[0])
  return m[i, j]


# ---------------------------------------------------------------------------
# Small helpers for correlations.
# ---------------------------------------------------------------------------


def _standardise(v: np.ndarray, axis: int = -1) -> np.ndarray:
  """``(v - mean) / ||v - mean||`` along ``axis``; NaN where constant.

  With both vectors standardised like this, Pearson's r is their dot product.
  """
  centred = v - v.mean(axis=axis, keepdims=True)
  norm = np.sqrt(np.sum(centred * centred, axis=axis, keepdims=True))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(norm > 0, centred / np.where(norm > 0, norm, 1.0), np.nan)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  return float(np.einsum("m,m->", _standardise(x), _standardise(y)))


def _is_constant(v: np.ndarray) -> bool:
  return v.size == 0 or bool(np.all(v == v[0]))


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
    hits = np.sum(np.abs(null) >= abs(observed) - _P_TOL)
  return float((1 + hits) / (1 + null.size))


def _percentile_ci(values: np.ndarray, ci: float) -> tuple[float, float]:
  values = values[np.isfinite(values)]
  if values.size < 2:
    return (math.nan, math.nan)
  lo, hi = np.quantile(values, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
  return (float(lo), float(hi))


def _null_sd(null: np.ndarray) -> float:
  null = null[np.isfinite(null)]
  return float(np.std(null)) if null.size >= 2 else math.nan


def _cell_permutations(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
  """``int64[n, k]``: ``n`` independent uniform permutations of ``range(k)``."""
  return rng.permuted(np.tile(np.arange(k, dtype=np.int64), (n, 1)), axis=1)


def _check_pairs(pairs, k: int) -> tuple[np.ndarray, np.ndarray]:
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


def _check_symmetric(m: np.ndarray, name: str) -> None:
  off = ~np.eye(m.shape[0], dtype=bool)
  both = np.isfinite(m) & np.isfinite(m.T) & off
  if not np.allclose(m[both], m.T[both], rtol=1e-9, atol=1e-12):
    raise ValueError(f"{name} must be symmetric")


# ---------------------------------------------------------------------------
# Mantel null distributions.
# ---------------------------------------------------------------------------


def _mantel_all_pairs(a: np.ndarray, x: np.ndarray, rx: np.ndarray,
                      y: np.ndarray, ry: np.ndarray, i: np.ndarray,
                      j: np.ndarray, perms: np.ndarray) -> np.ndarray:
  """Null ``float64[n, 2]`` (Pearson, Spearman) when all pairs are used.

  Permuting the cells of ``a`` maps the set of pairs onto itself, so the
  permuted pair values are a permutation of ``x``: their mean, norm and
  (average) ranks are those of ``x``, permuted. So ``x`` and its ranks are
  standardised once, stored as symmetric ``[K, K]`` matrices, and each
  permutation only gathers ``M`` entries and takes a dot product.
  """
  k = a.shape[0]
  table = np.zeros((k * k, 2))
  both = np.stack([_standardise(x), _standardise(rx)], axis=1)
  table[i * k + j] = both
  table[j * k + i] = both
  target = np.stack([_standardise(y), _standardise(ry)], axis=1)
  null = np.empty((perms.shape[0], 2))
  for n, perm in enumerate(perms):
    idx = perm.take(i) * k
    idx += perm.take(j)
    null[n] = np.einsum("mc,mc->c", table.take(idx, axis=0), target)
  return null


def _mantel_subset(a: np.ndarray, y: np.ndarray, ry: np.ndarray,
                   i: np.ndarray, j: np.ndarray,
                   perms: np.ndarray) -> np.ndarray:
  """Null ``float64[n, 2]`` (Pearson, Spearman) for a subset of pairs.

  The permuted pairs ``(pi[i], pi[j])`` are generally not the original
  pairs, so ``a`` (known everywhere) is looked up there and the permuted
  values are re-standardised and re-ranked for every permutation.
  """
  m = i.size
  zy, zry = _standardise(y), _standardise(ry)
  null = np.empty((perms.shape[0], 2))
  rows = max(1, _CHUNK_ENTRIES // max(m, 1))
  for start in range(0, perms.shape[0], rows):
    chunk = perms[start:start + rows]
    values = a[chunk[:, i], chunk[:, j]]                      # [rows, M]
    null[start:start + rows, 0] = np.einsum("rm,m->r", _standardise(values),
                                              zy)
    ranks = sp_stats.rankdata(values, axis=1)
    null[start:start + rows, 1] = np.einsum("rm,m->r", _standardise(ranks),
                                              zry)
  return null


# ---------------------------------------------------------------------------
# Bootstrap over cells.
# ---------------------------------------------------------------------------


class _PairBootstrap:
  """Pearson and Spearman over the pairs of cell resamples, via pair weights.

  A resample of ``K`` cells with replacement is summarised by the count
  ``c[u]`` of each original cell ``u``. Its pairs are all pairs of distinct
  resample *positions*; a pair of positions holding the same original cell
  would be a diagonal entry (distance 0 to itself, not a pair of two cells),
  so it is dropped. Every other pair of positions is the original pair
  ``(u, v)``, ``u != v``, which therefore enters with weight ``c[u] c[v]``
  (0 when either cell was not drawn). The statistic over the resample's pairs
  is then a weighted statistic over the original pairs, computed without
  materialising or sorting the resample:

  * Pearson: weighted moments, one matrix-vector product
    ``w @ [1, x, y, x^2, y^2, xy]``.
  * Spearman: with the distinct values of ``x`` sorted once, the average rank
    of the ``g``-th value in the resample is ``S_<g + (S_g + 1) / 2``, where
    ``S_g`` is the resample's total weight on that value (a ``bincount``) and
    ``S_<g`` the total weight on smaller values (a cumulative sum). The
    weighted mean rank is ``(N + 1) / 2`` for ``N = sum(w)`` and the weighted
    rank variances are sums over distinct values, so only the covariance
    needs a pass over the pairs.

  Both equal scipy's ``pearsonr``/``spearmanr`` on the explicitly expanded
  resample (tested). Cost per resample: a few passes over the ``M`` pairs.
  """

  def __init__(self, x: np.ndarray, y: np.ndarray, i: np.ndarray,
               j: np.ndarray):
    # Sorting by x makes x's rank lookup sequential (and trivial without ties).
    order = np.argsort(x, kind="stable")
    self.i, self.j = i[order], j[order]
    x, y = x[order], y[order]
    _, self.gid_x = np.unique(x, return_inverse=True)
    _, self.gid_y = np.unique(y, return_inverse=True)
    self.gid_x, self.gid_y = self.gid_x.ravel(), self.gid_y.ravel()
    self.num_x, self.num_y = int(self.gid_x.max()) + 1, int(
        self.gid_y.max()) + 1
    zx, zy = _unit_sd(x), _unit_sd(y)
    self.moments = np.stack([np.ones_like(zx), zx, zy, zx * zx, zy * zy,
                             zx * zy], axis=1)                # [M, 6]

  def __call__(self, counts: np.ndarray) -> np.ndarray:
    """``float64[n, 2]`` (Pearson, Spearman) for ``counts`` ``float[n, K]``."""
    out = np.empty((counts.shape[0], 2))
    for row, c in enumerate(counts):
      w = c.take(self.i)
      w *= c.take(self.j)                                     # [M]
      out[row, 0] = _pearson_from_moments(
          np.einsum("m,mk->k", w, self.moments))
      out[row, 1] = self._spearman(w)
    return out

  def _spearman(self, w: np.ndarray) -> float:
    total = float(w.sum())
    mean = (total + 1.0) / 2.0  # Weighted mean of average ranks.
    centred, sums_sq = [], []
    for gid, num in ((self.gid_x, self.num_x), (self.gid_y, self.num_y)):
      if num == gid.size and gid is self.gid_x:   # No ties, already sorted.
        weight = w
      else:
        weight = np.bincount(gid, weights=w, minlength=num)   # [G]
      if np.count_nonzero(weight) < 2:  # One distinct value: rank variance 0.
        return math.nan
      rank = np.cumsum(weight)
      rank -= 0.5 * weight
      rank += 0.5 - mean
      sums_sq.append(float(np.einsum("g,g,g->", weight, rank, rank)))
      centred.append(rank if weight is w else rank.take(gid))
    sxy = float(np.einsum("m,m,m->", w, centred[0], centred[1]))
    return float(np.clip(sxy / math.sqrt(sums_sq[0] * sums_sq[1]), -1.0, 1.0))


def _unit_sd(v: np.ndarray) -> np.ndarray:
  sd = v.std()
  return (v - v.mean()) / (sd if sd > 0 else 1.0)


def _pearson_from_moments(s: np.ndarray) -> float:
  """Pearson r from weighted sums ``[sum w, wx, wy, wx^2, wy^2, wxy]``."""
  sw = s[0]
  if not sw > 0:
    return math.nan
  mx, my = s[1] / sw, s[2] / sw
  cxx = s[3] / sw - mx * mx
  cyy = s[4] / sw - my * my
  cxy = s[5] / sw - mx * my
  # x and y have unit standard deviation over all pairs: a resample whose
  # values are all equal leaves only rounding in cxx or cyy.
  if not (cxx > 1e-12 and cyy > 1e-12):
    return math.nan
  return float(np.clip(cxy / math.sqrt(cxx * cyy), -1.0, 1.0))


def _bootstrap_counts(n: int, k: int,
                      rng: np.random.Generator) -> np.ndarray:
  """``float64[n, k]``: how often each cell is drawn in each resample."""
  draws = rng.integers(0, k, size=(n, k))
  flat = (np.arange(n)[:, None] * k + draws).ravel()
  return np.bincount(flat, minlength=n * k).reshape(n, k).astype(np.float64)


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
    permuting ``b``. Bootstrap: see :class:`_PairBootstrap`; pairs of
    resample positions holding the same original cell are dropped, so an
    original pair ``(u, v)`` counts ``c[u] c[v]`` times.
  """
  a, b = _as_square(a, "a"), _as_square(b, "b")
  if a.shape != b.shape:
    raise ValueError(f"a and b differ in shape: {a.shape} vs {b.shape}")
  if not 0.0 < ci < 1.0:
    raise ValueError(f"ci must be in (0, 1), got {ci}")
  for name, value in (("num_permutations", num_permutations),
                      ("num_bootstrap", num_bootstrap)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  k = a.shape[0]
  if pairs is None:
    i, j = pairs_index(k)
  else:
    i, j = _check_pairs(pairs, k)
  if i.size < 3:
    raise ValueError(f"need at least 3 pairs, got {i.size}")
  x, y = a[i, j], b[i, j]
  if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    raise ValueError("a and b must be finite at every pair used; pass `pairs` "
                     "to restrict to the pairs where a metric is known")
  if pairs is not None and num_permutations:
    off = ~np.eye(k, dtype=bool)
    if not np.all(np.isfinite(a[off])):
      raise ValueError("with `pairs` and permutations, a must be finite off "
                       "the diagonal (it is looked up at permuted pairs)")
  _check_symmetric(a, "a")
  _check_symmetric(b, "b")

  nan_ci = (math.nan, math.nan)
  out: dict[str, Any] = {
      "num_cells": k, "num_pairs": int(i.size),
      "pairs": "all" if pairs is None else "subset",
      "num_permutations": int(num_permutations),
      "num_bootstrap": int(num_bootstrap), "ci_level": float(ci),
      "seed": int(seed), "constant_input": False,
  }
  if _is_constant(x) or _is_constant(y):
    blank = {"p_naive": math.nan, "p_mantel": math.nan, "ci": nan_ci,
             "null_sd": math.nan, "bootstrap_valid": 0}
    out.update(constant_input=True,
               spearman={"rho": math.nan, **blank},
               pearson={"r": math.nan, **blank},
               linear_fit={"slope": math.nan, "intercept": math.nan,
                           "r2": math.nan})
    return out

  rx, ry = sp_stats.rankdata(x), sp_stats.rankdata(y)
  rho, r = _pearson(rx, ry), _pearson(x, y)
  p_spearman = float(sp_stats.spearmanr(x, y).pvalue)
  p_pearson = float(sp_stats.pearsonr(x, y).pvalue)

  null = np.full((0, 2), np.nan)
  if num_permutations:
    perms = _cell_permutations(num_permutations, k, _rng(seed, _STREAM_MANTEL))
    if pairs is None:
      null = _mantel_all_pairs(a, x, rx, y, ry, i, j, perms)
    else:
      null = _mantel_subset(a, y, ry, i, j, perms)

  boot = np.full((0, 2), np.nan)
  if num_bootstrap:
    # Chunks depend on K only: for a given (seed, K) every metric, subset or
    # not, sees the same resamples of cells.
    rng = _rng(seed, _STREAM_BOOTSTRAP)
    stat = _PairBootstrap(x, y, i, j)
    rows = max(1, _CHUNK_ENTRIES // k)
    parts = []
    for start in range(0, num_bootstrap, rows):
      n = min(rows, num_bootstrap - start)
      parts.append(stat(_bootstrap_counts(n, k, rng)))
    boot = np.concatenate(parts)

  def summary(name, value, p_naive, column):
    res = {name: value, "p_naive": p_naive,
           "p_mantel": two_sided_permutation_p(null[:, column], value),
           "ci": nan_ci, "null_sd": _null_sd(null[:, column]),
           "bootstrap_valid": int(np.sum(np.isfinite(boot[:, column])))}
    if num_bootstrap:
      res["ci"] = _percentile_ci(boot[:, column], ci)
    return res

  slope = float(np.dot(x - x.mean(), y - y.mean()) /
                np.dot(x - x.mean(), x - x.mean()))
  out.update(
      spearman=summary("rho", rho, p_spearman, 1),
      pearson=summary("r", r, p_pearson, 0),
      linear_fit={"slope": slope,
                  "intercept": float(y.mean() - slope * x.mean()),
                  "r2": r * r})
  return out


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
  a = _as_square(a, "a")
  perm = control_permutation(a.shape[0], seed)
  res = correlate(a[np.ix_(perm, perm)], b, pairs=pairs,
                  num_permutations=num_permutations,
                  num_bootstrap=num_bootstrap, seed=seed, ci=ci)
  res["control_seed"] = int(seed)
  return res


def control_permutation(k: int, seed: int) -> np.ndarray:
  """The cell permutation ``int64[k]`` :func:`permuted_pairs_control` uses."""
  return _rng(seed, _STREAM_CONTROL).permutation(k)


# ---------------------------------------------------------------------------
# Nearest neighbours in hidden space.
# ---------------------------------------------------------------------------


def nearest_neighbours(dist, k: int = 1) -> np.ndarray:
  """The ``k`` nearest other cells of every cell: ``int64[K, k]``.

  Args:
    dist: ``float[K, K]`` distances (diagonal ignored). Ties are broken by
      the lower cell index (stable sort).
    k: neighbours per cell, ``1 <= k < K``.
  """
  d = _as_square(dist, "dist").copy()
  if not 1 <= k < d.shape[0]:
    raise ValueError(f"need 1 <= k < K = {d.shape[0]}, got k = {k}")
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, axis=1, kind="stable")[:, :k].astype(np.int64)


def nearest_neighbour_check(hidden_dist, metric, *, larger_is_similar: bool,
                            k: int = 1, num_permutations: int = 999,
                            seed: int = 0) -> dict[str, Any]:
  """Are cells that are close in hidden space more similar as graphs?

  For each cell ``i`` its ``k`` nearest other cells ``n`` in ``hidden_dist``
  give ``K k`` ordered pairs ``(i, n)`` (a mutual pair counts twice); their
  mean ``metric`` value is compared with the mean over all ``K (K - 1)``
  ordered pairs of distinct cells, which is the exact expected value for a
  random pair of distinct cells (no sampling needed).

  p-value: one-sided permutation test. The cells of ``metric`` are relabelled
  by random permutations ``pi`` and the neighbour mean recomputed as the mean
  of ``metric[pi[i], pi[n]]``; this keeps the neighbour graph and the
  dependence between pairs, unlike a rank test on pairs. ``p = (1 + #{gain_pi
  >= gain_obs}) / (1 + n_perm)``, where ``gain`` is the neighbour mean minus
  the random mean, sign-flipped for distances so that positive always means
  "neighbours are more similar than chance". For reference, scipy's
  Mann-Whitney U between neighbour pairs and all pairs (same one-sided
  alternative) is reported as ``p_mannwhitney_naive``: it treats pairs as
  independent and is anti-conservative.

  Args:
    hidden_dist: ``float[K, K]`` hidden-state distances.
    metric: ``float[K, K]`` symmetric graph metric, finite off the diagonal.
    larger_is_similar: True for similarities, False for distances.
    k: neighbours per cell.
    num_permutations: relabellings for the p-value; 0 skips it (NaN).
    seed: seeds the relabellings.

  Returns:
    ``{neighbour_mean, random_mean, difference (neighbour - random),
    similarity_gain, p_value, p_mannwhitney_naive, null_sd, k, num_cells,
    num_neighbour_pairs, num_permutations, larger_is_similar}``.
  """
  hidden_dist = _as_square(hidden_dist, "hidden_dist")
  metric = _as_square(metric, "metric")
  if metric.shape != hidden_dist.shape:
    raise ValueError(f"shapes differ: {hidden_dist.shape} vs {metric.shape}")
  n_cells = metric.shape[0]
  off = ~np.eye(n_cells, dtype=bool)
  if not np.all(np.isfinite(metric[off])):
    raise ValueError("metric must be finite off the diagonal")
  _check_symmetric(metric, "metric")
  nn = nearest_neighbours(hidden_dist, k)
  rows = np.repeat(np.arange(n_cells), k)
  cols = nn.ravel()
  neighbour_values = metric[rows, cols]
  all_values = metric[off]
  neighbour_mean = float(neighbour_values.mean())
  random_mean = float(all_values.mean())
  sign = 1.0 if larger_is_similar else -1.0
  gain = sign * (neighbour_mean - random_mean)

  p_value, null_sd = math.nan, math.nan
  if num_permutations:
    perms = _cell_permutations(num_permutations, n_cells,
                               _rng(seed, _STREAM_NEIGHBOURS))
    null_gain = sign * (metric[perms[:, rows], perms[:, cols]].mean(axis=1)
                        - random_mean)
    p_value = float((1 + np.sum(null_gain >= gain - _P_TOL * max(
        1.0, abs(gain)))) / (1 + num_permutations))
    null_sd = float(np.std(null_gain))
  alternative = "greater" if larger_is_similar else "less"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    p_mw = float(sp_stats.mannwhitneyu(
        neighbour_values, upper_triangle(metric),
        alternative=alternative).pvalue)
  return {
      "neighbour_mean": neighbour_mean, "random_mean": random_mean,
      "difference": neighbour_mean - random_mean, "similarity_gain": gain,
      "p_value": p_value, "p_mannwhitney_naive": p_mw, "null_sd": null_sd,
      "k": int(k), "num_cells": int(n_cells),
      "num_neighbour_pairs": int(rows.size),
      "num_permutations": int(num_permutations),
      "larger_is_similar": bool(larger_is_similar),
  }


# ---------------------------------------------------------------------------
# Ridge probe with nested cross-validation.
# ---------------------------------------------------------------------------


def _fold_ids(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
  """``int64[n]`` fold of each sample: a random split into near-equal folds."""
  ids = np.empty(n, dtype=np.int64)
  for f, part in enumerate(np.array_split(rng.permutation(n), folds)):
    ids[part] = f
  return ids


def _ridge_predictions(x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray,
                       alphas: np.ndarray) -> np.ndarray:
  """Ridge predictions ``float[n_test, n_alphas]``, one column per alpha.

  Features are standardised with the training part's mean and standard
  deviation (a constant training column is only centred, so it becomes 0);
  the target is centred on the training mean, which is the intercept
  (unpenalised). Solved for all alphas at once from one thin SVD.
  """
  mu = x_train.mean(axis=0)
  sd = x_train.std(axis=0)
  sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), sd, 1.0)
  xs = (x_train - mu) / sd
  y_mean = y_train.mean()
  u, s, vt = np.linalg.svd(xs, full_matrices=False)
  uty = u.T @ (y_train - y_mean)                              # [r]
  shrink = s[:, None] / (s[:, None] ** 2 + alphas[None, :])   # [r, n_alphas]
  coef = vt.T @ (shrink * uty[:, None])                       # [D, n_alphas]
  return ((x_test - mu) / sd) @ coef + y_mean


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
  sst = np.sum((y - y.mean()) ** 2)
  if not sst > 0:
    return math.nan
  return float(1.0 - np.sum((y - pred) ** 2) / sst)


def ridge_cv(x, y, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
             folds: int = 5, seed: int = 0) -> dict[str, Any]:
  """Cross-validated R^2 of a linear (ridge) probe from ``x`` to ``y``.

  Nested CV: the samples are split into ``folds`` outer folds. For each,
  alpha is chosen by an inner ``folds``-fold CV on the training part only
  (lowest pooled squared error; ties go to the larger alpha), the model is
  refitted on the whole training part with it and predicts the held-out
  fold. Features are standardised and the target centred (intercept) with
  training-part statistics only. No held-out sample influences its own
  prediction.

  ``r2`` is the pooled out-of-fold R^2, ``1 - sum (y - yhat)^2 /
  sum (y - mean(y))^2`` over all samples, each predicted by the model that
  did not see it. ``r2_constant`` is the same for the constant predictor
  "training-part mean", which is always ``<= 0``: the honest "no signal"
  reference. Per-fold values are reported too.

  The default alpha grid, ``1e-3 .. 1e5``, reaches beyond ``1e3`` so that
  with more features than samples (hidden size >= K / folds) the inner CV can
  shrink the probe to nearly the mean when there is no signal.

  Args:
    x: ``float[K, D]`` features (e.g. hidden states).
    y: ``float[K]`` target (a cell property, log perplexity).
    alphas: ridge penalties to choose from (penalty on standardised
      features: ``|y_c - X_s w|^2 + alpha |w|^2``).
    folds: outer and inner folds, ``2 <= folds`` and ``K >= 2 folds``.
    seed: seeds the fold splits.

  Returns:
    ``{r2, r2_constant, r2_fold: [folds], r2_fold_mean, r2_constant_fold_mean,
    alpha_per_fold: [folds], alphas, r2_by_alpha, folds, num_samples,
    num_features, constant_target}``. ``r2_by_alpha`` is the pooled outer-CV
    R^2 with each alpha fixed (not nested: its maximum is optimistic).
    A constant target (where R^2 is undefined) gives NaN for every R^2 and
    ``constant_target = True``.
  """
  x = _as_points(x)
  y = np.asarray(y, dtype=np.float64)
  if y.shape != (x.shape[0],):
    raise ValueError(f"y must be float[{x.shape[0]}], got shape {y.shape}")
  if not np.all(np.isfinite(y)):
    raise ValueError("y contains NaN or inf")
  alphas = np.asarray(alphas, dtype=np.float64)
  if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0):
    raise ValueError("alphas must be a non-empty sequence of positive floats")
  alphas = np.sort(alphas)
  n = x.shape[0]
  if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) \
      or folds < 2 or n < 2 * folds:
    raise ValueError(f"need an int folds >= 2 and K >= 2 folds; got "
                     f"folds = {folds!r}, K = {n}")
  out: dict[str, Any] = {
      "alphas": alphas.tolist(), "folds": int(folds), "num_samples": int(n),
      "num_features": int(x.shape[1]), "constant_target": False}
  if np.std(y) <= 1e-12 * max(1.0, abs(float(np.mean(y)))):
    nan_list = [math.nan] * folds
    out.update(constant_target=True, r2=math.nan, r2_constant=math.nan,
               r2_fold=nan_list, r2_fold_mean=math.nan,
               r2_constant_fold_mean=math.nan, alpha_per_fold=nan_list,
               r2_by_alpha=[math.nan] * alphas.size)
    return out

  rng = _rng(seed, _STREAM_FOLDS)
  outer = _fold_ids(n, folds, rng)
  nested = np.empty(n)
  constant = np.empty(n)
  by_alpha = np.empty((n, alphas.size))
  chosen = []
  for f in range(folds):
    train, test = outer != f, outer == f
    xt, yt = x[train], y[train]
    inner = _fold_ids(xt.shape[0], folds, rng)
    sse = np.zeros(alphas.size)
    for g in range(folds):
      fit, held = inner != g, inner == g
      pred = _ridge_predictions(xt[fit], yt[fit], xt[held], alphas)
      sse += np.sum((yt[held, None] - pred) ** 2, axis=0)
    best = alphas.size - 1 - int(np.argmin(sse[::-1]))
    chosen.append(float(alphas[best]))
    by_alpha[test] = _ridge_predictions(xt, yt, x[test], alphas)
    nested[test] = by_alpha[test, best]
    constant[test] = yt.mean()

  r2_fold = [_r2(y[outer == f], nested[outer == f]) for f in range(folds)]
  r2_const_fold = [_r2(y[outer == f], constant[outer == f])
                   for f in range(folds)]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN folds.
    fold_mean = float(np.nanmean(r2_fold))
    const_fold_mean = float(np.nanmean(r2_const_fold))
  out.update(
      r2=_r2(y, nested), r2_constant=_r2(y, constant), r2_fold=r2_fold,
      r2_fold_mean=fold_mean, r2_constant_fold_mean=const_fold_mean,
      alpha_per_fold=chosen,
      r2_by_alpha=[_r2(y, by_alpha[:, c]) for c in range(alphas.size)])
  return out


# ---------------------------------------------------------------------------
# Paired comparisons across seeds (one number per seed and method).


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
  rng = _rng(seed, _STREAM_BOOTSTRAP)
  means = d[rng.integers(0, n, (num_bootstrap, n))].mean(axis=1)
  out["ci"] = list(_percentile_ci(means, ci))
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
  if n < 3 or _is_constant(x) or _is_constant(y):
    return out
  tau = sp_stats.kendalltau(x, y)
  rho = sp_stats.spearmanr(x, y)
  out.update(kendall_tau=float(tau.statistic), p_kendall=float(tau.pvalue),
             spearman_rho=float(rho.statistic), p_spearman=float(rho.pvalue))
  rng = _rng(seed, _STREAM_BOOTSTRAP)
  taus, rhos = [], []
  for _ in range(num_bootstrap):
    i = rng.integers(0, n, n)
    if _is_constant(x[i]) or _is_constant(y[i]):
      continue
    taus.append(sp_stats.kendalltau(x[i], y[i]).statistic)
    rhos.append(sp_stats.spearmanr(x[i], y[i]).statistic)
  out["bootstrap_valid"] = len(taus)
  if taus:
    out["kendall_ci"] = list(_percentile_ci(np.asarray(taus), ci))
    out["spearman_ci"] = list(_percentile_ci(np.asarray(rhos), ci))
  return out
