"""Bootstrap over cells of several correlations with one carry, together.

:func:`resampling.bootstrap_over_cells
<nas_jax.analysis.resampling.bootstrap_over_cells>` resamples the ``K`` cells
with replacement (``counts[r, u]`` draws of cell ``u``) and computes Pearson
and Spearman over the pairs with weights ``w = c[u] c[v]``
(:class:`resampling.PairBootstrap`). Every call with the same seed and ``K``
draws the same counts (:func:`resampling.bootstrap_count_chunks`), so the
correlations of the main carry with all the probe's metrics can share them,
and more:

* **Pearson, by segment sums over cells.** A weighted sum over pairs is a
  quadratic form in the counts, ``sum_{u<v} c[u] c[v] f(u, v) =
  c^T F c / 2`` with ``F`` the symmetric ``[K, K]`` table of ``f`` (zero
  diagonal and off the metric's pairs): one matrix product ``counts @ F``
  for all resamples. The moments ``sum w zx``, ``sum w zx^2`` and ``sum w zx
  zy`` are such forms; ``sum w = ((sum c)^2 - sum c^2) / 2`` over the
  metric's cells, and ``sum w zy``, ``sum w zy^2`` come from the weight of
  each metric value below. ``zx``, ``zy`` are ``resampling.unit_sd`` of the
  values in ``PairBootstrap``'s order, so these are its sums in another
  order.
* **Spearman, with the carry's ranks shared.** In the order of the carry's
  values (a stable sort, as ``PairBootstrap``; restricted to the pairs of a
  cell subset it is that subset's order), the doubled centred weighted
  average rank of a pair is ``2 cumsum(w) - w - N`` (per tie group when
  there are ties): one cumulative sum per resample and cell set, shared by
  every metric on those cells. A metric's ranks only depend on the total
  weight ``T[g]`` of each of its distinct values ``g``, and the cross term is
  ``sum_g rank_y[g] * A[g]`` with ``A[g]`` the sum of ``w * rank_x`` over the
  pairs of value ``g``: two weighted histograms per resample,
  shared by several metrics through a joint code of their values
  (:func:`mantel_batch.joint_codes`). Weights and doubled ranks are integers,
  so the histograms are exact; the correlation is ``PairBootstrap``'s to
  rounding.

Per resample and cell set, the Spearman side is a few loops compiled with
Numba: :func:`_carry_pass`, one pass over the pairs in the carry's order
(weights, their cumulative sum, the ranks, ``sum w rank^2`` and both
histograms of every joint code); :func:`_histogram_side` per histogram
metric; and :func:`_ordered_pass`, one pass per metric ranked in its own
order (see :class:`_CellSet`). Weights, their cumulative sums and the
histograms are ``int64``, the carry's ranks kept for the ordered metrics
``int32`` (exact: at most ``N < 2^31`` in size for up to
:data:`_MAX_CELLS` draws); the other sums are ``float64``. The loops release
the GIL, so ``workers`` threads run them in parallel, and are compiled on
first use, once per machine (``cache=True``: Numba's on-disk cache, in
``__pycache__`` next to this file or under ``NUMBA_CACHE_DIR``).

Host-side NumPy and Numba only; never call it inside ``jax.jit``.
"""

from __future__ import annotations

from concurrent import futures

import numba
import numpy as np

from nas_jax.analysis import blas
from nas_jax.analysis import mantel_batch
from nas_jax.analysis import resampling


# A metric with more distinct values than this fraction of its pairs is
# ranked in its own order (a cumulative sum) rather than by histograms.
_ORDERED_FRACTION = 0.25
# Cells are uint16 and doubled ranks int32 (at most N < (sum c)^2 / 2 in
# size): at most this many cells, and draws per resample.
_MAX_CELLS = 1 << 16


