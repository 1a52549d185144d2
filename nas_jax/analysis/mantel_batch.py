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
metric serves every carry. A metric with few distinct values then needs no
product per pair: grouping the pairs by the permuted metric's value,
``null = sum_value value * (sum of za over the pairs with that value)``
(see :class:`AllPairsNulls`). The values are bit-identical to the per-call
ones (looked up by the value's code); only the order of the sum changes, so
the nulls agree to rounding (~1e-16) and p-value counts, which allow
``resampling.P_TOL``, are the same.

:class:`CarryGatherNulls` computes the first line as written, gathering the
permuted carries instead: better for few carries against many metrics (see
its docstring). :class:`CellSubsetNulls` does the same for a metric known
only on a subset of cells (all pairs among them), keeping today's semantics,
and :func:`subset_nulls` batches the generic subset path over several
metrics on the same pairs. Host-side NumPy (and Numba-compiled loops for
:class:`AllPairsNulls`' sums, :class:`CarryGatherNulls`' gather and
:class:`CellSubsetNulls`) only; never call it inside ``jax.jit``.

Where the time goes at ``K = 1000`` (499,500 pairs) on a 2-core CPU, per
permutation: :class:`AllPairsNulls` (the six carry views and the shuffled
control, x 5 metrics, Pearson and Spearman) took ~14-26 ms on one thread
with every metric looked up, about 60% the lookups of the gathered metric
values and 40% the matrix products; Numba loops over rows of pairs (codes
read in order and scattered, values looked up in per-metric tables) were no
faster, and neither was a fused gather-and-multiply loop. Summing per code
the four metrics with few values (two groups: 2 x 14 additions per pair
instead of 8 lookups and 56 multiply-adds) leaves ~8 ms of lookups for the
kernel similarity and ~17 ms of sums, whose loop is bound by its loads and
stores (about one addition per nanosecond): a modest gain (see README).
"""

from __future__ import annotations

from concurrent import futures

from llvmlite import ir
import numba
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
import numpy as np

from nas_jax.analysis import blas
from nas_jax.analysis import resampling

# AllPairsNulls' and CarryGatherNulls' tiles: pairs per block (for
# CarryGatherNulls, whole rows of pairs: at least this many, at most K - 2
# more) and permutations per matrix product (and per task of every class's
# worker threads: _chunked). AllPairsNulls' tile of gathered values ([pairs,
# permutations, columns], 1024 x 16 x 4 float64 = 512 KB) stays in cache,
# and numpy's per-call overhead stays small.
_ALL_BLOCK = 1 << 10
_ALL_CHUNK = 16
# Metrics with at most this many distinct values are gathered as uint16 codes
# (a 2 MB table for K = 1000) and looked up; others as float64.
_MAX_CODES = 1 << 16
# AllPairsNulls sums the carries per code of a group of metrics with at most
# this many joint values (then one product per code), instead of looking up
# every pair's values: a permutation's sums ([codes, 2 x carries] float64,
# 112 KB for 7 carries) stay in cache.
_SUM_CODES = 1 << 10


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


def joint_codes(keys: list[np.ndarray], limit: int | None = None
                ) -> list[tuple[list[int], np.ndarray]]:
  """Merges the distinct-value codes of ``keys`` (each ``[M]``) into joint
  codes of at most ``limit`` (default :data:`_MAX_CODES`) values, first fit.

  Returns ``[(members, code int64[M])]``: ``code`` numbers the distinct
  combinations of the members' values. A key with more distinct values than
  that stands alone.
  """
  limit = _MAX_CODES if limit is None else limit
  groups: list[tuple[list[int], np.ndarray]] = []
  for b, key in enumerate(keys):
    code = np.unique(key, return_inverse=True)[1].ravel()
    for g, (members, joint) in enumerate(groups):
      size = (int(joint.max()) + 1) * (int(code.max()) + 1)
      if size > limit * 64:  # Too many to try.
        continue
      merged = np.unique(joint * (int(code.max()) + 1) + code,
                         return_inverse=True)[1].ravel()
      if int(merged.max()) < limit:
        groups[g] = (members + [b], merged)
        break
    else:
      groups.append(([b], code))
  return groups


class AllPairsNulls:
  """Mantel nulls of every (carry, metric) correlation over all pairs.

  Carries are given over the pairs as :func:`resampling.mantel_all_pairs`
  builds its table (standardised values and ranks), metrics as its target.
  Metrics are coded by their distinct values (:func:`joint_codes`), and a
  ``[K, K]`` table of each group's code at each pair is gathered once per
  permutation. Then, two ways:

  * **Sums per code** (groups of at most :data:`_SUM_CODES` joint values,
    e.g. the edit distances and counts: a few to a few hundred values
    each). For each code, the sum of every carry's standardised value (and
    rank) over the pairs whose permuted code it is (:func:`_code_sums`, a
    Numba loop: 2C additions per pair); the null is then ``sum_code
    value(code) * sum(code)``, one small product per permutation. The same
    sum as the lookup's in another order.
  * **Lookups** (a metric with more values, e.g. a kernel similarity): its
    standardised values and ranks are looked up by code (uint16, up to
    :data:`_MAX_CODES` values) or read from ``float64 [K * K]`` tables,
    and one matrix product per block of pairs takes every gathered column
    against every carry. The tables are filled with entries of
    ``metrics_v``/``metrics_r`` themselves, so the gathered numbers are
    bit-identical to the per-call target.

  The lookups are tiled as blocks of :data:`_ALL_BLOCK` pairs by
  :data:`_ALL_CHUNK` permutations, gathered pair-major (``[pairs,
  permutations, metrics]``): each lookup fetches a row, the tile stays in
  cache, and the products see all permutations of the chunk at once. The
  sums run over blocks of whole rows of about :data:`_ALL_BLOCK` pairs
  (:func:`row_blocks`), every permutation of the chunk per block, so the
  block's carry values stay in cache too.

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
    # self.sums: the same for the groups summed per code (always a table).
    self.sources, self.sums = [], []
    has_rank = [not np.all(np.isnan(r)) for r in metrics_r]
    # Code by rank where there is one: equal ranks are equal values, whereas
    # two close values could standardise to the same float.
    keys = [r if ok else v for v, r, ok in zip(metrics_v, metrics_r,
                                               has_rank)]
    for members, code in joint_codes(keys, _SUM_CODES):
      ranked = [b for b in members if has_rank[b]]
      if int(code.max()) >= _MAX_CODES:
        (b,) = members
        self.sources.append((None, self._flat(metrics_v[b])[:, None],
                             self._flat(metrics_r[b])[:, None]
                             if ranked else None, members, ranked))
        continue
      first = np.zeros(int(code.max()) + 1, dtype=np.int64)
      first[code] = np.arange(code.size)
      source = (
          self._flat(code.astype(np.uint16)),
          np.stack([metrics_v[b][first] for b in members], axis=1),
          np.stack([metrics_r[b][first] for b in ranked], axis=1)
          if ranked else None, members, ranked)
      (self.sums if int(code.max()) < _SUM_CODES
       else self.sources).append(source)
    if self.sums:
      # Both of a pair's carry columns side by side, [M, 2C]: one
      # contiguous row per pair made the sums ~1.4x faster than reading
      # zv and zr apart.
      self.z = np.concatenate([self.zv, self.zr], axis=1)
      self.row_blocks = row_blocks(k, _ALL_BLOCK)

  def _flat(self, values: np.ndarray) -> np.ndarray:
    return symmetric_table(self.k, self.i, self.j, values)

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, C, B, 2]`` (Pearson, Spearman) for ``perms``
    ``int[n, K]`` (the permutations of the carries' cells, as drawn by
    :func:`resampling.cell_permutations`). ``workers`` threads share the
    permutations (numpy, BLAS and the compiled sums release the GIL);
    every permutation's numbers are the same for any ``workers``."""
    # Neither the compiled sums nor the lookups (mode="clip") check indices.
    _check_permutations(np.asarray(perms), self.k)
    return _chunked(self._chunk, inverse_permutations(perms), workers,
                    (self.zv.shape[1], self.num_metrics, 2))

  def _chunk(self, inv: np.ndarray) -> np.ndarray:
    """:meth:`__call__` for the inverse permutations ``inv`` ``[P, K]``."""
    num_p, num_c = inv.shape[0], self.zv.shape[1]
    out = np.full((num_p, num_c, self.num_metrics, 2), np.nan)
    with blas.single_threaded():  # Parallel over chunks instead.
      if self.sums:
        self._summed(inv, out)
      if self.sources:
        self._looked_up(inv, out)
    return out

  def _summed(self, inv: np.ndarray, out: np.ndarray) -> None:
    """Fills ``out`` for the metrics of :attr:`sums`."""
    num_p, num_c = inv.shape[0], self.zv.shape[1]
    sums = [np.zeros((num_p, values.shape[0], 2 * num_c))
            for _, values, *_ in self.sums]
    for i0, i1, m0, _ in self.row_blocks:
      for (table, *_), acc in zip(self.sums, sums):
        _code_sums(inv, i0, i1, m0, table, self.z, acc)
    for (_, values, ranks, members, ranked), acc in zip(self.sums, sums):
      # null[p, c, b] = sum over codes q of value[q, b] * acc[p, q, c].
      out[:, :, members, 0] = np.einsum("pqc,qb->pcb", acc[..., :num_c],
                                        values)
      if ranked:
        out[:, :, ranked, 1] = np.einsum("pqc,qb->pcb", acc[..., num_c:],
                                         ranks)

  def _looked_up(self, inv: np.ndarray, out: np.ndarray) -> None:
    """Fills ``out`` for the metrics of :attr:`sources`."""
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
    for (*_, members, ranked), (acc_v, acc_r) in zip(self.sources, acc):
      # Rows of acc are (permutation, member), permutation-major.
      out[:, :, members, 0] = acc_v.reshape(
          num_p, len(members), num_c).transpose(0, 2, 1)
      out[:, :, ranked, 1] = acc_r.reshape(
          num_p, len(ranked), num_c).transpose(0, 2, 1)


