"""Controls for recency in the carry-vs-structure probe.

An LSTM carry always holds its most recent inputs. The probe (DESIGN.md, "The
analyses") correlates pairwise carry distances with pairwise graph metrics of
the cells, and the carry analysed has read the tokens ``0 .. 2N-3`` of a cell
(up to the last parent choice ``p_{N-1}``, not the last activation
``a_{N-1}``). Two cells whose last read token differs have distant carries
whatever the controller remembers of the rest, and a graph metric over the
whole cell counts that token too, so a correlation can come from the last
decision alone. Measured on an untrained controller: Spearman's rho of
``h``-L2 against the Hamming distance of all tokens is +0.17, of tokens
0-18 only +0.01, of token 21 (the last read) +0.51. A claim that the carry
*remembers* structure must survive two controls, both here:

* **Prefix metrics** (:func:`prefix_cells`, :func:`prefix_metrics`): the graph
  metrics of the sub-cell the carry had read ``k`` decisions before its last
  one, so the last ``k`` read tokens play no part in the metric.
* **Partial Mantel test** (:func:`partial_mantel`): the Spearman partial
  correlation of carry distance and a metric given a recency matrix such as
  :func:`last_decision_differs`, with a cell-permutation p-value.

:func:`read_tokens` gives the tokens the carry has read, and :func:`holm`
adjusts the p-values of a family of such tests (several metrics, prefixes and
carries) for multiplicity.

Host-side NumPy/SciPy only (``search_space`` and ``graph_metrics`` are used
for their NumPy functions); never call it inside ``jax.jit``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from nas_jax import search_space
from nas_jax import streams
from nas_jax.analysis import graph_metrics
from nas_jax.analysis import mantel_batch
from nas_jax.analysis import pairwise
from nas_jax.analysis import resampling

# The whole-matrix metrics of graph_metrics.pairwise_all, by name, so that a
# subset can be computed without the others.
_METRICS = {
    "common_connections": graph_metrics.common_connections,
    "common_activations": graph_metrics.common_activations,
    "jaccard_edges": graph_metrics.jaccard_edges,
    "wl_kernel": graph_metrics.wl_kernel,
    "aligned_edit_distance": graph_metrics.aligned_edit_distance,
}

# ---------------------------------------------------------------------------
# What the carry has read.
# ---------------------------------------------------------------------------


def read_tokens(tokens) -> np.ndarray:
  """The tokens the analysed carry has read: ``int32[K, 2N-2]``.

  All but the last activation ``a_{N-1}`` (the carry is the one from which
  that activation's logits come). Empty (``[K, 0]``) for 1-node cells.

  Args:
    tokens: ``int[K, 2N-1]`` cells (or a sequence of ``Architecture``).
  """
  tokens = graph_metrics.as_token_array(tokens)
  return tokens[:, :-1]


def _check_k(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
    raise ValueError(f"k must be an int >= 0, got {k!r}")
  return int(k)


def prefix_cells(tokens, k: int) -> np.ndarray:
  """The sub-cells read ``k`` tokens before the carry: ``int32[K, 2M-1]``.

  The read sequence (:func:`read_tokens`, ``2N-2`` tokens) without its last
  ``k`` tokens is ``tokens[:, :2N-2-k]``. A node ``l`` is complete when its
  activation (position ``2l``) and, for ``l >= 1``, its parent (``2l-1``) both
  lie in it; the complete nodes are ``0 .. M-1`` with ``M = ceil((2N-2-k) /
  2)``, and their tokens ``tokens[:, :2M-1]`` form a valid ``M``-node cell
  (every parent of a complete node is an earlier, complete node). So
  ``k = 1`` drops node ``N-1`` (``M = N-1``; the last read token, the parent
  ``p_{N-1}``, is gone), ``k = 2`` (and 3) gives ``M = N-2``, ``k = 4`` gives
  ``M = N-3``; ``k = 0`` gives ``M = N-1`` too (``p_{N-1}`` alone does not
  complete node ``N-1``).

  Args:
    tokens: ``int[K, 2N-1]`` cells.
    k: read tokens to leave out, ``>= 0``.

  Raises:
    ValueError: if ``M < 1`` (``k >= 2N-2``), or for invalid cells or ``k``.
  """
  tokens = graph_metrics.as_token_array(tokens)
  k = _check_k(k)
  length = tokens.shape[1] - 1 - k  # Read tokens left: 2N-2-k.
  num_complete = (length + 1) // 2 if length > 0 else 0
  if num_complete < 1:
    raise ValueError(
        f"k={k} leaves no complete node of a "
        f"{search_space.num_nodes_from_tokens(tokens.shape[1])}-node cell "
        f"(k must be at most 2N-3 = {tokens.shape[1] - 2})")
  return search_space.validate_tokens(
      tokens[:, :search_space.num_tokens(num_complete)])


def prefix_metrics(tokens, ks: Iterable[int] = (1, 2, 4),
                   names: Sequence[str] | None = None
                   ) -> dict[int, dict[str, np.ndarray]]:
  """Graph metrics of the prefix sub-cells: ``{k: {name: [K, K]}}``.

  The whole-matrix metrics of :func:`graph_metrics.pairwise_all` (its
  docstring says which are similarities) on :func:`prefix_cells` ``(tokens,
  k)`` for each ``k``.

  Args:
    tokens: ``int[K, 2N-1]`` cells.
    ks: prefixes, each as :func:`prefix_cells`' ``k``.
    names: a subset of the metric names (only those are computed); all when
      None.

  Raises:
    ValueError: for an unknown name (listing the valid ones) or a bad ``k``.
  """
  tokens = graph_metrics.as_token_array(tokens)
  if names is not None:
    names = list(names)
    unknown = [n for n in names if n not in _METRICS]
    if unknown:
      raise ValueError(f"unknown metric names {unknown}; valid names are "
                       f"{sorted(_METRICS)}")
  out = {}
  for k in ks:
    cells = prefix_cells(tokens, k)
    if names is None:
      out[int(k)] = graph_metrics.pairwise_all(cells)
    else:
      out[int(k)] = {n: _METRICS[n](cells) for n in names}
  return out


def last_decision_differs(tokens) -> np.ndarray:
  """Whether two cells differ in the last read token: ``float64[K, K]``.

  1.0 where the tokens at position ``2N-3`` (the last parent choice
  ``p_{N-1}``, the last token the carry read) differ, 0.0 where they are
  equal; the diagonal is 0. The recency matrix to partial out in
  :func:`partial_mantel`.

  Raises:
    ValueError: for 1-node cells (the carry has read nothing).
  """
  tokens = graph_metrics.as_token_array(tokens)
  if tokens.shape[1] < 3:
    raise ValueError("1-node cells have no read token (need N >= 2)")
  last = tokens[:, -2]
  return (last[:, None] != last[None, :]).astype(np.float64)


# ---------------------------------------------------------------------------
# Partial Mantel test.
# ---------------------------------------------------------------------------


def _standardised_ranks(v: np.ndarray) -> np.ndarray:
  """Average ranks of ``v``, centred and scaled to unit norm; zeros where
  ``v`` is constant (so a constant regressor contributes nothing)."""
  if resampling.is_constant(v):
    return np.zeros(v.size)
  return resampling.standardise(resampling.average_ranks(v))


def _partial(r_xy, r_xz, r_yz):
  """Partial correlation of x and y given z from the three correlations.

  Equal to the correlation of the residuals of x and y after least squares on
  ``[1, z]``. NaN where x or y is a linear function of z (``|r| = 1``).
  """
  den = np.sqrt((1.0 - np.square(r_xz)) * (1.0 - np.square(r_yz)))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, (r_xy - r_xz * r_yz) / np.where(den > 0, den, 1.0),
                    np.nan)


def _from_ranks(zx: np.ndarray, zy: np.ndarray,
                zz: np.ndarray) -> tuple[float, float]:
  """``(rho, partial_rho)`` from the standardised ranks (:func:`
  _standardised_ranks`) of the pair vectors x, y and z: Spearman's rho of x
  and y, and the Spearman partial correlation given z (the correlation of
  the residuals of ``rank(x)`` and ``rank(y)`` regressed on ``[1,
  rank(z)]``). NaN for a constant x or y (all-zero ranks)."""
  if not zx.any() or not zy.any():
    return math.nan, math.nan
  r_xy = float(np.dot(zx, zy))
  partial = float(_partial(r_xy, float(np.dot(zx, zz)),
                           float(np.dot(zy, zz))))
  return r_xy, partial


def _permutation_nulls(k: int, zx: np.ndarray, zy: np.ndarray,
                       zz: np.ndarray, perms: np.ndarray, workers: int = 1,
                       z_of: Sequence[int] | None = None) -> np.ndarray:
  """Partial correlations ``float64[n, X, Y]`` after permuting the cells of
  each x.

  ``zx`` ``[X, M]``, ``zy`` ``[Y, M]`` and ``zz`` ``[M]`` (or ``[Z, M]``,
  row ``z_of[b]`` the one of ``y_b``) are the standardised ranks of the ``M
  = K (K - 1) / 2`` pairs ``i < j``; entry ``[r, a, b]`` is
  :func:`_from_ranks`'s partial rho of ``x_a`` with its cells permuted by
  ``perms[r]``, ``y_b`` and its ``z`` (to rounding). Permuting the cells
  maps the set of pairs onto itself, so the ranks of a permuted upper
  triangle are the ranks permuted: :class:`mantel_batch.CarryGatherNulls`
  gathers each x's ranks at the permuted pairs and takes them against the
  y's and z's ranks in one product, for ``r_xy`` and ``r_xz``; ``r_yz`` does
  not change. A constant ``z`` (all-zero ranks) makes ``r_xz = r_yz = 0``
  and the partial ``r_xy`` itself (as :func:`_partial` gives it), so it is
  left out of the product. Memory is a ``float64 [K * K, X]`` table (8 MB
  per x at ``K = 1000``), whatever the number of permutations.
  """
  zz = np.atleast_2d(zz)
  z_of = np.zeros(len(zy), np.int64) if z_of is None else np.asarray(z_of)
  varying = [r for r in range(len(zz)) if zz[r].any()]
  null = mantel_batch.CarryGatherNulls(k, zx, np.concatenate(
      [zy, zz[varying]]))(np.asarray(perms, dtype=np.int64),
                          workers=workers)  # [n, X, Y + len(varying)]
  out = null[:, :, :len(zy)]
  for t, r in enumerate(varying, start=len(zy)):
    cols = np.flatnonzero(z_of == r)
    out[:, :, cols] = _partial(out[:, :, cols], null[:, :, t:t + 1],
                               (zy[cols] @ zz[r])[None, None])
  return out


def _check_num_permutations(n) -> int:
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f"num_permutations must be an int >= 0, got {n!r}")
  return int(n)


def partial_mantel(x, y, z, *, num_permutations: int = 999,
                   seed: int = 0) -> dict[str, Any]:
  """Spearman partial correlation of ``x`` and ``y`` given ``z``, with a
  Mantel permutation p-value.

  Over the ``K (K - 1) / 2`` pairs ``i < j``: each upper triangle is ranked
  (average ranks for ties), ``rank(x)`` and ``rank(y)`` are each regressed on
  ``[1, rank(z)]`` by least squares and the residuals correlated. Computed
  as ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2) (1 - r_yz^2))`` of the
  Spearman correlations, which is the same number. A constant ``z`` gives
  exactly the plain rho (residualising on a constant is centring).

  The p-value permutes the cells of ``x`` (rows and columns together,
  ``x[pi][:, pi]``), recomputes the partial correlation with ``y`` and ``z``
  fixed, and is two-sided: ``(1 + #{|null| >= |partial_rho|}) / (1 +
  num_permutations)`` (:func:`pairwise.two_sided_permutation_p`: a tolerance
  of 1e-10 absorbs rounding, NaN permutations count as not extreme). The
  permutations are those :func:`pairwise.correlate` draws for the same
  ``seed`` and ``K`` (the ``MANTEL`` stream).

  Non-finite values are an error, not dropped: dropping pairs would make the
  pairs of the permuted ``x`` differ from the kept ones (the permuted ranks
  would have to be recomputed per permutation) and would silently weight
  cells by their number of defined pairs. Restrict the cells first.

  Args:
    x: ``float[K, K]`` e.g. carry distances; its cells are permuted.
    y: ``float[K, K]`` e.g. a graph metric.
    z: ``float[K, K]`` the matrix partialled out, e.g.
      :func:`last_decision_differs`.
    num_permutations: ``>= 0``; 0 gives a NaN ``p_mantel``.
    seed: seeds the permutations.

  Returns:
    ``{"rho", "partial_rho", "p_mantel", "num_pairs", "num_cells",
    "num_permutations", "seed", "null_sd"}``; ``rho`` is the plain Spearman
    rho of ``x`` and ``y``. ``rho``, ``partial_rho`` and ``p_mantel`` are NaN
    when ``x`` or ``y`` is constant over the pairs, and the last two when
    ``x`` or ``y`` is a monotone function of ``z`` there.

  Raises:
    ValueError: for matrices that are not square, of different shapes, not
      symmetric, with fewer than 3 pairs, or non-finite off the diagonal.
  """
  return partial_mantel_many({"x": x}, {"y": y}, z,
                             num_permutations=num_permutations,
                             seed=seed)["x"]["y"]


def _checked(named: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The matrices as square arrays; ``ValueError`` unless they share one
  shape with at least 3 pairs, are symmetric and finite off the diagonal."""
  mats = {name: pairwise.as_square(m, name) for name, m in named.items()}
  if len({m.shape for m in mats.values()}) > 1:
    raise ValueError(f"{', '.join(mats)} differ in shape: "
                     f"{[m.shape for m in mats.values()]}")
  k = next(iter(mats.values())).shape[0]
  i, j = pairwise.pairs_index(k)
  if i.size < 3:
    raise ValueError(f"need at least 3 pairs (K >= 3), got {i.size}")
  for name, m in mats.items():
    if not np.all(np.isfinite(m[i, j])):
      raise ValueError(f"{name} has non-finite values off the diagonal; "
                       "restrict to the cells where it is known")
    pairwise.check_symmetric(m, name)
  return mats


