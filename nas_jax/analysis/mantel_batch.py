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
metrics on the same pairs. Host-side NumPy only; never call it inside
``jax.jit``.
"""

from __future__ import annotations

from concurrent import futures

import numpy as np

from nas_jax.analysis import blas
from nas_jax.analysis import resampling

# Permutations per task of CellSubsetNulls' worker threads.
_CHUNK = 16
# AllPairsNulls' and CarryGatherNulls' tiles: pairs per block and
# permutations per matrix product. A tile's gathered values ([pairs,
# permutations, columns], 1024 x 16 x 4 float64 = 512 KB) stay in cache, and
# numpy's per-call overhead stays small.
_ALL_BLOCK = 1 << 10
_ALL_CHUNK = 16
# CarryGatherNulls gathers rows of this many float64 carries (numpy's take
# copies 32-byte items fastest); missing ones are zero columns.
_CARRY_WIDTH = 4
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


class CarryGatherNulls:
  """Mantel nulls of a few carries with many metrics over all pairs.

  The sum of :func:`resampling.mantel_all_pairs` as written: for each
  permutation ``perm`` the carries are gathered at the permuted pairs
  ``(perm(i_m), perm(j_m))`` and one matrix product takes them against every
  metric, which stays in place. Each gathered column reads a ``float64 [K *
  K]`` table (8 MB at ``K = 1000``) at random columns of its rows, which
  costs about as much as :class:`AllPairsNulls`' code gather and lookup of a
  metric column, so this is the faster way when the carries are fewer than
  the metrics: the recency tests (:mod:`nas_jax.analysis.recency`) take 3
  carries against up to 16 metrics, 5x faster than :class:`AllPairsNulls`
  at ``K = 1000``. The same sums in another order: equal to
  :class:`AllPairsNulls`' and the reference's to rounding (~1e-16).

  The carries are stored in rows of :data:`_CARRY_WIDTH` (zero-padded); the
  work is tiled as :class:`AllPairsNulls`' (blocks of :data:`_ALL_BLOCK`
  pairs by :data:`_ALL_CHUNK` permutations).

  Args:
    k: number of cells.
    carries: ``float[X, M]`` e.g. the standardised ranks of each carry at
      the pairs ``i < j`` (row-major).
    metrics: ``float[T, M]`` the same for each metric.
  """

  def __init__(self, k: int, carries: np.ndarray, metrics: np.ndarray):
    self.k = k
    self.i, self.j = (a.astype(np.int64) for a in np.triu_indices(k, 1))
    carries = np.asarray(carries, np.float64)
    self.num_carries = carries.shape[0]
    width = -(-self.num_carries // _CARRY_WIDTH) * _CARRY_WIDTH
    self.table = np.zeros((k * k, width))
    self.table[self.i * k + self.j, :self.num_carries] = carries.T
    self.table[self.j * k + self.i, :self.num_carries] = carries.T
    self.metrics = np.ascontiguousarray(np.asarray(metrics, np.float64).T)

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, X, T]`` for cell permutations ``perms``
    ``int[n, K]``; ``workers`` threads share them (every permutation's
    numbers are the same for any ``workers``)."""
    return _chunked(self._chunk, np.asarray(perms, dtype=np.int64), workers,
                    (self.num_carries, self.metrics.shape[1]))

  def _chunk(self, perms: np.ndarray) -> np.ndarray:
    """:meth:`__call__` for ``perms`` ``[P, K]``."""
    with blas.single_threaded():  # Parallel over chunks instead.
      num_p, width = perms.shape[0], self.table.shape[1]
      perm_t = np.ascontiguousarray(perms.T)                  # [K, P]
      row_k = perm_t * self.k
      acc = np.zeros((num_p * width, self.metrics.shape[1]))
      for start in range(0, self.i.size, _ALL_BLOCK):
        stop = min(self.i.size, start + _ALL_BLOCK)
        # Flat index of the permuted pairs (perm[i], perm[j]), [b, P];
        # mode="clip" only skips the bounds check: indices are in range.
        idx = np.take(row_k, self.i[start:stop], axis=0, mode="clip")
        idx += np.take(perm_t, self.j[start:stop], axis=0, mode="clip")
        acc += np.take(self.table, idx, axis=0, mode="clip").reshape(
            stop - start, -1).T @ self.metrics[start:stop]
      # Rows of acc are (permutation, carry), permutation-major.
      return acc.reshape(num_p, width, -1)[:, :self.num_carries]


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
    minus ``D = #(pairs touching R with a smaller value) + #(equal) / 2``, a
    step function of the pair's place in the sorted values: ``2 D`` is the
    number of tie-group starts and ends of the pairs touching ``R`` at or
    before that place, built per permutation with one ``np.repeat``.
  * The metric side ``zy[sigma(u), sigma(v)]`` (``sigma`` the inverse
    permutation; zero off the pairs of ``S``) is gathered in the natural
    pair order, like :class:`AllPairsNulls` (row-local), and the statistics
    are dot products with the centred values, the centred average ranks and
    ``D`` looked up at each pair's place. The variance of the ranks in ``S``
    follows from the tie sizes.

  Args:
    a: ``float[K, K]`` the carry distance, symmetric, finite off-diagonal.
    y: ``float[K, K]`` the metric, symmetric, finite on the pairs of ``F``.
    cells: ``bool[K]``, ``F``; at least 3 pairs.
  """

  def __init__(self, a: np.ndarray, y: np.ndarray, cells: np.ndarray):
    from scipy import stats as sp_stats  # pylint: disable=g-import-not-at-top
    k = a.shape[0]
    i, j = (v.astype(np.int64) for v in np.triu_indices(k, 1))
    x = a[i, j]
    order = np.argsort(x, kind="stable")
    self.k, self.m, self.i, self.j = k, x.size, i, j
    self.place = np.empty(x.size, dtype=np.int64)  # Pair -> sorted place.
    self.place[order] = np.arange(x.size)
    xc = x - x.mean()
    self.sums = (float(xc.sum()), float(np.einsum("m,m->", xc, xc)))
    self.xc = xc
    self._ties(x[order])
    # Coefficients of the gathered (zy, zry): centred values and centred
    # average ranks of all pairs, in the natural order.
    self.coef = (xc, self.rank_c[self.place])
    self.outside = np.flatnonzero(~cells)
    inside = cells[i] & cells[j]
    fi, fj = i[inside], j[inside]
    zy = resampling.standardise(y[fi, fj])
    zry = resampling.standardise(sp_stats.rankdata(y[fi, fj]))
    self.s_y, self.s_ry = float(zy.sum()), float(zry.sum())
    self.num_s = fi.size
    self.table = np.zeros((k * k, 2))
    for u, v in ((fi, fj), (fj, fi)):
      self.table[u * k + v] = np.stack([zy, zry], axis=1)

  def _ties(self, xs: np.ndarray) -> None:
    """Tie groups of the sorted values ``xs``: group of each place, group
    start and end places, centred average ranks, sum of ``t^3 - t``."""
    new = np.ones(xs.size, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    self.gid = np.cumsum(new) - 1
    self.gstart = np.flatnonzero(new)
    self.gend = np.append(self.gstart[1:], xs.size)
    size = (self.gend - self.gstart).astype(np.float64)
    self.rank_c = ((self.gstart + self.gend + 1) / 2.0)[self.gid] - (
        xs.size + 1) / 2.0
    self.tie_sum = float(np.sum(size ** 3 - size))
    self.size = size

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, 2]`` (Pearson, Spearman) for cell permutations
    ``perms`` ``int[n, K]`` (as :func:`resampling.mantel_subset` gets)."""
    perms = np.asarray(perms, dtype=np.int64)
    inv = inverse_permutations(perms)
    chunks = [slice(s, s + _CHUNK) for s in range(0, perms.shape[0], _CHUNK)]
    work = lambda c: self._chunk(perms[c], inv[c])
    if workers > 1 and len(chunks) > 1:
      with futures.ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(work, chunks))
    else:
      parts = [work(c) for c in chunks]
    return np.concatenate(parts) if parts else np.full((0, 2), np.nan)

  def _chunk(self, perms: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """:meth:`__call__` for ``perms`` and their inverses ``inv``."""
    with blas.single_threaded():
      out = np.empty((perms.shape[0], 2))
      idx = np.empty(self.m, dtype=np.int64)
      tmp = np.empty(self.m, dtype=np.int64)
      z = np.empty((self.m, 2))
      for n, (perm, sigma) in enumerate(zip(perms, inv)):
        # mode="clip" only skips the bounds check: indices are in range.
        np.take(sigma * self.k, self.i, out=idx, mode="clip")
        np.take(sigma, self.j, out=tmp, mode="clip")
        idx += tmp
        np.take(self.table, idx, axis=0, out=z, mode="clip")
        out[n] = self._statistics(perm, z)
      return out

  def _statistics(self, perm: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(Pearson, Spearman) of one permutation from the gathered ``z``."""
    removed = self._removed_pairs(perm[self.outside])
    num_s = float(self.num_s)
    xr = self.xc[removed]
    sum1 = self.sums[0] - float(xr.sum())
    sum2 = self.sums[1] - float(np.einsum("m,m->", xr, xr))
    norm = np.sqrt(max(sum2 - sum1 * sum1 / num_s, 0.0))
    # sum xc zy, sum rank_c zry (einsum: no BLAS threads, see blas.py).
    dots = [np.einsum("m,m->", c, z[:, t]) for t, c in enumerate(self.coef)]
    pearson = (dots[0] - sum1 / num_s * self.s_y) / norm \
        if norm > 0 else np.nan
    places = self.place[removed]
    groups, counts = np.unique(self.gid[places], return_counts=True)
    left = self.size[groups] - counts
    ties = self.tie_sum - np.sum(self.size[groups] ** 3 - self.size[groups]
                                 - (left ** 3 - left))
    rank_norm = np.sqrt(max((num_s ** 3 - num_s - ties) / 12.0, 0.0))
    shift = (self.m + 1) / 2.0 - (num_s + 1) / 2.0
    spearman = (dots[1] + shift * self.s_ry
                - self._rank_correction(places, z[:, 1])) / rank_norm \
        if rank_norm > 0 else np.nan
    return np.array([pearson, spearman])

  def _removed_pairs(self, cells: np.ndarray) -> np.ndarray:
    """Row-major ids of the pairs touching ``cells`` (each once)."""
    k = self.k
    u = np.repeat(cells, k)
    v = np.tile(np.arange(k), cells.size)
    inside = np.isin(v, cells)
    keep = (u != v) & (~inside | (u < v))
    lo, hi = np.minimum(u[keep], v[keep]), np.maximum(u[keep], v[keep])
    return lo * (2 * k - lo - 1) // 2 + (hi - lo - 1)

  def _rank_correction(self, places: np.ndarray, zr: np.ndarray) -> float:
    """``sum_m D(m) zr(m)`` (``zr`` in the natural order): ``2 D`` at a
    place is the number of the removed pairs' tie-group starts and ends at
    or before it."""
    g = self.gid[places]
    bounds, mult = np.unique(np.concatenate([self.gstart[g], self.gend[g]]),
                             return_counts=True)
    levels = np.concatenate([[0], np.cumsum(mult)]).astype(np.int32)
    widths = np.diff(np.concatenate([[0], bounds, [self.m]]))
    twice_d = np.repeat(levels, widths)                       # [M], by place
    return 0.5 * float(np.einsum("m,m->", zr,
                                 twice_d.take(self.place, mode="clip")))


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
  from scipy import stats as sp_stats  # pylint: disable=g-import-not-at-top
  m = i.size
  null = np.empty((perms.shape[0], zys.shape[0], 2))
  rows = max(1, resampling.CHUNK_ENTRIES // max(m, 1))
  for start in range(0, perms.shape[0], rows):
    chunk = perms[start:start + rows]
    values = a[chunk[:, i], chunk[:, j]]                      # [rows, M]
    null[start:start + rows, :, 0] = resampling.standardise(values) @ zys.T
    ranks = sp_stats.rankdata(values, axis=1)
    null[start:start + rows, :, 1] = resampling.standardise(ranks) @ zrys.T
  return null
