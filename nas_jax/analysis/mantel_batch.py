"""Mantel nulls of many correlations over the same cells, computed together.

:func:`pairwise.correlate <nas_jax.analysis.pairwise.correlate>` permutes the
cells of one matrix per call, and every call with the same seed and ``K``
draws the *same* permutations (a fresh generator of the ``MANTEL`` stream).
The probe correlates six carry distances (``h``, ``c``, ``[c, h]`` x L2,
cosine) with five graph metrics over the same ``K`` cells; here each
permutation is applied once, to each metric, and one matrix product gives
its statistic against every carry.

Why the numbers are the per-call ones. :func:`resampling.mantel_all_pairs
<nas_jax.analysis.resampling.mantel_all_pairs>` computes, for a permutation
``perm`` with inverse ``sigma``, ``za`` the standardised carry and ``zb`` the
standardised metric (both symmetric, values or ranks)::

    null = sum_m za[perm(i_m), perm(j_m)] * zb[i_m, j_m]
         = sum_m za[i_m, j_m] * zb[sigma(i_m), sigma(j_m)]

(substitute the pair ``{u, v} = {perm(i_m), perm(j_m)}``: as ``m`` runs over
all pairs so does ``{u, v}``, and ``{sigma(u), sigma(v)} = {i_m, j_m}``). The
second line permutes the metric instead of the carry, so one gather of the
metric serves every carry. The gathered values are bit-identical to the
per-call ones (looked up by the value's code, see :class:`AllPairsNulls`);
only the order of the sum changes, so the nulls agree to rounding (~1e-16)
and p-value counts, which allow ``resampling.P_TOL``, are the same.

:class:`CarryGatherNulls` computes the first line as written, gathering the
permuted carries instead: better for few carries against many metrics (see
its docstring). :class:`CellSubsetNulls` does the same for a metric known
only on a subset of cells (all pairs among them), keeping today's semantics,
and :func:`subset_nulls` batches the generic subset path over several
metrics on the same pairs. Host-side NumPy (and Numba-compiled loops for
:class:`CellSubsetNulls`) only; never call it inside ``jax.jit``.
"""

from __future__ import annotations

from concurrent import futures

import numba
import numpy as np

from nas_jax.analysis import blas
from nas_jax.analysis import resampling

# AllPairsNulls' and CarryGatherNulls' tiles: pairs per block and
# permutations per matrix product (and per task of every class's worker
# threads: _chunked). A tile's gathered values ([pairs,
# permutations, columns], 1024 x 16 x 4 float64 = 512 KB) stay in cache, and
# numpy's per-call overhead stays small.
_ALL_BLOCK = 1 << 10
_ALL_CHUNK = 16
# Metrics with at most this many distinct values are gathered as uint16 codes
# (a 2 MB table for K = 1000) and looked up; others as float64.
_MAX_CODES = 1 << 16


def inverse_permutations(perms: np.ndarray) -> np.ndarray:
  """``int64[n, K]``: row ``r`` is the inverse of permutation ``perms[r]``."""
  perms = np.asarray(perms, dtype=np.int64)
  inv = np.empty_like(perms)
  rows = np.arange(perms.shape[0])[:, None]
  inv[rows, perms] = np.arange(perms.shape[1])
  return inv


def symmetric_table(k: int, i: np.ndarray, j: np.ndarray,
                    values: np.ndarray) -> np.ndarray:
  """``values`` at pairs ``(i, j)`` as a flat symmetric ``[k * k]`` table
  (zero elsewhere), indexed by ``u * k + v``."""
  table = np.zeros(k * k, dtype=values.dtype)
  table[i * k + j] = values
  table[j * k + i] = values
  return table


def joint_codes(keys: list[np.ndarray]) -> list[tuple[list[int],
                                                      np.ndarray]]:
  """Merges the distinct-value codes of ``keys`` (each ``[M]``) into joint
  codes of at most :data:`_MAX_CODES` values, first fit.

  Returns ``[(members, code int64[M])]``: ``code`` numbers the distinct
  combinations of the members' values. A key with more distinct values than
  that stands alone.
  """
  groups: list[tuple[list[int], np.ndarray]] = []
  for b, key in enumerate(keys):
    code = np.unique(key, return_inverse=True)[1].ravel()
    for g, (members, joint) in enumerate(groups):
      size = (int(joint.max()) + 1) * (int(code.max()) + 1)
      if size > _MAX_CODES * 64:  # Too many to try.
        continue
      merged = np.unique(joint * (int(code.max()) + 1) + code,
                         return_inverse=True)[1].ravel()
      if int(merged.max()) < _MAX_CODES:
        groups[g] = (members + [b], merged)
        break
    else:
      groups.append(([b], code))
  return groups


