"""Many pair correlations over the same cells, sharing their random draws.

:func:`correlate_many` returns, for every carry distance ``d`` and metric
``m``, the dict of :func:`pairwise.correlate
<nas_jax.analysis.pairwise.correlate>` ``(dists[d], metrics[m], ...)`` with
the same seed: the same observed statistics, the same permutations and
resamples, so the same p-value counts and intervals. It computes them
together, because each ``correlate`` call with the same seed and ``K`` draws
the same cell permutations (the ``MANTEL`` stream) and the same resamples
(the ``BOOTSTRAP`` stream):

* metrics on all pairs: every null in one pass per permutation
  (:class:`mantel_batch.AllPairsNulls`);
* a metric on all pairs among some cells (``cells``, e.g. finite ppl):
  :class:`mantel_batch.CellSubsetNulls`, no re-ranking;
* a metric on a subset of pairs (``pairs``, e.g. graph edit distances):
  the subset path, once per distance for all metrics on the same pairs
  (:func:`mantel_batch.subset_nulls`);
* bootstrap intervals: one :class:`bootstrap_batch.SharedBootstrap` per
  distance for the metrics on all pairs or on cells, and
  ``resampling.PairBootstrap`` on the same resamples for pair subsets.

The nulls and bootstrap statistics equal ``correlate``'s to rounding
(~1e-15; they are sums in another order), so p-values (which allow
``resampling.P_TOL``) and percentile intervals are the same; tested in
``tests/test_correlate_batch.py``. ``p_naive`` comes from the coefficients
(:func:`pairwise.naive_p_values`), equal to scipy's to ~1e-12 relative.

Host-side NumPy/SciPy only; never call it inside ``jax.jit``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from nas_jax import streams
from nas_jax.analysis import bootstrap_batch
from nas_jax.analysis import mantel_batch
from nas_jax.analysis import pairwise
from nas_jax.analysis import resampling


def correlate_many(dists: Mapping[str, np.ndarray],
                   metrics: Mapping[str, np.ndarray], *,
                   cells: Mapping[str, np.ndarray] | None = None,
                   pairs: Mapping[str, np.ndarray] | None = None,
                   only: Mapping[str, Iterable[str]] | None = None,
                   num_permutations: int | Mapping[str, int] = 999,
                   num_bootstrap: int | Mapping[str, int] = 1000,
                   seed: int = 0, ci: float = 0.95,
                   workers: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
  """:func:`pairwise.correlate` of every distance with every metric.

  Args:
    dists: name -> symmetric ``float[K, K]`` (``correlate``'s ``a``: its
      cells are permuted).
    metrics: name -> symmetric ``float[K, K]`` (``correlate``'s ``b``).
    cells: metric name -> ``bool[K]``: the metric is only known on the pairs
      among these cells (``correlate`` with ``pairs`` = all of them).
    pairs: metric name -> ``int[M, 2]``: ``correlate``'s ``pairs``.
    only: distance name -> the metrics to correlate it with, in the order
      of ``out[d]`` (default: all, in the order of ``metrics``).
    num_permutations, num_bootstrap: an int, or distance name -> int.
    seed, ci: as ``correlate``.
    workers: threads for the permutation nulls and the resamples (results
      do not depend on it).

  Returns:
    ``out[d][m]``: the dict of ``correlate(dists[d], metrics[m], ...)``.

  Raises:
    ValueError: as ``correlate`` would for any of the pairs.
  """
  if not dists:
    return {}
  job = _Job(dists, metrics, cells or {}, pairs or {}, only, seed, ci)
  job.check(num_permutations, num_bootstrap)
  nulls = job.nulls(num_permutations, workers)
  boots = job.bootstraps(num_bootstrap, workers)
  return job.results(nulls, boots, num_permutations, num_bootstrap)


def _setting(value: int | Mapping[str, int], name: str) -> int:
  return int(value[name]) if isinstance(value, Mapping) else int(value)


class _Job:
  """The inputs of :func:`correlate_many`, checked, with the observed side
  of every correlation (values at its pairs, ranks, standardised)."""

  def __init__(self, dists, metrics, cells, pairs, only, seed, ci):
    self.dists = {d: pairwise.as_square(a, "a") for d, a in dists.items()}
    self.metrics = {m: pairwise.as_square(b, "b") for m, b in metrics.items()}
    self.k = next(iter(self.dists.values())).shape[0]
    self.cells = {m: np.asarray(c, dtype=bool) for m, c in cells.items()}
    self.seed, self.ci = int(seed), float(ci)
    # Which null path each metric takes, its pairs, and a key of its pairs.
    self.kinds = {m: "cells" if m in self.cells else (
        "pairs" if m in pairs else "all") for m in self.metrics}
    self.pairs = {m: self._metric_pairs(m, pairs) for m in self.metrics}
    self.pair_keys = {m: (self.kinds[m], np.stack(self.pairs[m]).tobytes()
                          if self.kinds[m] != "all" else b"")
                      for m in self.metrics}
    # In the order of `only` (default: of `metrics`): the order of out[d].
    self.combos = [(d, m) for d in self.dists
                   for m in (self.metrics if only is None else only.get(d, ()))]
    self._values: dict[tuple, np.ndarray] = {}
    self._ranked: dict[tuple, np.ndarray] = {}
    self._constant: dict[tuple, bool] = {}

  def _metric_pairs(self, m: str, pairs) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` of metric ``m``: all pairs, pairs among its cells or its
    own pairs (checked and ordered as ``correlate`` does)."""
    i, j = pairwise.pairs_index(self.k)
    if self.kinds[m] == "cells":
      keep = self.cells[m][i] & self.cells[m][j]
      return i[keep], j[keep]
    if self.kinds[m] == "pairs":
      return pairwise.check_pairs(pairs[m], self.k)
    return i, j

  def check(self, num_permutations, num_bootstrap) -> None:
    """Raises what ``correlate`` raises for any requested pair; checks each
    matrix's symmetry once."""
    off_diagonal = {}  # Distance -> finite off the diagonal.
    for d, m in self.combos:
      a, b = self.dists[d], self.metrics[m]
      pairwise.check_settings(a, b, _setting(num_permutations, d),
                              _setting(num_bootstrap, d), self.ci)
      i, j = self.pairs[m]
      if i.size < 3:
        raise ValueError(f"need at least 3 pairs, got {i.size}")
      if not (np.all(np.isfinite(self.values(d, m)))
              and np.all(np.isfinite(self.values(None, m)))):
        raise ValueError("a and b must be finite at every pair used; pass "
                         "`pairs` to restrict to the pairs where a metric is "
                         "known")
      if self.kinds[m] != "all" and _setting(num_permutations, d):
        if d not in off_diagonal:
          off_diagonal[d] = bool(np.all(np.isfinite(
              a[~np.eye(self.k, dtype=bool)])))
        if not off_diagonal[d]:
          raise ValueError("with `pairs` and permutations, a must be finite "
                           "off the diagonal (it is looked up at permuted "
                           "pairs)")
    for name, mat in (*self.dists.items(), *self.metrics.items()):
      pairwise.check_symmetric(mat, "a" if name in self.dists else "b")

  def values(self, d: str | None, m: str) -> np.ndarray:
    """The distance ``d`` (or metric ``m`` when ``d`` is None) at ``m``'s
    pairs (read once per distance and set of pairs)."""
    key = (d, self.pair_keys[m]) if d is not None else (None, m)
    if key not in self._values:
      i, j = self.pairs[m]
      self._values[key] = (self.metrics[m] if d is None
                           else self.dists[d])[i, j]
      self._values[key].flags.writeable = False  # Shared by its callers.
    return self._values[key]

  def ranks(self, d: str | None, m: str) -> np.ndarray:
    """Average ranks of :meth:`values`, computed once per pair set."""
    key = (d, self.pair_keys[m]) if d is not None else (None, m)
    if key not in self._ranked:
      self._ranked[key] = resampling.average_ranks(self.values(d, m))
    return self._ranked[key]

  def constant(self, d: str, m: str) -> bool:
    """Whether the distance or the metric is constant at ``m``'s pairs
    (computed once per (distance, metric))."""
    if (d, m) not in self._constant:
      self._constant[d, m] = (resampling.is_constant(self.values(d, m))
                              or resampling.is_constant(self.values(None, m)))
    return self._constant[d, m]

  def permutations(self, n: int) -> np.ndarray:
    return resampling.cell_permutations(
        n, self.k, resampling.rng(self.seed, streams.MANTEL))

  def nulls(self, num_permutations, workers) -> dict[tuple, np.ndarray]:
    """``(d, m)`` -> null ``[n, 2]`` (Pearson, Spearman) for every pair that
    gets permutations and is not constant."""
    todo = [(d, m) for d, m in self.combos
            if _setting(num_permutations, d) and not self.constant(d, m)]
    out = {}
    for n in sorted({_setting(num_permutations, d) for d, _ in todo}):
      group = [(d, m) for d, m in todo if _setting(num_permutations, d) == n]
      perms = self.permutations(n)
      out.update(self._all_pairs_nulls(
          [c for c in group if self.kinds[c[1]] == "all"], perms, workers))
      for d, m in group:
        if self.kinds[m] == "cells":
          out[d, m] = mantel_batch.CellSubsetNulls(
              self.dists[d], self.metrics[m], self.cells[m])(perms, workers)
      out.update(self._subset_nulls(
          [c for c in group if self.kinds[c[1]] == "pairs"], perms))
    return out

  def _all_pairs_nulls(self, group, perms, workers) -> dict:
    if not group:
      return {}
    ds = list(dict.fromkeys(d for d, _ in group))
    ms = list(dict.fromkeys(m for _, m in group))
    s = resampling.standardise
    nulls = mantel_batch.AllPairsNulls(
        self.k, np.stack([s(self.values(d, ms[0])) for d in ds]),
        np.stack([s(self.ranks(d, ms[0])) for d in ds]),
        np.stack([s(self.values(None, m)) for m in ms]),
        np.stack([s(self.ranks(None, m)) for m in ms]))(perms, workers)
    return {(d, m): nulls[:, ds.index(d), ms.index(m)] for d, m in group}

  def _subset_nulls(self, group, perms) -> dict:
    """Subset-path nulls, once per distance and set of pairs."""
    out = {}
    for d in dict.fromkeys(d for d, _ in group):
      by_pairs: dict[bytes, list[str]] = {}
      for dd, m in group:
        if dd == d:
          by_pairs.setdefault(self.pair_keys[m][1], []).append(m)
      for ms in by_pairs.values():
        i, j = self.pairs[ms[0]]
        s = resampling.standardise
        null = mantel_batch.subset_nulls(
            self.dists[d], np.stack([s(self.values(None, m)) for m in ms]),
            np.stack([s(self.ranks(None, m)) for m in ms]), i, j, perms)
        out.update({(d, m): null[:, t] for t, m in enumerate(ms)})
    return out

  def bootstraps(self, num_bootstrap, workers) -> dict[tuple, np.ndarray]:
    """``(d, m)`` -> bootstrap ``[n, 2]`` for every pair that gets resamples
    and is not constant."""
    out = {}
    for d in self.dists:
      n = _setting(num_bootstrap, d)
      ms = [m for dd, m in self.combos if dd == d and n
            and not self.constant(d, m)]
      if not ms:
        continue
      shared = bootstrap_batch.SharedBootstrap(self.dists[d], {
          m: (self.metrics[m], self.cells.get(m)) for m in ms
          if self.kinds[m] != "pairs"}, workers=workers)
      single = {m: resampling.PairBootstrap(
          self.values(d, m), self.values(None, m), *self.pairs[m])
                for m in ms if self.kinds[m] == "pairs"}
      parts = {m: [] for m in ms}
      for counts in resampling.bootstrap_count_chunks(
          self.k, n, resampling.rng(self.seed, streams.BOOTSTRAP)):
        for m, stat in {**shared(counts), **{
            m: b(counts) for m, b in single.items()}}.items():
          parts[m].append(stat)
      out.update({(d, m): np.concatenate(parts[m]) for m in ms})
    return out

  def results(self, nulls, boots, num_permutations, num_bootstrap) -> dict:
    """The dicts of ``correlate``, from the nulls and bootstraps."""
    out: dict[str, dict[str, dict[str, Any]]] = {d: {} for d in self.dists}
    for d, m in self.combos:
      x, y = self.values(d, m), self.values(None, m)
      res: dict[str, Any] = {
          "num_cells": self.k, "num_pairs": int(x.size),
          "pairs": "all" if self.kinds[m] == "all" else "subset",
          "num_permutations": _setting(num_permutations, d),
          "num_bootstrap": _setting(num_bootstrap, d),
          "ci_level": self.ci, "seed": self.seed, "constant_input": False}
      if self.constant(d, m):
        res.update(pairwise.constant_input())
      else:
        res.update(self._statistics(d, m, x, y, nulls.get((d, m)),
                                    boots.get((d, m))))
      out[d][m] = res
    return out

  def _statistics(self, d, m, x, y, null, boot) -> dict[str, Any]:
    rho = pairwise.pearson(self.ranks(d, m), self.ranks(None, m))
    r = pairwise.pearson(x, y)
    p_spearman, p_pearson = pairwise.naive_p_values(rho, r, x.size)
    null = np.full((0, 2), np.nan) if null is None else null
    boot = np.full((0, 2), np.nan) if boot is None else boot
    return {
        "spearman": pairwise.summary("rho", rho, p_spearman, null[:, 1],
                                     boot[:, 1], self.ci),
        "pearson": pairwise.summary("r", r, p_pearson, null[:, 0],
                                    boot[:, 0], self.ci),
        "linear_fit": pairwise.linear_fit(x, y, r)}