def partial_mantel_many(xs: dict[str, np.ndarray],
                        ys: dict[str, np.ndarray],
                        z: np.ndarray | Mapping[Any, np.ndarray], *,
                        num_permutations: int = 999, seed: int = 0,
                        workers: int = 1) -> dict[str, dict[str, Any]]:
  """:func:`partial_mantel` of every ``x`` in ``xs`` with every ``y`` in
  ``ys`` given ``z``: ``{x_name: {y_name: result}}``, the same numbers as
  one call per pair (the same permutations), from one pass of permutations
  shared by all of them (:class:`mantel_batch.CarryGatherNulls` with every
  ``x`` as a carry and every ``y`` and ``z`` as metrics).

  ``z`` is one matrix for every ``y``, or ``y_name -> matrix`` (each ``y``
  given its own ``z``; the same matrix object for several ``y`` is ranked
  once). A ``y`` that is constant over the pairs gets NaN results, as in
  :func:`partial_mantel`. ``workers`` threads share the permutations (the
  numbers do not depend on it).
  """
  num_permutations = _check_num_permutations(num_permutations)
  names_x, names_y = list(xs), list(ys)
  z_for = dict(z) if isinstance(z, Mapping) else {n: z for n in names_y}
  missing = [n for n in names_y if n not in z_for]
  if missing:
    raise ValueError(f"no z for the ys {missing}")
  # The distinct z matrices (by identity) and each y's among them.
  distinct_z = ([z] if not isinstance(z, Mapping) else
                list({id(z_for[n]): z_for[n] for n in names_y}.values()))
  position = {id(m): t for t, m in enumerate(distinct_z)}
  z_of = [position[id(z_for[n])] for n in names_y]
  z_labels = (["z"] if len(distinct_z) == 1 else
              [f"z {t}" for t in range(len(distinct_z))])
  # Keys as in the error messages: the given names when they are distinct.
  labels = {("x", n): str(n) for n in names_x}
  labels.update({("y", n): str(n) for n in names_y})
  if (len(set(labels.values())) < len(labels)
      or set(z_labels) & set(labels.values())):
    labels = {key: f"{key[0]} {key[1]}" for key in labels}
  checked = _checked({**{labels[("x", n)]: xs[n] for n in names_x},
                      **{labels[("y", n)]: ys[n] for n in names_y},
                      **dict(zip(z_labels, distinct_z))})
  xm = {n: checked[labels[("x", n)]] for n in names_x}
  ym = {n: checked[labels[("y", n)]] for n in names_y}
  k = checked[z_labels[0]].shape[0]
  i, j = pairwise.pairs_index(k)
  zx = np.stack([_standardised_ranks(xm[n][i, j]) for n in names_x])
  zy = np.stack([_standardised_ranks(ym[n][i, j]) for n in names_y])
  zz = np.stack([_standardised_ranks(checked[label][i, j])
                 for label in z_labels])
  out: dict[str, dict[str, Any]] = {}
  for a, nx_ in enumerate(names_x):
    out[nx_] = {}
    for b, ny in enumerate(names_y):
      rho, partial = _from_ranks(zx[a], zy[b], zz[z_of[b]])
      out[nx_][ny] = {
          "rho": rho, "partial_rho": partial, "p_mantel": math.nan,
          "null_sd": math.nan, "num_pairs": int(i.size), "num_cells": k,
          "num_permutations": num_permutations, "seed": int(seed)}
  if not num_permutations:
    return out
  null = _permutation_nulls(k, zx, zy, zz,
                            _permutations(num_permutations, k, seed), workers,
                            z_of)
  for a, nx_ in enumerate(names_x):
    for b, ny in enumerate(names_y):
      res = out[nx_][ny]
      if not math.isfinite(res["partial_rho"]):
        continue
      res["p_mantel"] = pairwise.two_sided_permutation_p(
          null[:, a, b], res["partial_rho"])
      finite = null[:, a, b][np.isfinite(null[:, a, b])]
      res["null_sd"] = (float(np.std(finite)) if finite.size >= 2
                        else math.nan)
  return out