class AllPairsNulls:
  """Mantel nulls of every (carry, metric) correlation over all pairs.

  Carries are given over the pairs as :func:`resampling.mantel_all_pairs`
  builds its table (standardised values and ranks), metrics as its target.
  Per group of metrics (:func:`joint_codes`) a ``[K, K]`` table of the code
  of the pair's values is gathered once per permutation, and the metrics'
  standardised values and ranks are looked up by code, a row of every
  member's value (rank) per lookup, in tables filled with entries of
  ``metrics_v``/``metrics_r`` themselves (so the gathered numbers are
  bit-identical to the per-call target); a metric with too many distinct
  values is gathered from ``float64`` ``[K * K]`` tables directly. Then one
  matrix product per block of pairs takes every gathered column against
  every carry.

  The work is tiled as blocks of :data:`_ALL_BLOCK` pairs by
  :data:`_ALL_CHUNK` permutations, gathered pair-major (``[pairs,
  permutations, metrics]``): each lookup fetches a row, the tile stays in
  cache, and the products see all permutations of the chunk at once.

  Args:
    k: number of cells.
    carries_v, carries_r: ``float[C, M]`` standardised values and ranks of
      each carry at the pairs ``i < j`` (row-major).
    metrics_v, metrics_r: ``float[B, M]`` standardised values and ranks of
      each metric there. A row of ``metrics_r`` that is all NaN marks a
      metric with a Pearson null only (its Spearman null is NaN).
  """

  def __init__(self, k: int, carries_v: np.ndarray, carries_r: np.ndarray,
               metrics_v: np.ndarray, metrics_r: np.ndarray):
    self.k = k
    self.i, self.j = (a.astype(np.int64) for a in np.triu_indices(k, 1))
    self.zv = np.ascontiguousarray(np.asarray(carries_v, np.float64).T)
    self.zr = np.ascontiguousarray(np.asarray(carries_r, np.float64).T)
    self.num_metrics = len(metrics_v)
    # Sources of gathered columns: (flat [K * K] uint16 code table, or None
    # to look up by pair; value table [codes or K * K, members]; rank table
    # [codes or K * K, ranked members] or None; members; ranked members).
    self.sources = []
    has_rank = [not np.all(np.isnan(r)) for r in metrics_r]
    # Code by rank where there is one: equal ranks are equal values, whereas
    # two close values could standardise to the same float.
    keys = [r if ok else v for v, r, ok in zip(metrics_v, metrics_r,
                                               has_rank)]
    for members, code in joint_codes(keys):
      ranked = [b for b in members if has_rank[b]]
      if int(code.max()) >= _MAX_CODES:
        (b,) = members
        self.sources.append((None, self._flat(metrics_v[b])[:, None],
                             self._flat(metrics_r[b])[:, None]
                             if ranked else None, members, ranked))
        continue
      first = np.zeros(int(code.max()) + 1, dtype=np.int64)
      first[code] = np.arange(code.size)
      self.sources.append((
          self._flat(code.astype(np.uint16)),
          np.stack([metrics_v[b][first] for b in members], axis=1),
          np.stack([metrics_r[b][first] for b in ranked], axis=1)
          if ranked else None, members, ranked))

  def _flat(self, values: np.ndarray) -> np.ndarray:
    return symmetric_table(self.k, self.i, self.j, values)

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, C, B, 2]`` (Pearson, Spearman) for ``perms``
    ``int[n, K]`` (the permutations of the carries' cells, as drawn by
    :func:`resampling.cell_permutations`). ``workers`` threads share the
    permutations (numpy and BLAS release the GIL); every permutation's
    numbers are the same for any ``workers``."""
    return _chunked(self._chunk, inverse_permutations(perms), workers,
                    (self.zv.shape[1], self.num_metrics, 2))

  def _chunk(self, inv: np.ndarray) -> np.ndarray:
    """:meth:`__call__` for the inverse permutations ``inv`` ``[P, K]``."""
    with blas.single_threaded():  # Parallel over chunks instead.
      num_p, num_c = inv.shape[0], self.zv.shape[1]
      inv_t = np.ascontiguousarray(inv.T)                     # [K, P]
      row_k = inv_t * self.k
      acc = [(np.zeros((num_p * len(members), num_c)),
              np.zeros((num_p * len(ranked), num_c)))
             for *_, members, ranked in self.sources]
      for start in range(0, self.i.size, _ALL_BLOCK):
        stop = min(self.i.size, start + _ALL_BLOCK)
        b = stop - start
        # Flat index of the permuted pairs (inv[i], inv[j]), [b, P];
        # mode="clip" only skips the bounds check: indices are in range.
        idx = np.take(row_k, self.i[start:stop], axis=0, mode="clip")
        idx += np.take(inv_t, self.j[start:stop], axis=0, mode="clip")
        zv, zr = self.zv[start:stop], self.zr[start:stop]
        for (table, values, ranks, _, _), (acc_v, acc_r) in zip(
            self.sources, acc):
          at = idx if table is None else np.take(
              table, idx, mode="clip").astype(np.intp)
          acc_v += np.take(values, at, axis=0, mode="clip").reshape(
              b, -1).T @ zv
          if ranks is not None:
            acc_r += np.take(ranks, at, axis=0, mode="clip").reshape(
                b, -1).T @ zr
      out = np.full((num_p, num_c, self.num_metrics, 2), np.nan)
      for (*_, members, ranked), (acc_v, acc_r) in zip(self.sources, acc):
        # Rows of acc are (permutation, member), permutation-major.
        acc_v = acc_v.reshape(num_p, len(members), num_c)
        acc_r = acc_r.reshape(num_p, len(ranked), num_c)
        for q, b in enumerate(members):
          out[:, :, b, 0] = acc_v[:, q]
        for q, b in enumerate(ranked):
          out[:, :, b, 1] = acc_r[:, q]
      return out


def _chunked(fn, perms: np.ndarray, workers: int, shape: tuple[int, ...]
             ) -> np.ndarray:
  """``fn`` over chunks of :data:`_ALL_CHUNK` permutations (rows of
  ``perms``), on ``workers`` threads, concatenated; an empty
  ``[0, *shape]`` array for no permutations."""
  chunks = [perms[s:s + _ALL_CHUNK]
            for s in range(0, perms.shape[0], _ALL_CHUNK)]
  if workers > 1 and len(chunks) > 1:
    with futures.ThreadPoolExecutor(workers) as pool:
      parts = list(pool.map(fn, chunks))
  else:
    parts = [fn(c) for c in chunks]
  if not parts:
    return np.full((0, *shape), np.nan)
  return np.concatenate(parts)


def row_blocks(k: int, target: int) -> list[tuple[int, int, int, int]]:
  """Blocks of whole rows of the pairs ``i < j`` (row-major): ``(i0, i1,
  m0, m1)``, rows ``i0 <= i < i1`` holding the pairs ``m0 <= m < m1``, each
  block at least ``target`` pairs where the rows allow."""
  out = []
  i0 = m0 = 0
  while i0 < k - 1:
    i1, m1 = i0, m0
    while i1 < k - 1 and m1 - m0 < target:
      m1 += k - i1 - 1
      i1 += 1
    out.append((i0, i1, m0, m1))
    i0, m0 = i1, m1
  return out


@numba.njit(cache=True, nogil=True)
def _permuted_rows(perms: np.ndarray, sigmas: np.ndarray, i0: int, i1: int,
                   table: np.ndarray, out: np.ndarray,
                   row: np.ndarray) -> None:
  """``out[p, x, m - m0] = table[perm(i) * K + perm(j), x]`` for the pairs
  ``m = (i, j)``, ``i0 <= i < i1 < j``, in row-major order (``m0`` the first
  pair of row ``i0``), ``perm = perms[p]`` and ``sigmas[p]`` its inverse.

  A long row of pairs reads row ``perm(i)`` of the table whole and in order
  into ``row`` (``float64[X, K]`` scratch), at ``sigma`` of each column (the
  ``j`` with ``perm(j)`` that column): a sequential read instead of ``K - i
  - 1`` scattered ones, each a likely cache miss. A short row (under a
  quarter of ``K`` pairs) is gathered directly. Copies only: the values are
  the table's, bit for bit.
  """
  k = perms.shape[1]
  num_x = table.shape[1]
  for p in range(perms.shape[0]):
    perm = perms[p]
    sigma = sigmas[p]
    off = 0
    for i in range(i0, i1):
      base = perm[i] * k
      n = k - i - 1
      if 4 * n >= k:
        for c in range(k):
          j = sigma[c]
          for x in range(num_x):
            row[x, j] = table[base + c, x]
        for x in range(num_x):
          for b in range(n):
            out[p, x, off + b] = row[x, i + 1 + b]
      else:
        for b in range(n):
          c = base + perm[i + 1 + b]
          for x in range(num_x):
            out[p, x, off + b] = table[c, x]
      off += n


class CarryGatherNulls:
  """Mantel nulls of a few carries with many metrics over all pairs.

  The sum of :func:`resampling.mantel_all_pairs` as written: for each
  permutation ``perm`` the carries are gathered at the permuted pairs
  ``(perm(i_m), perm(j_m))`` and one matrix product takes them against every
  metric, which stays in place. Gathering a carry costs about as much as
  :class:`AllPairsNulls`' lookup of a metric column, so this is the faster
  way when the carries are fewer than the metrics: the recency tests
  (:mod:`nas_jax.analysis.recency`) take 3 carries against up to 21 metrics.
  The same sums in another order: equal to :class:`AllPairsNulls`' and the
  reference's to rounding (~1e-16).

  The carries are stored as a ``float64 [K * K, X]`` table; the gather is a
  Numba-compiled loop over whole rows of pairs (:func:`_permuted_rows`,
  which reads each permuted row of the table in order), in blocks of rows
  of about :data:`_ALL_BLOCK` pairs (:func:`row_blocks`) by
  :data:`_ALL_CHUNK` permutations, each block's values taken against the
  metrics in one matrix product.

  Args:
    k: number of cells.
    carries: ``float[X, M]`` e.g. the standardised ranks of each carry at
      the pairs ``i < j`` (row-major).
    metrics: ``float[T, M]`` the same for each metric.
  """

  def __init__(self, k: int, carries: np.ndarray, metrics: np.ndarray):
    self.k = k
    i, j = (a.astype(np.int64) for a in np.triu_indices(k, 1))
    carries = np.asarray(carries, np.float64)
    self.num_carries = carries.shape[0]
    self.table = np.zeros((k * k, self.num_carries))
    self.table[i * k + j] = carries.T
    self.table[j * k + i] = carries.T
    self.metrics = np.ascontiguousarray(np.asarray(metrics, np.float64).T)

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, X, T]`` for cell permutations ``perms``
    ``int[n, K]``; ``workers`` threads share them (every permutation's
    numbers are the same for any ``workers``)."""
    perms = np.ascontiguousarray(perms, dtype=np.int64)
    # The compiled loop does not check its indices.
    _check_permutations(perms, self.k)
    return _chunked(self._chunk, perms, workers,
                    (self.num_carries, self.metrics.shape[1]))

  def _chunk(self, perms: np.ndarray) -> np.ndarray:
    """:meth:`__call__` for ``perms`` ``[P, K]``."""
    with blas.single_threaded():  # Parallel over chunks instead.
      num_p, num_x = perms.shape[0], self.num_carries
      sigmas = inverse_permutations(perms)
      blocks = row_blocks(self.k, _ALL_BLOCK)
      scratch = np.empty(num_p * num_x * max(m1 - m0
                                             for *_, m0, m1 in blocks))
      row = np.empty((num_x, self.k))
      acc = np.zeros((num_p * num_x, self.metrics.shape[1]))
      for i0, i1, m0, m1 in blocks:
        gathered = scratch[:num_p * num_x * (m1 - m0)].reshape(
            num_p, num_x, m1 - m0)
        _permuted_rows(perms, sigmas, i0, i1, self.table, gathered, row)
        acc += gathered.reshape(num_p * num_x, -1) @ self.metrics[m0:m1]
      # Rows of acc are (permutation, carry), permutation-major.
      return acc.reshape(num_p, num_x, -1)