@numba.njit(cache=True, nogil=True)
def _code_sums(inv: np.ndarray, i0: int, i1: int, m0: int,
               table: np.ndarray, z: np.ndarray, acc: np.ndarray) -> None:
  """``acc[p, table[inv[p, i] * K + inv[p, j]]] += z[m]`` for the pairs
  ``m = (i, j)``, ``i0 <= i < i1``, ``i < j``, in row-major order (``m0``
  the first pair of row ``i0``), for every permutation ``p`` of ``inv``:
  each code's sum of the carry columns ``z`` over the pairs whose permuted
  pair has that code."""
  k = inv.shape[1]
  width = z.shape[1]
  for p in range(inv.shape[0]):
    sigma = inv[p]
    sums = acc[p]
    m = m0
    for i in range(i0, i1):
      base = sigma[i] * k
      for j in range(i + 1, k):
        code = table[base + sigma[j]]
        for x in range(width):
          sums[code, x] += z[m, x]
        m += 1


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
  ``m = (i, j)``, ``i0 <= i < i1``, ``i < j``, in row-major order (``m0`` the first
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
    self.blocks = row_blocks(k, _ALL_BLOCK)
    self.max_block = max((m1 - m0 for *_, m0, m1 in self.blocks), default=0)

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
      scratch = np.empty(num_p * num_x * self.max_block)
      row = np.empty((num_x, self.k))
      acc = np.zeros((num_p * num_x, self.metrics.shape[1]))
      for i0, i1, m0, m1 in self.blocks:
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


# A mark word holds MARK_BITS marks (its low bits) and, above them, the
# number of marks in the words before it.
_MARK_BITS = 32
# The mark word of the pair this many pairs ahead is prefetched (the loads of
# the words, 250 KB at K = 1000, are random; the pairs' keys are in order).
_AHEAD = 32


@intrinsic
def _popcount(typingctx, x):
  """Set bits of the ``uint64`` ``x`` (one ``popcnt`` instruction)."""
  sig = types.uint64(types.uint64)

  def codegen(context, builder, signature, args):
    return builder.ctpop(args[0])

  return sig, codegen


@intrinsic
def _prefetch(typingctx, array, index):
  """Hints the cache to fetch ``array[index]`` (``llvm.prefetch``: read,
  keep in all levels); no effect on the results."""
  sig = types.void(array, index)

  def codegen(context, builder, signature, args):
    data = context.make_array(signature.args[0])(context, builder,
                                                  args[0]).data
    byte_ptr = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(),
                                        [byte_ptr, i32, i32, i32]),
        # The name of LLVM 15 and later (opaque pointers), as in the pinned
        # numba 0.68's llvmlite; older ones called it llvm.prefetch.p0i8.
        "llvm.prefetch.p0")
    builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]),
                                      byte_ptr),
                      ir.Constant(i32, 0), ir.Constant(i32, 3),
                      ir.Constant(i32, 1)])
    return context.get_dummy_value()

  return sig, codegen