def _permutations(num: int, k: int, seed: int) -> np.ndarray:
  """``int64[num, k]``: the cell permutations :func:`partial_mantel` uses."""
  return resampling.cell_permutations(
      num, k, resampling.rng(seed, streams.MANTEL))


# ---------------------------------------------------------------------------
# Multiplicity.
# ---------------------------------------------------------------------------


def holm(pvalues) -> np.ndarray:
  """Holm-Bonferroni adjusted p-values, in the input's order and shape.

  With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``,
  the adjusted value of ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1)
  p_(j))``: monotone in ``p`` and capped at 1. Tied p-values get the same
  adjusted value (the running maximum carries the first one's over). NaN
  entries (tests that could not be run) stay NaN and do not count in ``m``.
  Reject at level ``alpha`` where the adjusted value is ``<= alpha``.

  Args:
    pvalues: array-like of p-values in ``[0, 1]`` or NaN.

  Raises:
    ValueError: for a value outside ``[0, 1]`` (or infinite).
  """
  p = np.asarray(pvalues, dtype=np.float64)
  flat = p.ravel()
  known = ~np.isnan(flat)
  if np.any((flat[known] < 0.0) | (flat[known] > 1.0)):
    raise ValueError("p-values must lie in [0, 1] (or be NaN)")
  out = np.full(flat.shape, np.nan)
  idx = np.flatnonzero(known)
  order = idx[np.argsort(flat[idx], kind="stable")]
  m = order.size
  scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
  out[order] = np.maximum.accumulate(scaled)
  return out.reshape(p.shape)