def _check_permutations(perms: np.ndarray, k: int) -> None:
  """Raises ValueError unless ``perms`` is rows of permutations of ``k``."""
  if perms.ndim != 2 or perms.shape[1] != k or not np.array_equal(
      np.sort(perms, axis=1), np.broadcast_to(np.arange(k), perms.shape)):
    raise ValueError(f"perms must be rows of permutations of {k} cells")


@numba.njit(cache=True, nogil=True)
def _removed_pairs(removed: np.ndarray, is_removed: np.ndarray,
                   xc: np.ndarray, group: np.ndarray,
                   count: np.ndarray) -> tuple[float, float]:
  """Sums over the pairs touching the cells ``removed`` (``R``), each once.

  Returns ``(sum xc, sum xc^2)`` over those pairs and adds each of them to
  ``count`` at its tie group ``group`` (both of :class:`CellSubsetNulls`).
  ``is_removed`` (``bool[K]``) is scratch space, all False on entry and on
  return.
  """
  k = is_removed.size
  for u in removed:
    is_removed[u] = True
  sum1 = 0.0
  sum2 = 0.0
  for u in removed:
    for v in range(k):
      if v == u or (is_removed[v] and v < u):  # A pair of R counts once.
        continue
      lo, hi = min(u, v), max(u, v)
      m = lo * (2 * k - lo - 1) // 2 + (hi - lo - 1)  # Row-major pair id.
      sum1 += xc[m]
      sum2 += xc[m] * xc[m]
      count[group[m]] += 1
  for u in removed:
    is_removed[u] = False
  return sum1, sum2