class _CellSet:
  """The metrics on one set of cells: its pairs in the carry's order (``i``,
  ``j`` and the carry's tie groups ``ties``), the carry's Pearson tables
  there and each metric's ranking data.

  A metric with few distinct values is ranked from histograms over a joint
  code (``self.groups``; ``self.codes`` holds every group's code at each
  pair, offset into one flat histogram); one with many, in its own order
  (``self.ordered``): its pairs sorted by value, where a resample's weights
  are ``c[i] c[j]`` again and its doubled centred ranks one cumulative sum
  (per tie group, contiguous there), and the carry's ranks are looked up.
  """

  def __init__(self, a: np.ndarray, cells: np.ndarray, i_s: np.ndarray,
               j_s: np.ndarray):
    self.k, self.cells = a.shape[0], cells
    if not cells.all():
      keep = cells[i_s] & cells[j_s]
      i_s, j_s = i_s[keep], j_s[keep]
    self.i, self.j = i_s, j_s
    xs = a[i_s, j_s]
    self.ties = _ties(xs)
    self.zx = resampling.unit_sd(xs)
    self.forms = [self.table(self.zx), self.table(self.zx * self.zx)]
    self.names: list[str] = []
    self.metrics: list[tuple[int, np.ndarray, np.ndarray]] = []
    self.ordered: list[tuple] = []
    self.groups: list[tuple[int, int, list]] = []
    self.codes = np.zeros((i_s.size, 0), dtype=np.int32)
    self.hist_size = 0

  def table(self, values: np.ndarray) -> np.ndarray:
    """``values`` at this set's pairs as a symmetric ``[K, K]`` matrix."""
    flat = mantel_batch.symmetric_table(self.k, self.i.astype(np.int64),
                                        self.j.astype(np.int64), values)
    return flat.reshape(self.k, self.k)

  def add(self, name: str, y: np.ndarray) -> None:
    """Adds metric ``y`` ``[K, K]``: its Pearson cross table and ranking
    data (value codes at this set's pairs, or its own order)."""
    ys = y[self.i, self.j]
    values, code = np.unique(ys, return_inverse=True)
    code = code.ravel()
    zy = resampling.unit_sd(ys)
    self.forms.append(self.table(self.zx * zy))
    b = len(self.names)
    self.names.append(name)
    if values.size > _ORDERED_FRACTION * ys.size:
      order = np.argsort(code, kind="stable")
      self.ordered.append((b, self.i[order], self.j[order],
                           _ties(code[order]), order.astype(np.int32),
                           zy[order]))
      return
    first = np.zeros(values.size, dtype=np.int64)
    first[code] = np.arange(code.size)
    self.metrics.append((b, code, zy[first]))

  def finish(self) -> None:
    """Groups the histogram metrics by a joint code of their values:
    ``self.groups = [(offset, size, [(metric index, its code by joint code,
    its zy by code)])]`` and ``self.codes[:, g]`` the joint code of group
    ``g`` plus its offset."""
    columns, offset = [], 0
    for members, joint in mantel_batch.joint_codes(
        [code for _, code, _ in self.metrics]):
      size = int(joint.max()) + 1
      first = np.zeros(size, dtype=np.int64)
      first[joint] = np.arange(joint.size)
      self.groups.append((offset, size, [
          (b, code[first], zy) for b, code, zy in
          (self.metrics[m] for m in members)]))
      columns.append(joint + offset)
      offset += size
    if columns:
      self.codes = np.stack(columns, axis=1).astype(np.int32)
    self.hist_size = offset

  def buffers(self) -> tuple[np.ndarray, ...]:
    """One thread's work arrays for :meth:`resample`."""
    return (np.empty(self.i.size, dtype=np.int32),
            np.empty(self.hist_size, dtype=np.int64),
            np.empty(self.hist_size, dtype=np.int64))

  def resample(self, c: np.ndarray, buffers: tuple, rho: np.ndarray,
               ysums: np.ndarray) -> None:
    """Fills ``rho[b]`` and ``ysums[b] = (sum w zy, sum w zy^2)`` for one
    resample's counts ``c`` (int64, zero off this set's cells)."""
    cx2, t, a = buffers
    total, sxx4 = _carry_pass(c, self.i, self.j, self.ties, self.codes, t, a,
                              cx2)
    for offset, size, members in self.groups:
      for b, code, zy in members:
        rho[b], ysums[b, 0], ysums[b, 1] = _histogram_side(
            t[offset:offset + size], a[offset:offset + size], code, zy,
            total, sxx4)
    for b, i, j, ties, places, zy in self.ordered:
      rho[b], ysums[b, 0], ysums[b, 1] = _ordered_pass(
          c, i, j, ties, places, zy, cx2, total, sxx4)


