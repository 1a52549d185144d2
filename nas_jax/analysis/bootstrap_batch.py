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
  pairs of value ``g``: two weighted histograms (``bincount``) per resample,
  shared by several metrics through a joint code of their values
  (:func:`mantel_batch.joint_codes`). Weights and doubled ranks are integers,
  so the histograms are exact; the correlation is ``PairBootstrap``'s to
  rounding.

Per-resample sums use ``einsum``, not BLAS: small BLAS calls in a loop pay
thread wake-ups, which cost milliseconds each on a busy machine.

Host-side NumPy only; never call it inside ``jax.jit``.
"""

from __future__ import annotations

import math
from concurrent import futures

import numpy as np

from nas_jax.analysis import blas
from nas_jax.analysis import mantel_batch
from nas_jax.analysis import resampling


# A metric with more distinct values than this fraction of its pairs is
# ranked in its own order (a cumulative sum) rather than by histograms.
_ORDERED_FRACTION = 0.25


class _CellSet:
  """The metrics on one set of cells: their pairs (a mask in the carry's
  order), the carry's Pearson tables there and each metric's ranking data.

  A metric with few distinct values is ranked from histograms over a joint
  code (``self.metrics``, ``self.groups``); one with many, in its own order
  (``self.ordered``): its pairs sorted by value, where a resample's weights
  are ``c[i] c[j]`` again and its doubled centred ranks one cumulative sum
  (per tie group, contiguous there), and the carry's ranks are looked up.
  """

  def __init__(self, a: np.ndarray, cells: np.ndarray, i_s: np.ndarray,
               j_s: np.ndarray):
    self.k, self.i_s, self.j_s = a.shape[0], i_s, j_s
    self.cells = cells
    self.mask = (cells[i_s] & cells[j_s]).astype(np.int32) if not cells.all(
    ) else None
    self.pos = (np.arange(i_s.size) if self.mask is None
                else np.flatnonzero(self.mask))
    self.zx = resampling.unit_sd(a[i_s[self.pos], j_s[self.pos]])
    self.forms = [self.table(self.zx), self.table(self.zx * self.zx)]
    self.names: list[str] = []
    self.metrics: list[tuple[int, np.ndarray, np.ndarray]] = []
    self.ordered: list[tuple[int, tuple]] = []
    self.groups = []

  def table(self, values: np.ndarray) -> np.ndarray:
    """``values`` at this set's pairs as a symmetric ``[K, K]`` matrix."""
    flat = mantel_batch.symmetric_table(self.k, self.i_s[self.pos],
                                        self.j_s[self.pos], values)
    return flat.reshape(self.k, self.k)

  def add(self, name: str, y: np.ndarray) -> None:
    """Adds metric ``y`` ``[K, K]``: its Pearson cross table and ranking
    data (value codes at every pair of the carry's order, 0 off this set
    where the weight is 0; or its own order)."""
    ys = y[self.i_s[self.pos], self.j_s[self.pos]]
    values, code = np.unique(ys, return_inverse=True)
    code = code.ravel()
    zy = resampling.unit_sd(ys)
    self.forms.append(self.table(self.zx * zy))
    b = len(self.names)
    self.names.append(name)
    if values.size > _ORDERED_FRACTION * ys.size:
      order = np.argsort(code, kind="stable")
      start = np.flatnonzero(np.diff(code[order], prepend=-1))
      self.ordered.append((b, (
          self.i_s[self.pos[order]], self.j_s[self.pos[order]],
          self.pos[order], zy[order],
          None if start.size == order.size else start)))
      return
    first = np.zeros(values.size, dtype=np.int64)
    first[code] = np.arange(code.size)
    full = np.zeros(self.i_s.size, dtype=np.int64)
    full[self.pos] = code
    self.metrics.append((b, full, zy[first]))

  def finish(self) -> None:
    """Groups the histogram metrics by a joint code of their values:
    ``[(metric indices, joint code [M], each one's code by joint code, or
    None when the joint code is its own)]``."""
    for members, joint in mantel_batch.joint_codes(
        [code for _, code, _ in self.metrics]):
      first = np.zeros(int(joint.max()) + 1, dtype=np.int64)
      first[joint] = np.arange(joint.size)
      self.groups.append(([self.metrics[m] for m in members], joint,
                          [None] if len(members) == 1 else
                          [self.metrics[m][1][first] for m in members]))