@numba.njit(cache=True, nogil=True)
def _rank_steps(count: np.ndarray, size: np.ndarray, base2: np.ndarray,
                twice_rank: np.ndarray) -> tuple[float, int]:
  """Twice the centred rank among the pairs of ``S`` of each tie group.

  ``count[g]`` is the number of removed pairs in tie group ``g`` (sorted
  order); ``2 D`` of the group is twice those in the groups before plus
  ``count[g]``, and ``twice_rank[g] = base2[g] - 2 D``. Returns the drop of
  the tie sum ``sum t^3 - t`` (``t`` the group sizes ``size``) when the
  removed pairs leave, and the number of groups they empty. Sets ``count``
  back to zero.
  """
  below = 0  # Twice the removed pairs in the groups before g.
  drop = 0.0
  emptied = 0
  for g in range(count.size):
    c = count[g]
    twice_rank[g] = base2[g] - below - c
    if c:
      t = size[g]
      left = t - c
      drop += t ** 3 - t - (left ** 3 - left)
      if left == 0:
        emptied += 1
      below += 2 * c
      count[g] = 0
  return drop, emptied


@numba.njit(cache=True, nogil=True)
def _gathered_dots(perm: np.ndarray, sigma: np.ndarray, table: np.ndarray,
                   xc: np.ndarray, group: np.ndarray, twice_rank: np.ndarray,
                   z: np.ndarray) -> tuple[float, float]:
  """``(sum xc z0, sum twice_rank[group] z1)`` over the pairs ``m = (i,
  j)``, ``i < j``, in row-major order, where ``(z0, z1) = table[sigma(i) *
  K + sigma(j)]`` and ``sigma`` is the inverse of ``perm``.

  Row ``i`` of the pairs copies row ``sigma(i)`` of the table whole, in
  order, into ``z`` (``float64[2, K]`` scratch) at ``perm`` of each column:
  reading it in order is much faster than gathering its columns
  ``sigma(j)``, each a likely cache miss. Each row's terms are summed
  first, then the rows.
  """
  k = perm.size
  dot_x = 0.0
  dot_r = 0.0
  m = 0
  for i in range(k - 1):
    row = sigma[i] * k
    for c in range(k):
      z[0, perm[c]] = table[row + c, 0]
      z[1, perm[c]] = table[row + c, 1]
    row_x = 0.0
    row_r = 0.0
    for j in range(i + 1, k):
      row_x += xc[m] * z[0, j]
      row_r += twice_rank[group[m]] * z[1, j]
      m += 1
    dot_x += row_x
    dot_r += row_r
  return dot_x, dot_r