class SharedBootstrap:
  """Bootstrap (Pearson, Spearman) of one carry with several metrics.

  Each metric has its cells (all, or a subset such as the cells with finite
  ppl; then its pairs are all pairs among them, as ``correlate`` with those
  pairs gets). Results equal :func:`resampling.bootstrap_over_cells` on each
  metric's pairs for the same count chunks, to rounding.

  Args:
    a: ``float[K, K]`` the carry distance, symmetric.
    metrics: name -> ``(y float[K, K], cells bool[K] or None for all)``.
    workers: threads sharing the resamples of a chunk (the compiled loops
      release the GIL); every resample's numbers are the same for any
      ``workers``.
  """

  def __init__(self, a: np.ndarray, metrics: dict, workers: int = 1):
    k = a.shape[0]
    self.workers = workers
    if k > _MAX_CELLS:
      raise ValueError(f"SharedBootstrap: K = {k} > {_MAX_CELLS} cells")
    i, j = (v.astype(np.uint16) for v in np.triu_indices(k, 1))
    order = np.argsort(a[i, j], kind="stable")  # As PairBootstrap.
    i_s, j_s = i[order], j[order]
    self.sets: dict[bytes, _CellSet] = {}
    for name, (y, cells) in metrics.items():
      cells = np.ones(k, bool) if cells is None else np.asarray(cells, bool)
      if cells.tobytes() not in self.sets:
        self.sets[cells.tobytes()] = _CellSet(a, cells, i_s, j_s)
      self.sets[cells.tobytes()].add(name, y)
    for cell_set in self.sets.values():
      cell_set.finish()

  def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
    """name -> ``float64[n, 2]`` (Pearson, Spearman) for ``counts``
    ``float[n, K]``; NaN where a resample is degenerate."""
    with blas.single_threaded():
      return self._call(counts)

  def _call(self, counts: np.ndarray) -> dict[str, np.ndarray]:
    n = counts.shape[0]
    ci = counts.astype(np.int64)
    if n and ci.sum(1).max() > _MAX_CELLS:
      raise ValueError(f"SharedBootstrap: over {_MAX_CELLS} draws")
    spear = {key: np.full((n, len(s.names)), np.nan)
             for key, s in self.sets.items()}
    ysums = {key: np.zeros((n, len(s.names), 2))
             for key, s in self.sets.items()}
    def resamples(rows):
      buffers = {key: s.buffers() for key, s in self.sets.items()}
      for r in rows:
        for key, cell_set in self.sets.items():
          cell_set.resample(ci[r] * cell_set.cells, buffers[key],
                            spear[key][r], ysums[key][r])
    parts = np.array_split(np.arange(n), max(1, min(self.workers, n)))
    if len(parts) > 1:
      with futures.ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(resamples, parts))
    else:
      resamples(parts[0])
    out = {}
    for key, cell_set in self.sets.items():
      cf = counts * cell_set.cells
      forms = _quadratic_forms(cf, cell_set.forms)         # [n, F]
      sw = 0.5 * (cf.sum(1) ** 2 - np.einsum("rk,rk->r", cf, cf))
      for b, name in enumerate(cell_set.names):
        moments = np.stack([sw, forms[:, 0], ysums[key][:, b, 0],
                            forms[:, 1], ysums[key][:, b, 1],
                            forms[:, 2 + b]], axis=1)
        out[name] = np.stack([
            [resampling.pearson_from_moments(s) for s in moments],
            spear[key][:, b]], axis=1)
    return out


