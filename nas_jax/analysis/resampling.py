"""Resampling of cells: the random draws behind every p-value and interval.

Shared by :mod:`nas_jax.analysis.pairwise`, :mod:`nas_jax.analysis.carry_probes`
and :mod:`nas_jax.analysis.paired`:

* :func:`rng`: every random draw comes from a ``numpy.random.Generator``
  seeded from ``(seed, stream)``, with one stream of :mod:`nas_jax.streams`
  per purpose (cell permutations of the Mantel test, bootstrap resamples, the
  control permutation, CV folds, nearest-neighbour relabellings), so results
  are deterministic given ``seed`` and skipping one part (e.g.
  ``num_bootstrap=0``) does not change the numbers of another.
* :func:`cell_permutations`, :func:`percentile_ci`, :data:`P_TOL`: the pieces
  of the permutation tests and percentile bootstrap intervals.
* The null and bootstrap distributions of Pearson's r and Spearman's rho over
  the pairs of ``K`` cells (:func:`mantel_all_pairs`, :func:`mantel_subset`,
  :func:`bootstrap_over_cells`, the resamples by
  :func:`bootstrap_count_chunks`), which :func:`pairwise.correlate
  <nas_jax.analysis.pairwise.correlate>` reports. These compute one
  correlation per call and are the reference definitions; many correlations
  over the same cells share their permutations and resamples in
  :mod:`nas_jax.analysis.mantel_batch`, :mod:`nas_jax.analysis.bootstrap_batch`
  and :func:`correlate_batch.correlate_many
  <nas_jax.analysis.correlate_batch.correlate_many>` (same numbers, tested).

Speed of one call (``K = 1000``, 499,500 pairs, single-threaded): the
Mantel test gathers the upper triangle of a pre-ranked, pre-standardised
matrix once per permutation (rank once: a permutation of cells only permutes
the pair values), about 10 ms per permutation for Spearman and Pearson
together; the
bootstrap works on pair weights (:class:`PairBootstrap`) without sorting,
20-40 ms per resample. So 999 permutations and 1000 resamples take about
10 s and 20-40 s on a busy 2-core machine; ``K = 100`` takes well under a
second. No BLAS call sits in the loops (einsum), so the results do not
depend on the number of BLAS threads.

Everything here is host-side NumPy/SciPy; never call it inside ``jax.jit``.
"""

from __future__ import annotations

import math

import numpy as np

# A permuted statistic counts as "at least as extreme" when it is within this
# absolute tolerance of the observed one (statistics lie in [-1, 1]); this
# absorbs summation-order rounding between the observed and permuted paths.
P_TOL = 1e-10

# Bound on the number of float64 entries of one working chunk ([rows, M]).
CHUNK_ENTRIES = 1 << 21


def rng(seed: int, stream: int) -> np.random.Generator:
  """The generator of ``stream`` (a :mod:`nas_jax.streams` id) for ``seed``."""
  return np.random.default_rng(np.random.SeedSequence([int(seed), stream]))