@numba.njit(cache=True, nogil=True)
def _subset_nulls(perms: np.ndarray, outside: np.ndarray, table: np.ndarray,
                  xc: np.ndarray, group: np.ndarray, size: np.ndarray,
                  base2: np.ndarray, sum_x: float, sum_xx: float,
                  tie_sum: float, num_s: float, s_y: float) -> np.ndarray:
  """:class:`CellSubsetNulls`' ``float64[P, 2]`` (Pearson, Spearman) for
  the permutations ``perms`` (``int64[P, K]``); the other arguments are the
  class's attributes of those names (``sum_x, sum_xx`` its ``sums``,
  ``num_s`` as a float)."""
  k = perms.shape[1]
  out = np.empty((perms.shape[0], 2))
  removed = np.empty(outside.size, np.int64)
  is_removed = np.zeros(k, np.bool_)
  count = np.zeros(size.size, np.int32)
  twice_rank = np.empty(size.size, np.int64)
  sigma = np.empty(k, np.int64)
  z = np.empty((2, k))
  for n in range(perms.shape[0]):
    perm = perms[n]
    for c in range(k):
      sigma[perm[c]] = c
    for q in range(outside.size):
      removed[q] = perm[outside[q]]
    rem_x, rem_xx = _removed_pairs(removed, is_removed, xc, group, count)
    drop, emptied = _rank_steps(count, size, base2, twice_rank)
    dot_x, dot_r = _gathered_dots(perm, sigma, table, xc, group, twice_rank,
                                  z)
    # Both are NaN where the pairs of S all tie (one group left), which the
    # norms, sums minus sums, may miss by rounding.
    constant = size.size - emptied == 1
    sum1 = sum_x - rem_x
    sum2 = sum_xx - rem_xx
    norm = np.sqrt(max(sum2 - sum1 * sum1 / num_s, 0.0))
    out[n, 0] = (dot_x - sum1 / num_s * s_y) / norm \
        if norm > 0 and not constant else np.nan
    rank_norm = np.sqrt(max((num_s ** 3 - num_s - (tie_sum - drop)) / 12.0,
                            0.0))
    out[n, 1] = 0.5 * dot_r / rank_norm \
        if rank_norm > 0 and not constant else np.nan
  return out


