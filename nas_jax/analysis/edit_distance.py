"""Graph edit distances between ENAS cells, on a sampled subset of pairs.

The two networkx edit distances of the hidden-state analyses (claim 3 of
DESIGN.md; the vectorised metrics are in :mod:`nas_jax.analysis.graph_metrics`):

* :func:`topological_ged`, the authors' metric (Adam & Lorraine 2019), kept
  for fidelity: the *first* value of networkx's
  ``optimize_graph_edit_distance``, an upper bound that ignores activations.
* :func:`labelled_ged`: the same search, but activations must match.

==========================  ===========  ======  =========================
metric                      kind         dtype   range (identical cells)
==========================  ===========  ======  =========================
topological_ged             distance     float   >= 0 (0); NaN on timeout
labelled_ged                distance     float   >= 0 (0); NaN on timeout
==========================  ===========  ======  =========================

Both compare the full graphs of ``Architecture.to_networkx()`` (nodes ``x``,
``h_prev``, ``0 .. N-1``, ``avg``, ``out``). Unlike the vectorised metrics
they run networkx per pair (milliseconds to seconds each), so they are meant
for a random subset of pairs (:func:`sample_pairs`) and return ``float64[M]``,
one value per pair.

Cells are given as for :mod:`nas_jax.analysis.graph_metrics`: an integer array
``[K, 2N-1]`` of tokens or a sequence of ``search_space.Architecture``, both
validated by ``graph_metrics.as_token_array``. All of this runs on the host,
never in jit.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable

import networkx as nx
import numpy as np

from nas_jax import search_space
from nas_jax.analysis import graph_metrics

# networkx added a `timeout` to its edit-distance functions in 2.6, and only to
# `optimize_edit_paths`/`graph_edit_distance`, not (as of 3.6) to
# `optimize_graph_edit_distance`. That generator is exactly
# `optimize_edit_paths(..., strictly_decreasing=True)` with the paths dropped,
# so falling back to it yields the same sequence of costs, with a time limit.
_GED_HAS_TIMEOUT = "timeout" in inspect.signature(
    nx.optimize_graph_edit_distance).parameters
_PATHS_HAS_TIMEOUT = "timeout" in inspect.signature(
    nx.optimize_edit_paths).parameters


def sample_pairs(num_cells: int, max_pairs: int, seed: int) -> np.ndarray:
  """Pairs ``(i, j)``, ``i < j``, of cells to compare: ``int64[M, 2]``.

  All ``K (K - 1) / 2`` pairs in lexicographic order when they number at most
  ``max_pairs``; otherwise ``max_pairs`` of them drawn uniformly without
  replacement (deterministic given ``seed``), also in lexicographic order.
  Memory is ``O(K + max_pairs)``, never ``O(K^2)``.
  """
  for name, value in (("num_cells", num_cells), ("max_pairs", max_pairs)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
        or value < 0:
      raise ValueError(f"{name} must be an int >= 0, got {value!r}")
  num_cells, max_pairs = int(num_cells), int(max_pairs)
  total = num_cells * (num_cells - 1) // 2
  if total <= max_pairs:
    return np.stack(np.triu_indices(num_cells, k=1), axis=1).astype(np.int64)
  rng = np.random.default_rng(seed)
  flat = np.sort(rng.choice(total, size=max_pairs, replace=False))
  # Row i of the upper triangle starts at flat index i (2K - i - 1) / 2.
  rows = np.arange(num_cells, dtype=np.int64)
  starts = rows * (2 * num_cells - rows - 1) // 2
  i = np.searchsorted(starts, flat, side="right") - 1
  j = flat - starts[i] + i + 1
  return np.stack([i, j], axis=1).astype(np.int64)


def _labelled_graph(arch: search_space.Architecture) -> nx.DiGraph:
  """``arch.to_networkx()`` with a ``label`` on every node for ``node_match``.

  The label is the activation name of a cell node and the node's own name for
  ``x``, ``h_prev``, ``avg`` and ``out`` (names and activation names never
  collide), so ``x`` can only match ``x``, and so on.
  """
  g = arch.to_networkx()
  for node, data in g.nodes(data=True):
    data["label"] = data["activation"] if data["activation"] is not None \
        else str(node)
  return g


def _same_label(a: dict, b: dict) -> bool:
  return a["label"] == b["label"]


def _edit_distance(g1: nx.DiGraph, g2: nx.DiGraph,
                   node_match: Callable[[dict, dict], bool] | None,
                   timeout: float | None, first_only: bool) -> float:
  """First (or best within ``timeout``) cost of networkx's GED search."""
  if _GED_HAS_TIMEOUT:
    costs = nx.optimize_graph_edit_distance(
        g1, g2, node_match=node_match, timeout=timeout)
  elif _PATHS_HAS_TIMEOUT:
    costs = (cost for _, _, cost in nx.optimize_edit_paths(
        g1, g2, node_match=node_match, strictly_decreasing=True,
        timeout=timeout))
  else:  # networkx < 2.6: no limit is possible.
    if timeout is not None:
      warnings.warn("this networkx has no edit-distance timeout; ignoring it")
    costs = nx.optimize_graph_edit_distance(g1, g2, node_match=node_match)
  best = math.nan
  try:
    for cost in costs:
      best = float(cost)
      if first_only:
        break
  finally:
    costs.close()
  return best