@numba.njit(cache=True, nogil=True)
def _removed_marks(removed: np.ndarray, is_removed: np.ndarray,
                   xc: np.ndarray, key: np.ndarray, gs2: np.ndarray,
                   xc_col: np.ndarray, kg_col: np.ndarray,
                   count: np.ndarray, touched: np.ndarray, bits: np.ndarray,
                   words: np.ndarray) -> tuple[float, float, float, int]:
  """Sums over the pairs touching the cells ``removed`` (``R``), each once,
  and the marks that give each tie group its rank shift.

  Returns ``(sum xc, sum xc^2)`` over those pairs, the drop of the tie sum
  ``sum t^3 - t`` when they leave and the number of tie groups they empty
  (both of :class:`CellSubsetNulls`). The ``c``-th removed pair (from 0) of
  the tie group ``[gs, ge)`` (sorted places) marks the places ``2 gs + c``
  and ``2 ge - 1 - c``; ``words`` (``uint64``) then gets :data:`_MARK_BITS`
  places per word in its low bits and the number of marks in the words
  before it above them.

  The pairs ``(u, v)`` of a cell ``u`` are read in order: those with ``v >
  u`` from the row-major arrays (``xc``, ``key = gs + ge``, ``gs2 = 2
  gs``), those with ``v < u`` from the column-major ones (``xc_col`` and
  ``kg_col = key << 32 | gs2``). A tie group's own count ``c`` (``count``,
  at ``gs``) is kept for groups of two or more pairs only, and its drop is
  summed as ``(L^3 - L) - ((L - 1)^3 - (L - 1)) = 3 L (L - 1)``, ``L = t -
  c``, per pair: integers, the same sum. ``is_removed`` (``bool[K]``),
  ``count`` (``int[M]``) and ``bits`` (``uint64[2 M / 64]``) are scratch,
  zero on entry and on return; ``touched`` (``int[|R| K]``) is scratch.
  """
  k = is_removed.size
  for u in removed:
    is_removed[u] = True
  one = np.uint64(1)
  sum1 = 0.0
  sum2 = 0.0
  drop = 0.0
  emptied = 0
  num = 0
  for u in removed:
    start = u * (2 * k - u - 1) // 2  # Row-major id of the pair (u, u + 1).
    col = u * (u - 1) // 2  # Column-major id of the pair (0, u).
    for v in range(k):
      if v == u or (is_removed[v] and v < u):  # A pair of R counts once.
        continue
      if v > u:
        m = start + v - u - 1
        x = xc[m]
        q = np.int64(key[m])
        g2 = np.int64(gs2[m])
      else:
        x = xc_col[col + v]
        kg = kg_col[col + v]
        q = np.int64(kg >> np.uint64(32))
        g2 = np.int64(kg & np.uint64(0xFFFFFFFF))
      sum1 += x
      sum2 += x * x
      t = q - g2  # The group's size.
      c = 0
      if t > 1:
        gs = g2 // 2
        c = count[gs]
        if c == 0:
          touched[num] = gs
          num += 1
        count[gs] = c + 1
        left = float(t - c)
        drop += 3.0 * left * (left - 1.0)
      if t - c == 1:
        emptied += 1
      first = g2 + c
      last = 2 * q - g2 - 1 - c
      bits[first >> 6] |= one << np.uint64(first & 63)
      bits[last >> 6] |= one << np.uint64(last & 63)
  for u in removed:
    is_removed[u] = False
  for n in range(num):
    count[touched[n]] = 0
  below = np.uint64(0)
  mask = np.uint64((1 << _MARK_BITS) - 1)
  for w in range(words.size):
    b = bits[w >> 1]
    marks = (b >> np.uint64(_MARK_BITS)) if w & 1 else (b & mask)
    words[w] = (below << np.uint64(_MARK_BITS)) | marks
    below += _popcount(marks)
    if w & 1:
      bits[w >> 1] = 0
  return sum1, sum2, drop, emptied