class SharedBootstrap:
  """Bootstrap (Pearson, Spearman) of one carry with several metrics.

  Each metric has its cells (all, or a subset such as the cells with finite
  ppl; then its pairs are all pairs among them, as ``correlate`` with those
  pairs gets). Results equal :func:`resampling.bootstrap_over_cells` on each
  metric's pairs for the same count chunks, to rounding.

  Args:
    a: ``float[K, K]`` the carry distance, symmetric.
    metrics: name -> ``(y float[K, K], cells bool[K] or None for all)``.
    workers: threads sharing the resamples of a chunk (numpy releases the
      GIL); every resample's numbers are the same for any ``workers``.
  """

  def __init__(self, a: np.ndarray, metrics: dict, workers: int = 1):
    k = a.shape[0]
    self.workers = workers
    i, j = (v.astype(np.int64) for v in np.triu_indices(k, 1))
    order = np.argsort(a[i, j], kind="stable")  # As PairBootstrap.
    self.i_s, self.j_s = i[order], j[order]
    xs = a[self.i_s, self.j_s]
    new = np.ones(xs.size, dtype=bool)
    new[1:] = xs[1:] != xs[:-1]
    self.gid = np.cumsum(new) - 1  # Tie groups of the carry.
    self.ties = bool(self.gid[-1] + 1 < xs.size)
    self.sets: dict[bytes, _CellSet] = {}
    for name, (y, cells) in metrics.items():
      cells = np.ones(k, bool) if cells is None else np.asarray(cells, bool)
      if cells.tobytes() not in self.sets:
        self.sets[cells.tobytes()] = _CellSet(a, cells, self.i_s, self.j_s)
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
    ci = counts.astype(np.int32)
    spear = {key: np.full((n, len(s.names)), np.nan)
             for key, s in self.sets.items()}
    ysums = {key: np.zeros((n, len(s.names), 2))
             for key, s in self.sets.items()}
    def resamples(rows):
      with blas.single_threaded():
        for r in rows:
          self._resample(ci[r], {key: (spear[key][r], ysums[key][r])
                                 for key in self.sets})
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

  def _resample(self, c: np.ndarray, outs: dict) -> None:
    """Spearman and the metric sums of one resample ``c`` (int32 counts)
    for every cell set, into ``outs[key] = (rho, ysums)``."""
    # mode="clip" only skips the bounds check: every index is in range.
    w = c.take(self.i_s, mode="clip")
    w *= c.take(self.j_s, mode="clip")
    for key, cell_set in self.sets.items():
      self._spearman(c * cell_set.cells, w if cell_set.mask is None
                     else w * cell_set.mask, cell_set, *outs[key])

  def _spearman(self, c: np.ndarray, w: np.ndarray, cell_set: _CellSet,
                rho: np.ndarray, ysums: np.ndarray) -> None:
    """Fills ``rho[b]`` and ``ysums[b] = (sum w zy, sum w zy^2)`` for one
    resample's counts ``c`` (int32, zero off the set's cells) and pair
    weights ``w = c[i] c[j]`` in the carry's order."""
    total = (int(c.sum()) ** 2 - int(np.einsum("k,k->", c, c,
                                               dtype=np.int64))) // 2
    wf = w.astype(np.float64)
    cx2, sxx4 = _doubled_ranks(w, wf, self.gid if self.ties else None, total)
    if cell_set.groups:
      v = wf * cx2
    for members, joint, member_codes in cell_set.groups:
      size = int(joint.max()) + 1
      t_joint = np.bincount(joint, weights=wf, minlength=size)
      a_joint = np.bincount(joint, weights=v, minlength=size)
      for (b, _, zy), code in zip(members, member_codes):
        rho[b], ysums[b] = _metric_side(zy, code, t_joint, a_joint, total,
                                        sxx4)
    for b, data in cell_set.ordered:
      rho[b], ysums[b] = _ordered_side(c, data, cx2, total, sxx4)


def _quadratic_forms(c: np.ndarray, tables: list[np.ndarray]) -> np.ndarray:
  """``[n, F]``: ``c[r] @ F @ c[r] / 2`` for each table ``F``, i.e. the sum
  of ``c[u] c[v] F[u, v]`` over the pairs ``u < v``."""
  return np.stack([0.5 * np.einsum("rk,rk->r", c @ f, c) for f in tables],
                  axis=1)