def _pairwise_ged(cells, pairs, timeout, first_only, labelled) -> np.ndarray:
  tokens = graph_metrics.as_token_array(cells)
  num_cells = tokens.shape[0]
  if pairs is None:
    pairs = np.stack(np.triu_indices(num_cells, k=1), axis=1)
  pairs = np.asarray(pairs)
  if pairs.size == 0:
    return np.zeros(0, dtype=np.float64)
  if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(
      pairs.dtype, np.integer):
    raise ValueError(f"pairs must be int[M, 2], got {pairs.dtype}{pairs.shape}")
  if pairs.min() < 0 or pairs.max() >= num_cells:
    raise ValueError(f"pair indices must lie in 0..{num_cells - 1}")
  if timeout is not None and not timeout > 0:
    raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
  make = _labelled_graph if labelled else search_space.Architecture.to_networkx
  graphs = {}  # Only the cells that occur in some pair.
  for k in np.unique(pairs):
    graphs[int(k)] = make(search_space.Architecture.from_tokens(tokens[k]))
  node_match = _same_label if labelled else None
  return np.array([
      _edit_distance(graphs[int(i)], graphs[int(j)], node_match, timeout,
                     first_only) for i, j in pairs
  ], dtype=np.float64)


def topological_ged(cells, pairs=None, timeout: float | None = 3.0,
                    first_only: bool = True) -> np.ndarray:
  """The authors' graph edit distance, ignoring activations: ``float64[M]``.

  For each pair, runs networkx ``optimize_graph_edit_distance`` on the two
  full cell graphs with unit costs and no ``node_match`` and, as the authors
  did, keeps the **first** value it yields. That value is an *upper bound* on
  the true edit distance (the first complete edit path the depth-first search
  finds), and since labels are ignored two cells that differ only in
  activations score 0. Prefer :func:`labelled_ged` or
  :func:`graph_metrics.aligned_edit_distance`; this one is for fidelity.

  Args:
    cells: ``K`` cells (tokens ``[K, 2N-1]`` or ``Architecture`` objects).
    pairs: ``int[M, 2]`` cell indices to compare; ``None`` for all ``i < j``
      (expensive beyond a few hundred pairs: use :func:`sample_pairs`).
    timeout: seconds allowed per pair (``None``: no limit). With
      ``first_only`` a pair whose first value is not found in time is NaN
      (networkx takes about 5 ms a pair for ``N = 12``).
    first_only: ``False`` continues the search until it completes or the
      timeout hits and returns the smallest value found: the exact distance
      if the search finished, else a tighter upper bound than the first.

  Returns:
    ``float64[M]``: distances in the order of ``pairs``.
  """
  return _pairwise_ged(cells, pairs, timeout, first_only, labelled=False)


def labelled_ged(cells, pairs=None, timeout: float | None = 3.0,
                 first_only: bool = True) -> np.ndarray:
  """Graph edit distance that respects activations: ``float64[M]``.

  The same search as :func:`topological_ged` (first value by default), but
  two nodes match only when their labels agree: cell nodes by activation
  name, ``x``/``h_prev``/``avg``/``out`` only with the node of the same
  name. With networkx's default costs a node substitution costs
  ``0`` if the nodes match and ``1`` otherwise, and every edge or node
  insertion or deletion costs 1; so two cells that differ in one activation
  are at exact distance 1, but the first value can be larger (networkx 3.6
  gives 7 for two 3-node chains that differ in the middle activation).

  Arguments and return value as in :func:`topological_ged`.
  """
  return _pairwise_ged(cells, pairs, timeout, first_only, labelled=True)