@numba.njit(cache=True, nogil=True)
def _gathered_dots(perm: np.ndarray, sigma: np.ndarray, in_f: np.ndarray,
                   zy: np.ndarray, zry: np.ndarray, xc: np.ndarray,
                   key: np.ndarray, words: np.ndarray, num_s: int,
                   z0: np.ndarray, z1: np.ndarray) -> tuple[float, float]:
  """``(sum xc z0, sum twice_rank z1)`` over the pairs ``m = (i, j)``,
  ``i < j``, in row-major order, where ``z0 = zy[sigma(i) * K +
  sigma(j)]``, ``z1`` the same of ``zry`` and ``sigma`` is the inverse of
  ``perm``.

  ``twice_rank = key - |S| - 2 D`` with ``key = gstart + gend`` of the
  pair's tie group and ``2 D`` the number of marks of :func:`_removed_marks`
  at places below ``key``: the ``2 c`` marks of a group with ``c`` removed
  pairs lie in ``[2 gstart, 2 gend)``, ``c`` below ``gstart + gend`` and
  ``c`` at or above it, so they count 2 each for the groups after it and 1
  each for the group itself. One lookup of ``words`` (``uint64[2 M / 32]``,
  250 KB at ``K = 1000``, which stays in L2) and one ``popcnt`` per pair.

  Row ``i`` of the pairs copies row ``sigma(i)`` of the tables whole, in
  order, into ``z0, z1`` (``float64[K]`` scratch) at ``perm`` of each
  column: reading it in order is much faster than gathering its columns
  ``sigma(j)``, each a likely cache miss (2.3x slower here, even with the
  row prefetched). Rows whose table row is zero (``sigma(i)`` not in ``F``:
  ``in_f``) add zero and are skipped. Each row's terms are summed first,
  then the rows.
  """
  k = perm.size
  dot_x = 0.0
  dot_r = 0.0
  shift = np.uint32(5)  # log2(_MARK_BITS); key is unsigned.
  low = np.uint32(_MARK_BITS - 1)
  one = np.uint64(1)
  m = 0
  for i in range(k - 1):
    if not in_f[sigma[i]]:
      m += k - 1 - i
      continue
    row = np.int64(sigma[i]) * k
    row_y = zy[row:row + k]
    row_ry = zry[row:row + k]
    for c in range(k):
      p = perm[c]
      z0[p] = row_y[c]
      z1[p] = row_ry[c]
    # Slices of the row's pairs, indexed from 0 by a range: Numba then
    # proves the indices non-negative and drops its wraparound selects.
    n = k - 1 - i
    row_xc = xc[m:m + n]
    row_key = key[m:m + n]
    ahead = key[m + _AHEAD:m + _AHEAD + n]  # key has _AHEAD more.
    row_z0 = z0[i + 1:]
    row_z1 = z1[i + 1:]
    row_x = 0.0
    row_r = 0.0
    for t in range(n):
      _prefetch(words, np.int64(ahead[t] >> shift))
      q = row_key[t]
      w = words[q >> shift]
      below = (w >> np.uint64(_MARK_BITS)) + _popcount(
          w & ((one << np.uint64(q & low)) - one))
      row_x += row_xc[t] * row_z0[t]
      row_r += (np.int64(q) - num_s - np.int64(below)) * row_z1[t]
    m += n
    dot_x += row_x
    dot_r += row_r
  return dot_x, dot_r