def average_ranks(values: np.ndarray, axis: int = -1) -> np.ndarray:
  """``scipy.stats.rankdata(values, axis=axis)`` (average ranks from 1, ties
  sharing their mean rank), the same float64 numbers, faster (1.3-3x here:
  more for many rows at once).

  NumPy's default sort (vectorised quicksort) orders the values; a tie
  group at sorted places ``start <= p < end`` gets ``(start + end + 1) /
  2``, which is exact in float64, as SciPy's. The values must be finite
  (NaN has no rank here; SciPy would propagate it).

  One row of integers within a range of :data:`_COUNT_RANGE` (graph metrics
  such as edit distances) is ranked by counting instead of sorting: the same
  ``start`` and ``end`` of each value's group from the cumulative counts,
  so the same numbers, ~4-6x faster (499,500 pairs of 24 values: 45-72 ms
  -> 11-14 ms here).
  """
  v = np.moveaxis(np.asarray(values), axis, -1)
  n = v.shape[-1]
  if v.size == 0:
    return np.zeros(np.shape(values))
  flat = v.reshape(-1, n)
  if flat.shape[0] == 1:
    codes = _small_integer_codes(flat[0])
    if codes is not None:
      end = np.cumsum(np.bincount(codes))
      start = np.concatenate([[0], end[:-1]])
      by_code = (start + end + 1) / 2.0
      return np.moveaxis(by_code[codes].reshape(v.shape), -1, axis)
  order = np.argsort(flat, axis=1)
  ranks = np.empty(flat.shape)
  rows = np.arange(flat.shape[0])[:, None]
  sorted_v = np.take_along_axis(flat, order, axis=1)
  new = np.ones(flat.shape, dtype=bool)
  new[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
  ranks[rows, order] = np.arange(1, n + 1, dtype=np.float64)  # No ties.
  for r in np.flatnonzero(~new.all(axis=1)):  # Rows with ties.
    start = np.flatnonzero(new[r])
    end = np.append(start[1:], n)
    ranks[r, order[r]] = np.repeat((start + end + 1) / 2.0, end - start)
  return np.moveaxis(ranks.reshape(v.shape), -1, axis)


# average_ranks counts the values of a row of integers spanning fewer than
# this many values (and at most about 4 per entry of the row).
_COUNT_RANGE = 1 << 20


def _small_integer_codes(v: np.ndarray) -> np.ndarray | None:
  """``v - min(v)`` as ``int64`` when ``v`` is integers (of any dtype)
  spanning fewer than :data:`_COUNT_RANGE` values, and not many more than
  ``v`` has entries (the counts stay small); otherwise None."""
  if v.dtype.kind not in "biuf" or v.size == 0:
    return None
  # Wide types: the difference of two int8 (or float16) integers need not
  # fit their own type; float64 holds every float32 or float16 exactly.
  wide = {"b": np.int64, "i": np.int64, "u": np.uint64,
          "f": np.float64}[v.dtype.kind]
  v = v.astype(wide, copy=False)
  low, high = v.min(), v.max()
  span = float(high) - float(low)
  if not (np.isfinite(span) and span < min(_COUNT_RANGE, 4 * v.size + 1024)):
    return None
  if v.dtype.kind == "f" and not np.array_equal(v, np.floor(v)):
    return None
  return (v - low).astype(np.int64)  # Exact: integers, v >= low.


def is_constant(v: np.ndarray) -> bool:
  """True for an empty ``v`` or one whose values are all equal."""
  return v.size == 0 or bool(np.all(v == v[0]))


def standardise(v: np.ndarray, axis: int = -1) -> np.ndarray:
  """``(v - mean) / ||v - mean||`` along ``axis``; NaN where constant.

  With both vectors standardised like this, Pearson's r is their dot product.
  """
  centred = v - v.mean(axis=axis, keepdims=True)
  norm = np.sqrt(np.sum(centred * centred, axis=axis, keepdims=True))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(norm > 0, centred / np.where(norm > 0, norm, 1.0), np.nan)


def percentile_ci(values: np.ndarray, ci: float) -> tuple[float, float]:
  """Percentile interval of level ``ci`` of the finite ``values``.

  NaN bounds when fewer than 2 values are finite.
  """
  values = values[np.isfinite(values)]
  if values.size < 2:
    return (math.nan, math.nan)
  lo, hi = np.quantile(values, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
  return (float(lo), float(hi))


def cell_permutations(n: int, k: int,
                      generator: np.random.Generator) -> np.ndarray:
  """``int64[n, k]``: ``n`` independent uniform permutations of ``range(k)``."""
  return generator.permuted(np.tile(np.arange(k, dtype=np.int64), (n, 1)),
                            axis=1)


# ---------------------------------------------------------------------------
# Mantel null distributions.
# ---------------------------------------------------------------------------


def mantel_all_pairs(a: np.ndarray, x: np.ndarray, rx: np.ndarray,
                     y: np.ndarray, ry: np.ndarray, i: np.ndarray,
                     j: np.ndarray, perms: np.ndarray) -> np.ndarray:
  """Null ``float64[n, 2]`` (Pearson, Spearman) when all pairs are used.

  Permuting the cells of ``a`` maps the set of pairs onto itself, so the
  permuted pair values are a permutation of ``x``: their mean, norm and
  (average) ranks are those of ``x``, permuted. So ``x`` and its ranks are
  standardised once, stored as symmetric ``[K, K]`` matrices, and each
  permutation only gathers ``M`` entries and takes a dot product.

  Args:
    a: ``float[K, K]`` the matrix whose cells are permuted.
    x, rx: ``float[M]`` its values at the pairs ``(i, j)`` and their ranks.
    y, ry: ``float[M]`` the other matrix's values there and their ranks.
    i, j: ``int[M]`` every pair ``i < j``.
    perms: ``int[n, K]`` cell permutations (:func:`cell_permutations`).
  """
  k = a.shape[0]
  table = np.zeros((k * k, 2))
  both = np.stack([standardise(x), standardise(rx)], axis=1)
  table[i * k + j] = both
  table[j * k + i] = both
  target = np.stack([standardise(y), standardise(ry)], axis=1)
  null = np.empty((perms.shape[0], 2))
  for n, perm in enumerate(perms):
    idx = perm.take(i) * k
    idx += perm.take(j)
    null[n] = np.einsum("mc,mc->c", table.take(idx, axis=0), target)
  return null


def mantel_subset(a: np.ndarray, y: np.ndarray, ry: np.ndarray,
                  i: np.ndarray, j: np.ndarray,
                  perms: np.ndarray) -> np.ndarray:
  """Null ``float64[n, 2]`` (Pearson, Spearman) for a subset of pairs.

  The permuted pairs ``(pi[i], pi[j])`` are generally not the original
  pairs, so ``a`` (known everywhere) is looked up there and the permuted
  values are re-standardised and re-ranked for every permutation. Arguments
  as in :func:`mantel_all_pairs`, ``(i, j)`` any pairs of distinct cells.
  """
  m = i.size
  zy, zry = standardise(y), standardise(ry)
  null = np.empty((perms.shape[0], 2))
  rows = max(1, CHUNK_ENTRIES // max(m, 1))
  for start in range(0, perms.shape[0], rows):
    chunk = perms[start:start + rows]
    values = a[chunk[:, i], chunk[:, j]]                      # [rows, M]
    null[start:start + rows, 0] = np.einsum("rm,m->r", standardise(values),
                                              zy)
    ranks = average_ranks(values, axis=1)
    null[start:start + rows, 1] = np.einsum("rm,m->r", standardise(ranks),
                                              zry)
  return null


# ---------------------------------------------------------------------------
# Bootstrap over cells.
# ---------------------------------------------------------------------------


def bootstrap_over_cells(x: np.ndarray, y: np.ndarray, i: np.ndarray,
                         j: np.ndarray, num_cells: int, num_resamples: int,
                         generator: np.random.Generator) -> np.ndarray:
  """``float64[num_resamples, 2]``: (Pearson, Spearman) of cell resamples.

  Each resample draws ``num_cells`` cells with replacement; its statistic is
  taken over the pairs ``(i, j)`` with values ``x`` and ``y``, as explained
  in :class:`PairBootstrap`. NaN where a resample is degenerate.
  """
  stat = PairBootstrap(x, y, i, j)
  return np.concatenate([stat(counts) for counts in bootstrap_count_chunks(
      num_cells, num_resamples, generator)])


def bootstrap_count_chunks(num_cells: int, num_resamples: int,
                           generator: np.random.Generator):
  """Yields the resamples of :func:`bootstrap_over_cells` as count chunks
  ``float64[rows, num_cells]`` (``counts[r, u]``: draws of cell ``u``).

  Chunks depend on ``K`` only: for a given (seed, K) every metric, subset or
  not, sees the same resamples of cells.
  """
  rows = max(1, CHUNK_ENTRIES // num_cells)
  for start in range(0, num_resamples, rows):
    n = min(rows, num_resamples - start)
    yield _bootstrap_counts(n, num_cells, generator)


class PairBootstrap:
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
    zx, zy = unit_sd(x), unit_sd(y)
    self.moments = np.stack([np.ones_like(zx), zx, zy, zx * zx, zy * zy,
                             zx * zy], axis=1)                # [M, 6]

  def __call__(self, counts: np.ndarray) -> np.ndarray:
    """``float64[n, 2]`` (Pearson, Spearman) for ``counts`` ``float[n, K]``."""
    out = np.empty((counts.shape[0], 2))
    for row, c in enumerate(counts):
      w = c.take(self.i)
      w *= c.take(self.j)                                     # [M]
      out[row, 0] = pearson_from_moments(
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


def unit_sd(v: np.ndarray) -> np.ndarray:
  """``(v - mean) / sd`` (``sd`` 1 when ``v`` is constant)."""
  sd = v.std()
  return (v - v.mean()) / (sd if sd > 0 else 1.0)


def pearson_from_moments(s: np.ndarray) -> float:
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
                      generator: np.random.Generator) -> np.ndarray:
  """``float64[n, k]``: how often each cell is drawn in each resample."""
  draws = generator.integers(0, k, size=(n, k))
  flat = (np.arange(n)[:, None] * k + draws).ravel()
  return np.bincount(flat, minlength=n * k).reshape(n, k).astype(np.float64)