class CellSubsetNulls:
  """Mantel nulls of a metric known only on a subset of cells, fast.

  The correlation is over the pairs among the cells in ``cells`` (``F``),
  e.g. the absolute ppl difference, defined where ppl is finite. Today's
  semantics (:func:`resampling.mantel_subset` on those pairs) are kept: a
  permutation of all ``K`` cells sends the pairs of ``F`` to the pairs of
  ``S = perm(F)``, the carry ``a`` is read there, and its values are
  re-standardised and re-ranked among themselves. Results equal to rounding,
  without re-ranking:

  * ``S`` is all cells but the ``|R|`` cells ``R = perm(not F)``, so sums of
    ``a`` over the pairs of ``S`` are the sums over all pairs minus those
    over the ~``|R| K`` pairs touching ``R`` (mean and norm of the values).
  * The rank of a pair among the pairs of ``S`` is its rank among all pairs
    minus ``D = #(pairs touching R with a smaller value) + #(equal) / 2``,
    the same for all pairs of a tie group of the sorted values: ``2 D`` is
    twice the number of pairs touching ``R`` in the groups before plus the
    number in the group. So twice the centred rank in ``S``, ``gstart +
    gend - |S| - 2 D`` (``gstart, gend`` the group's sorted places), is an
    integer per group, written per permutation; the variance of the ranks
    in ``S`` follows from the tie sizes.
  * The metric side ``zy[sigma(u), sigma(v)]`` (``sigma`` the inverse
    permutation; zero off the pairs of ``S``) is read in the natural pair
    order, row by row of the table, and the statistics are dot products
    with the centred values and with twice the centred ranks looked up by
    group.

  Per permutation, Numba-compiled loops (:func:`_subset_nulls`) make one
  pass over the pairs touching ``R`` (sums, and counts per tie group:
  :func:`_removed_pairs`), one over the tie groups (ranks and the tie sum:
  :func:`_rank_steps`) and one over all pairs (the metric and the two dot
  products: :func:`_gathered_dots`). They release the GIL: ``workers``
  threads share chunks of :data:`_ALL_CHUNK` permutations
  (:func:`_chunked`), and each permutation's numbers are the same for any
  ``workers``. Where the pairs of ``S`` all tie (one group left) both
  statistics are NaN, exactly.

  Args:
    a: ``float[K, K]`` the carry distance, symmetric, finite off-diagonal.
    y: ``float[K, K]`` the metric, symmetric, finite on the pairs of ``F``.
    cells: ``bool[K]``, ``F``; at least 3 pairs.
  """

  def __init__(self, a: np.ndarray, y: np.ndarray, cells: np.ndarray):
    k = self.k = a.shape[0]
    i, j = (v.astype(np.int64) for v in np.triu_indices(k, 1))
    self.outside = np.flatnonzero(~cells)
    inside = cells[i] & cells[j]
    fi, fj = i[inside], j[inside]
    zy = resampling.standardise(y[fi, fj])
    zry = resampling.standardise(resampling.average_ranks(y[fi, fj]))
    self.s_y = float(zy.sum())
    self.num_s = fi.size
    self.table = np.zeros((k * k, 2))
    for u, v in ((fi, fj), (fj, fi)):
      self.table[u * k + v] = np.stack([zy, zry], axis=1)
    x = a[i, j].astype(np.float64)  # One compiled signature.
    self.xc = x - x.mean()  # Centred values, natural (row-major) order.
    self.sums = (float(self.xc.sum()),
                 float(np.einsum("m,m->", self.xc, self.xc)))
    # Tie groups of the sorted values: sizes, the sum of t^3 - t, twice
    # the centred rank in S before removals (int64: exact), and each pair's
    # group.
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.ones(x.size, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    gstart = np.flatnonzero(new)
    gend = np.append(gstart[1:], x.size)
    self.size = (gend - gstart).astype(np.float64)
    self.tie_sum = float(np.sum(self.size ** 3 - self.size))
    self.base2 = (gstart + gend - self.num_s).astype(np.int64)
    self.group = np.empty(x.size, dtype=np.int32)
    self.group[order] = np.cumsum(new) - 1

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, 2]`` (Pearson, Spearman) for cell permutations
    ``perms`` ``int[n, K]`` (as :func:`resampling.mantel_subset` gets)."""
    perms = np.ascontiguousarray(perms, dtype=np.int64)
    # The compiled loops do not check their indices.
    _check_permutations(perms, self.k)
    work = lambda chunk: _subset_nulls(
        chunk, self.outside, self.table, self.xc, self.group, self.size,
        self.base2, *self.sums, self.tie_sum, float(self.num_s), self.s_y)
    return _chunked(work, perms, workers, (2,))


def subset_nulls(a: np.ndarray, zys: np.ndarray, zrys: np.ndarray,
                 i: np.ndarray, j: np.ndarray,
                 perms: np.ndarray) -> np.ndarray:
  """:func:`resampling.mantel_subset` for several metrics on the same pairs.

  The permuted carry values ``a[perm(i), perm(j)]`` are standardised and
  ranked once per permutation and multiplied with every metric's
  standardised values ``zys`` and ranks ``zrys`` (``float[T, M]``): the same
  numbers as ``T`` calls, summed in another order.

  Returns:
    ``float64[n, T, 2]`` (Pearson, Spearman).
  """
  m = i.size
  null = np.empty((perms.shape[0], zys.shape[0], 2))
  rows = max(1, resampling.CHUNK_ENTRIES // max(m, 1))
  for start in range(0, perms.shape[0], rows):
    chunk = perms[start:start + rows]
    values = a[chunk[:, i], chunk[:, j]]                      # [rows, M]
    null[start:start + rows, :, 0] = resampling.standardise(values) @ zys.T
    ranks = resampling.average_ranks(values, axis=1)
    null[start:start + rows, :, 1] = resampling.standardise(ranks) @ zrys.T
  return null