def _quadratic_forms(c: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
  """``[n, F]``: ``c[r] @ F @ c[r] / 2`` for each table ``F``, i.e. the sum
  of ``c[u] c[v] F[u, v]`` over the pairs ``u < v``."""
  return np.stack([0.5 * np.einsum("rk,rk->r", c @ f, c) for f in tables],
                  axis=1)


def _ties(values: np.ndarray) -> np.ndarray:
  """``int64[T, 2]``: ``[start, stop)`` of each run of 2 or more equal
  ``values`` (sorted)."""
  new = np.flatnonzero(values[1:] != values[:-1]) + 1
  bounds = np.concatenate([[0], new, [values.size]]).astype(np.int64)
  runs = np.stack([bounds[:-1], bounds[1:]], axis=1)
  return np.ascontiguousarray(runs[runs[:, 1] - runs[:, 0] > 1])


# The loops below see pair weights w = c[i] c[j] (c: int64 counts, zero off
# the cell set) in a sorted order. A tie group's doubled centred weighted
# average rank is 2 S_< + S - N (S its weight, S_< the weight before it, N the
# total): an exact integer. They first take every pair as its own group, then
# correct the ties (``ties``: [start, stop) of each group of 2 or more pairs,
# contiguous in that order): a tied pair's rank is its own plus
# delta = S - 2 P - w (P the weight of the group before it), and sum w delta
# over a group is 0, so its sum of w rank^2 drops by sum w delta^2.
#
# Most pairs have weight 0 (a resample leaves ~37% of the cells out): the
# loops list the pairs with weight of each chunk of _CHUNK pairs first
# (:func:`_weighted`), then do the floating-point sums and the scattered
# memory accesses (histograms, the carry's ranks) for those only. The sums
# are taken per chunk, then added: rounding errors stay near a pairwise
# sum's (one running sum over ~2e5 terms lost 1e-12 of sum w rank^2).
#
# (*) A literal 0 passed to a helper would compile a second signature of it.
_CHUNK = 1024


@numba.njit(cache=True, nogil=True)
def _carry_pass(c, i, j, ties, codes, t, a, cx2):
  """The carry's side of one resample on one cell set, in the carry's order.

  Sets ``cx2[m]`` (int32) to the doubled centred rank of each pair with
  weight (the others are not read) and fills the histograms
  ``t[codes[m, q]] += w[m]``, ``a[codes[m, q]] += w[m] cx2[m]`` (every column
  ``q``); returns ``N = sum w`` and ``sxx4 = sum w cx2^2``, NaN when fewer
  than 2 tie groups have weight.
  """
  sum_c, sum_c2 = 0, 0
  for u in range(c.size):
    sum_c += c[u]
    sum_c2 += c[u] * c[u]
  total = (sum_c * sum_c - sum_c2) // 2
  t[:] = 0
  a[:] = 0
  at = np.empty(_CHUNK, dtype=np.int64)
  wt = np.empty(_CHUNK, dtype=np.int64)
  rk = np.empty(_CHUNK, dtype=np.int64)
  below, live, sxx4 = np.int64(0), np.int64(0), 0.0  # Not literals (*).
  for start in range(0, i.size, _CHUNK):
    n, below = _weighted(c, i, j, start, below, total, at, wt, rk)
    live += n
    part = 0.0
    for k in range(n):
      cx2[at[k]] = rk[k]
      part += wt[k] * float(rk[k]) ** 2
    sxx4 += part
    for q in range(codes.shape[1]):
      for k in range(n):
        t[codes[at[k], q]] += wt[k]
        a[codes[at[k], q]] += wt[k] * rk[k]
  at, wt, rk = _tie_buffers(ties)
  for g in range(ties.shape[0]):
    n, weighted = _tie_corrections(c, i, j, ties[g, 0], ties[g, 1], at, wt,
                                   rk)
    live += weighted - n  # The group counts once.
    for k in range(n):
      m, w, delta = at[k], wt[k], rk[k]
      cx2[m] += delta
      sxx4 -= w * float(delta) ** 2
      for q in range(codes.shape[1]):
        a[codes[m, q]] += w * delta
  return total, sxx4 if live >= 2 else np.nan


@numba.njit(cache=True, nogil=True)
def _ordered_pass(c, i, j, ties, places, zy, cx2, total, sxx4):
  """``(rho, sum w zy, sum w zy^2)`` of a metric ranked in its own order:
  its pairs ``(i, j)`` sorted by value (tie groups ``ties``), their
  ``places`` in the carry's order (where ``cx2`` holds the carry's doubled
  ranks from :func:`_carry_pass`) and ``zy`` in this order."""
  at = np.empty(_CHUNK, dtype=np.int64)
  wt = np.empty(_CHUNK, dtype=np.int64)
  rk = np.empty(_CHUNK, dtype=np.int64)
  below, live = np.int64(0), np.int64(0)  # Not literals (*).
  s1, s2, syy4, sxy4 = 0.0, 0.0, 0.0, 0.0
  for start in range(0, i.size, _CHUNK):
    n, below = _weighted(c, i, j, start, below, total, at, wt, rk)
    live += n
    p1, p2, pyy, pxy = 0.0, 0.0, 0.0, 0.0
    for k in range(n):
      m, w, rank2 = at[k], wt[k], float(rk[k])
      p1 += w * zy[m]
      p2 += w * zy[m] * zy[m]
      pyy += w * rank2 * rank2
      pxy += w * rank2 * cx2[places[m]]
    s1, s2, syy4, sxy4 = s1 + p1, s2 + p2, syy4 + pyy, sxy4 + pxy
  at, wt, rk = _tie_buffers(ties)
  for g in range(ties.shape[0]):
    n, weighted = _tie_corrections(c, i, j, ties[g, 0], ties[g, 1], at, wt,
                                   rk)
    live += weighted - n  # The group counts once.
    for k in range(n):
      m, w, delta = at[k], wt[k], rk[k]
      syy4 -= w * float(delta) ** 2
      sxy4 += float(w * delta) * cx2[places[m]]
  return _rho(sxy4, sxx4, syy4, live), s1, s2


@numba.njit(cache=True, nogil=True)
def _weighted(c, i, j, start, below, total, at, wt, rk):
  """Lists the pairs with weight among ``start:start + _CHUNK``: their
  places ``at``, weights ``wt`` and doubled ranks ``rk`` as if untied
  (``below``: the weight before ``start``). Returns how many, and the weight
  up to the chunk's end."""
  n = 0
  for m in range(start, min(start + _CHUNK, i.size)):
    w = c[i[m]] * c[j[m]]
    at[n], wt[n], rk[n] = m, w, 2 * below + w - total
    below += w
    n += w > 0  # Without weight, the next pair takes its slot.
  return n, below


@numba.njit(cache=True, nogil=True)
def _tie_buffers(ties):
  """Scratch ``(at, wt, rk)`` for :func:`_tie_corrections`, one slot per
  pair of the largest tie group in ``ties``."""
  size = 1
  for g in range(ties.shape[0]):
    size = max(size, ties[g, 1] - ties[g, 0])
  return (np.empty(size, dtype=np.int64), np.empty(size, dtype=np.int64),
          np.empty(size, dtype=np.int64))


@numba.njit(cache=True, nogil=True)
def _tie_corrections(c, i, j, start, stop, at, wt, dt):
  """The tie group of the pairs ``start:stop``: lists its pairs with weight
  (places ``at``, weights ``wt`` and rank corrections ``dt``, ``delta = S -
  2 P - w``); returns how many, and 1 if the group has weight (else 0)."""
  weight = 0
  for m in range(start, stop):
    weight += c[i[m]] * c[j[m]]
  before, n = 0, 0
  for m in range(start, stop):
    w = c[i[m]] * c[j[m]]
    at[n], wt[n], dt[n] = m, w, weight - 2 * before - w
    before += w
    n += w > 0  # Without weight, the next pair takes its slot.
  return n, 1 if weight > 0 else 0


@numba.njit(cache=True, nogil=True)
def _histogram_side(t, a, code, zy, total, sxx4):
  """One histogram metric's ``(rho, sum w zy, sum w zy^2)`` from the joint
  histograms ``t`` (weights) and ``a`` (``w cx2``) of :func:`_carry_pass`:
  ``code`` maps a joint code to the metric's value code, ``zy`` is its
  ``unit_sd`` value by code."""
  weights = np.zeros(zy.size, dtype=np.int64)
  cross = np.zeros(zy.size, dtype=np.int64)
  for q in range(code.size):
    weights[code[q]] += t[q]
    cross[code[q]] += a[q]
  below, live = np.int64(0), np.int64(0)  # Not literals (*).
  s1, s2, syy4, sxy4 = 0.0, 0.0, 0.0, 0.0
  for start in range(0, zy.size, _CHUNK):  # Sums per chunk, as above.
    p1, p2, pyy, pxy = 0.0, 0.0, 0.0, 0.0
    for v in range(start, min(start + _CHUNK, zy.size)):
      weight = weights[v]
      rank2 = float(2 * below + weight - total)
      below += weight
      live += weight > 0
      p1 += weight * zy[v]
      p2 += weight * zy[v] * zy[v]
      pyy += weight * rank2 * rank2
      pxy += rank2 * cross[v]
    s1, s2, syy4, sxy4 = s1 + p1, s2 + p2, syy4 + pyy, sxy4 + pxy
  return _rho(sxy4, sxx4, syy4, live), s1, s2


@numba.njit(cache=True, nogil=True)
def _rho(sxy4, sxx4, syy4, live):
  """Spearman from the doubled centred sums, clipped to [-1, 1]; NaN when
  the carry (``sxx4`` NaN) or the metric (``live`` < 2 groups with weight)
  has fewer than 2 distinct values with weight."""
  if live < 2 or not np.isfinite(sxx4):
    return np.nan
  return min(max(sxy4 / np.sqrt(sxx4 * syy4), -1.0), 1.0)