@numba.njit(cache=True, nogil=True)
def _subset_nulls(perms: np.ndarray, outside: np.ndarray, in_f: np.ndarray,
                  zy: np.ndarray, zry: np.ndarray, xc: np.ndarray,
                  key: np.ndarray, gs2: np.ndarray, xc_col: np.ndarray,
                  kg_col: np.ndarray, num_groups: int, sum_x: float,
                  sum_xx: float, tie_sum: float, num_s: int,
                  s_y: float) -> np.ndarray:
  """:class:`CellSubsetNulls`' ``float64[P, 2]`` (Pearson, Spearman) for
  the permutations ``perms`` (``uint32[P, K]``); the other arguments are the
  class's attributes of those names (``sum_x, sum_xx`` its ``sums``)."""
  k = perms.shape[1]
  out = np.empty((perms.shape[0], 2))
  removed = np.empty(outside.size, np.int64)
  is_removed = np.zeros(k, np.bool_)
  count = np.zeros(xc.size, np.int64)
  touched = np.empty(outside.size * k, np.int64)
  num_words = 2 * (xc.size // _MARK_BITS + 1)  # 2 M places, even.
  bits = np.zeros(num_words // 2, np.uint64)
  words = np.empty(num_words, np.uint64)
  sigma = np.empty(k, np.uint32)
  z0 = np.empty(k)
  z1 = np.empty(k)
  fs = float(num_s)
  for n in range(perms.shape[0]):
    perm = perms[n]
    for c in range(k):
      sigma[perm[c]] = c
    for q in range(outside.size):
      removed[q] = perm[outside[q]]
    rem_x, rem_xx, drop, emptied = _removed_marks(
        removed, is_removed, xc, key, gs2, xc_col, kg_col, count, touched,
        bits, words)
    dot_x, dot_r = _gathered_dots(perm, sigma, in_f, zy, zry, xc, key, words,
                                  num_s, z0, z1)
    # Both are NaN where the pairs of S all tie (one group left), which the
    # norms, sums minus sums, may miss by rounding.
    constant = num_groups - emptied == 1
    sum1 = sum_x - rem_x
    sum2 = sum_xx - rem_xx
    norm = np.sqrt(max(sum2 - sum1 * sum1 / fs, 0.0))
    out[n, 0] = (dot_x - sum1 / fs * s_y) / norm \
        if norm > 0 and not constant else np.nan
    rank_norm = np.sqrt(max((fs ** 3 - fs - (tie_sum - drop)) / 12.0, 0.0))
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
    the same for all pairs of a tie group of the sorted values. Twice the
    centred rank in ``S``, ``gstart + gend - |S| - 2 D`` (``gstart, gend``
    the group's sorted places), is an integer; the variance of the ranks in
    ``S`` follows from the tie sizes.
  * ``2 D`` is a count of marks: the ``c`` pairs touching ``R`` in the
    group ``[gstart, gend)`` mark ``c`` places of ``[2 gstart, gstart +
    gend)`` and ``c`` of ``[gstart + gend, 2 gend)``, so the marks below
    ``key = gstart + gend`` are 2 per such pair in the groups before and 1
    per such pair in the group: exactly ``2 D``. The marks are bits of
    ``uint64`` words, each with the count of the marks before it, so ``2
    D`` is one lookup and one ``popcnt``, and ``key`` is one integer per
    pair read in order. (The previous version looked the same integer up
    in a table of one entry per tie group, 4 MB at ``K = 1000``, which
    missed the cache for nearly every pair, after a pass over all tie
    groups per permutation: 4x slower, the same numbers bit for bit.)
  * The metric side ``zy[sigma(u), sigma(v)]`` (``sigma`` the inverse
    permutation; zero off the pairs of ``S``) is read in the natural pair
    order, row by row of the tables, and the statistics are dot products
    with the centred values and with the twice centred ranks.

  The numbers are those of the previous version (tested against the
  subset path to 1e-13), bit for bit: the same integer doubled ranks (exact) times the same float64 terms,
  summed in the same order (each row, then the rows), the same sums over
  the removed pairs in the same order, and the same NaN rule. Two sums
  differ in order only: rows whose table row is zero (``sigma(i)`` not in
  ``F``) are skipped instead of adding exact zeros, and the drop of the tie
  sum is summed per removed pair instead of per tie group, integers, exact
  while below ``2^53`` (tie groups below ~200,000 pairs).

  Per permutation, Numba-compiled loops (:func:`_subset_nulls`) make one
  pass over the pairs touching ``R`` (sums, marks and the tie drop:
  :func:`_removed_marks`), one over the mark words (the counts before each
  word) and one over all pairs (the metric and the two dot products:
  :func:`_gathered_dots`). They release the GIL: ``workers`` threads share
  chunks of :data:`_ALL_CHUNK` permutations
  (:func:`_chunked`), and each permutation's numbers are the same
  for any ``workers``. Where the pairs of ``S`` all tie (one group left)
  both statistics are NaN, exactly.

  Args:
    a: ``float[K, K]`` the carry distance, symmetric, finite off-diagonal.
    y: ``float[K, K]`` the metric, symmetric, finite on the pairs of ``F``.
    cells: ``bool[K]``, ``F``; at least 3 pairs.
  """

  def __init__(self, a: np.ndarray, y: np.ndarray, cells: np.ndarray):
    k = self.k = a.shape[0]
    if k * (k - 1) >= 2 ** 32:  # 2 M places; [K * K] tables of 64 GB.
      raise ValueError(f"K = {k}: too many pairs for 32-bit keys")
    cells = np.asarray(cells, dtype=bool)
    i, j = (v.astype(np.int64) for v in np.triu_indices(k, 1))
    self.outside = np.flatnonzero(~cells)
    self.in_f = cells.copy()
    inside = cells[i] & cells[j]
    fi, fj = i[inside], j[inside]
    zy = resampling.standardise(y[fi, fj])
    zry = resampling.standardise(resampling.average_ranks(y[fi, fj]))
    self.s_y = float(zy.sum())
    self.num_s = int(fi.size)
    # Two flat symmetric [K * K] tables: a row of each is read in order.
    self.zy = symmetric_table(k, fi, fj, zy)
    self.zry = symmetric_table(k, fi, fj, zry)
    x = a[i, j].astype(np.float64)  # One compiled signature.
    self.xc = x - x.mean()  # Centred values, natural (row-major) order.
    self.sums = (float(self.xc.sum()),
                 float(np.einsum("m,m->", self.xc, self.xc)))
    # Tie groups of the sorted values: their number, the sum of t^3 - t
    # (t the sizes), and per pair key = gstart + gend and gs2 = 2 gstart of
    # its group, in row-major order and (with xc) in column-major order, so
    # that the pairs of a cell are read in order. Unsigned (Numba skips the
    # wraparound of negative indices), uint32: 2 M < 2^32, i.e. K up to
    # ~65,000; exact.
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.ones(x.size, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    gstart = np.flatnonzero(new)
    gend = np.append(gstart[1:], x.size)
    size = (gend - gstart).astype(np.float64)
    self.num_groups = int(gstart.size)
    self.tie_sum = float(np.sum(size ** 3 - size))
    group = np.empty(x.size, dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    key = (gstart + gend)[group].astype(np.uint32)
    # _AHEAD more (zero) keys: the prefetch of the last pairs reads them.
    self.key = np.append(key, np.zeros(_AHEAD, key.dtype))
    self.gs2 = (2 * gstart)[group].astype(key.dtype)
    # col[n] is the row-major id of the n-th pair in column-major order.
    col = np.empty(x.size, dtype=np.int64)
    col[j * (j - 1) // 2 + i] = np.arange(x.size)
    self.xc_col = self.xc[col]
    self.kg_col = (key[col].astype(np.uint64) << np.uint64(32)) | \
        self.gs2[col].astype(np.uint64)

  def __call__(self, perms: np.ndarray, workers: int = 1) -> np.ndarray:
    """Nulls ``float64[n, 2]`` (Pearson, Spearman) for cell permutations
    ``perms`` ``int[n, K]`` (as :func:`resampling.mantel_subset` gets)."""
    perms = np.asarray(perms)
    # The compiled loops do not check their indices.
    _check_permutations(perms, self.k)
    # Unsigned indices: Numba skips its negative-index wraparound.
    perms = np.ascontiguousarray(perms, dtype=np.uint32)
    work = lambda chunk: _subset_nulls(
        chunk, self.outside, self.in_f, self.zy, self.zry, self.xc,
        self.key, self.gs2, self.xc_col, self.kg_col, self.num_groups,
        *self.sums, self.tie_sum, self.num_s, self.s_y)
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