def _doubled_ranks(w: np.ndarray, wf: np.ndarray, gid: np.ndarray | None,
                   total: int) -> tuple[np.ndarray, float]:
  """Doubled centred weighted average ranks ``2 rank - (N + 1)`` (exact
  integers as float64) of pairs with integer weights ``w`` (``wf`` as
  float64) in sorted order (tie groups ``gid``, or None without ties), and
  ``4 sum w (rank - mean)^2``; NaN when fewer than 2 distinct values have
  weight."""
  if gid is None:
    if np.count_nonzero(w) < 2:
      return np.zeros(w.size), math.nan
    cx2 = np.multiply(np.cumsum(w, dtype=np.int64), 2.0)
    cx2 -= wf
    cx2 -= total
    return cx2, float(np.einsum("m,m,m->", wf, cx2, cx2))
  weight = np.bincount(gid, weights=wf)
  if np.count_nonzero(weight) < 2:
    return np.zeros(w.size), math.nan
  rank2 = 2.0 * np.cumsum(weight) - weight - total
  return rank2[gid], float(np.einsum("g,g,g->", weight, rank2, rank2))


def _metric_side(zy: np.ndarray, code_of_joint: np.ndarray | None,
                 t_joint: np.ndarray, a_joint: np.ndarray, total: int,
                 sxx4: float) -> tuple[float, np.ndarray]:
  """One metric's Spearman and ``(sum w zy, sum w zy^2)`` from the joint
  histograms of the weights ``t_joint`` and of ``w * rank_x`` ``a_joint``
  (``code_of_joint`` None: the joint code is the metric's own)."""
  if code_of_joint is None:
    t, a = t_joint, a_joint
  else:
    t = np.bincount(code_of_joint, weights=t_joint, minlength=zy.size)
    a = np.bincount(code_of_joint, weights=a_joint, minlength=zy.size)
  sums = np.array([np.einsum("g,g->", t, zy),
                   np.einsum("g,g,g->", t, zy, zy)])
  if np.count_nonzero(t) < 2 or not math.isfinite(sxx4):
    return math.nan, sums
  rank2 = 2.0 * np.cumsum(t) - t - total
  syy4 = float(np.einsum("g,g,g->", t, rank2, rank2))
  sxy4 = float(np.einsum("g,g->", rank2, a))
  return float(np.clip(sxy4 / math.sqrt(sxx4 * syy4), -1.0, 1.0)), sums


def _ordered_side(c: np.ndarray, data: tuple, cx2: np.ndarray, total: int,
                  sxx4: float) -> tuple[float, np.ndarray]:
  """Spearman and ``(sum w zy, sum w zy^2)`` of a metric ranked in its own
  order: ``data`` holds its pairs ``(i, j)`` sorted by value, their places
  in the carry's order, ``zy`` in this order and the tie group starts (None
  without ties)."""
  i, j, places, zy, starts = data
  w = c.take(i, mode="clip")
  w *= c.take(j, mode="clip")
  wf = w.astype(np.float64)
  sums = np.array([np.einsum("m,m->", wf, zy),
                   np.einsum("m,m,m->", wf, zy, zy)])
  cy2, syy4 = _doubled_ranks(w, wf, None, total) if starts is None else (
      _group_ranks(wf, starts, total))
  if not (math.isfinite(sxx4) and math.isfinite(syy4)):
    return math.nan, sums
  sxy4 = float(np.einsum("m,m,m->", wf, cx2.take(places, mode="clip"), cy2))
  return float(np.clip(sxy4 / math.sqrt(sxx4 * syy4), -1.0, 1.0)), sums


def _group_ranks(wf: np.ndarray, starts: np.ndarray,
                 total: int) -> tuple[np.ndarray, float]:
  """:func:`_doubled_ranks` for ties in contiguous groups (``starts``)."""
  weight = np.add.reduceat(wf, starts)
  if np.count_nonzero(weight) < 2:
    return np.zeros(wf.size), math.nan
  rank2 = 2.0 * np.cumsum(weight) - weight - total
  sizes = np.diff(np.append(starts, wf.size))
  return (np.repeat(rank2, sizes),
          float(np.einsum("g,g,g->", weight, rank2, rank2)))
