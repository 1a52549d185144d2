"""Similarity and distance between ENAS cells, for the hidden-state analyses.

Claim 3 of DESIGN.md says the controller's LSTM state does not encode cell
structure: pairwise distances between hidden states do not correlate with
pairwise *graph* similarity of the cells they produced. That test is only as
good as the graph metric, so this module and
:mod:`nas_jax.analysis.edit_distance` offer two families:

* The authors' metrics (Adam & Lorraine 2019), kept for fidelity:
  :func:`common_connections`, :func:`common_activations` (their
  ``count_common_attributes``) and :func:`edit_distance.topological_ged` (the
  *first* value of networkx's ``optimize_graph_edit_distance``, an upper
  bound that ignores activations).
* Stronger ones: :func:`common_activation_edges` (the authors' count
  without the edges into ``avg`` and ``out``, whose labels never differ),
  :func:`edit_distance.labelled_ged` (the same search, but
  activations must match), :func:`aligned_edit_distance` (exact edit distance
  when node identities are fixed, as weight sharing fixes them),
  :func:`jaccard_edges` (Jaccard similarity of activation-labelled edge sets)
  and :func:`wl_kernel` (Weisfeiler-Lehman subtree kernel).

This module holds the vectorised metrics, the per-cell properties and the
input handling (:func:`as_token_array`); the two networkx graph edit
distances, ``topological_ged`` and ``labelled_ged``, are in
:mod:`nas_jax.analysis.edit_distance`.

Which way each metric points (``K`` cells of ``N`` nodes):

==========================  ===========  ======  =========================
metric                      kind         dtype   range (identical cells)
==========================  ===========  ======  =========================
common_connections          similarity   int32   4 .. |E| (|E|, diagonal)
common_activations          similarity   int32   1 .. N+2+#loose (diagonal)
common_activation_edges     similarity   int32   0 .. N+1 (N+1)
jaccard_edges               similarity   float   (0, 1] (1)
wl_kernel                   similarity   float   (0, 1] (1)
aligned_edit_distance       distance     int32   0 .. 2N-1 (0)
==========================  ===========  ======  =========================

Every cell graph is the full graph of ``Architecture.to_networkx()``: nodes
``x``, ``h_prev``, ``0 .. N-1``, ``avg``, ``out``; edges ``x -> 0``,
``h_prev -> 0``, ``prev_l -> l``, each loose end ``-> avg`` and
``avg -> out``. Edges are fixed by the parents (the loose ends are the nodes
no parent names), so every metric of this module is computed from the
``int[K, 2N-1]`` token arrays directly: each cell becomes an indicator or
count vector over a fixed universe of edges, labels or decisions, and one
matrix product gives all ``K^2`` pairs. For ``K = 1000, N = 12`` the five
vectorised metrics together take about half a second; the graph edit
distances of :mod:`nas_jax.analysis.edit_distance` run networkx per pair and
are meant for a sampled subset of pairs (:func:`edit_distance.sample_pairs`).

Functions accept either an integer array ``[K, 2N-1]`` of tokens or a sequence
of ``search_space.Architecture``; both are validated with
``search_space.validate_tokens``. All of this runs on the host, never in jit.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from nas_jax import search_space

_A = search_space.NUM_ACTIVATIONS

# ---------------------------------------------------------------------------
# Input handling and shared pieces.
# ---------------------------------------------------------------------------


def as_token_array(cells) -> np.ndarray:
  """Cells as validated tokens ``int32[K, 2N-1]``.

  Args:
    cells: an integer array-like ``[K, 2N-1]`` (NumPy, JAX, nested lists) or a
      sequence of ``search_space.Architecture`` with the same ``N``.

  Raises:
    ValueError: for a single cell, mixed node counts, a wrong rank or an
      invalid token (the message names the row and position).
  """
  if isinstance(cells, search_space.Architecture):
    raise ValueError("expected a sequence of cells, got one Architecture; "
                     "wrap it in a list")
  if isinstance(cells, (list, tuple)) and any(
      isinstance(c, search_space.Architecture) for c in cells):
    if not all(isinstance(c, search_space.Architecture) for c in cells):
      raise ValueError("cells mix Architecture objects and other values")
    sizes = sorted({c.num_nodes for c in cells})
    if len(sizes) > 1:
      raise ValueError(
          f"all cells must have the same number of nodes, got {sizes}")
    return search_space.validate_tokens(np.stack([c.tokens() for c in cells]))
  arr = np.asarray(cells)
  if arr.ndim != 2:
    raise ValueError(
        f"expected cells as int[K, 2N-1] (K >= 0 cells), got shape {arr.shape}")
  return search_space.validate_tokens(arr)


def _split(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(acts int[K, N], prevs int[K, N-1], loose bool[K, N])``."""
  num_nodes = search_space.num_nodes_from_tokens(tokens.shape[1])
  acts = tokens[:, 0::2].astype(np.int64)
  prevs = tokens[:, 1::2].astype(np.int64)
  # A node is a loose end when no node names it as its parent.
  read = np.any(prevs[:, :, None] == np.arange(num_nodes), axis=1)
  return acts, prevs, ~read


def _indicators(cols: np.ndarray, width: int) -> np.ndarray:
  """``float64[K, width]`` with ones at ``cols[k]`` (entries ``< 0`` skipped).

  Float rather than int so the Gram matrix goes through BLAS; its entries are
  small integers, exact in float64.
  """
  out = np.zeros((cols.shape[0], width), dtype=np.float64)
  rows = np.broadcast_to(np.arange(cols.shape[0])[:, None], cols.shape)
  present = cols >= 0
  out[rows[present], cols[present]] = 1.0
  return out


def _count_gram(features: np.ndarray) -> np.ndarray:
  """``int32[K, K]``: pairwise overlaps ``features @ features.T`` (0/1 rows)."""
  return np.rint(features @ features.T).astype(np.int32)


def _edge_columns(tokens: np.ndarray, labelled: bool) -> tuple[np.ndarray, int]:
  """Each cell's full-graph edge set as column ids in a fixed edge universe.

  The universe lists every edge any ``N``-node cell can have, so two cells
  share an edge exactly when they share its column id:

  * ``x -> 0`` and ``h_prev -> 0``;
  * ``j -> l`` for ``0 <= j < l < N``, at slot ``l (l - 1) / 2 + j``;
  * ``l -> avg`` for every node ``l`` (present when ``l`` is a loose end);
  * ``avg -> out``.

  With ``labelled``, each edge also carries the activation of its cell-node
  end (the child; for ``l -> avg`` the loose end ``l``), so every edge into
  or out of a cell node is split into ``len(ACTIVATIONS)`` columns;
  ``avg -> out`` has no activation and stays one column.

  Returns:
    ``(cols int[K, 2N+2], width)``: ``cols[k]`` holds cell ``k``'s edge ids,
    ``-1`` for the ``l -> avg`` edges of nodes that are not loose ends.
  """
  acts, prevs, loose = _split(tokens)
  num_cells, num_nodes = acts.shape
  num_parent_slots = num_nodes * (num_nodes - 1) // 2
  child = np.arange(1, num_nodes)
  parent_slot = child * (child - 1) // 2 + prevs  # [K, N-1]
  nodes = np.arange(num_nodes)
  if labelled:
    x_col = acts[:, 0]
    h_col = _A + acts[:, 0]
    parent_cols = 2 * _A + _A * parent_slot + acts[:, 1:]
    loose_base = 2 * _A + _A * num_parent_slots
    loose_cols = loose_base + _A * nodes + acts
    out_id = loose_base + _A * num_nodes
  else:
    x_col = np.zeros(num_cells, dtype=np.int64)
    h_col = np.ones(num_cells, dtype=np.int64)
    parent_cols = 2 + parent_slot
    loose_base = 2 + num_parent_slots
    loose_cols = np.broadcast_to(loose_base + nodes, (num_cells, num_nodes))
    out_id = loose_base + num_nodes
  loose_cols = np.where(loose, loose_cols, -1)
  out_col = np.full(num_cells, out_id, dtype=np.int64)
  cols = np.concatenate([
      x_col[:, None], h_col[:, None], parent_cols, loose_cols, out_col[:, None]
  ], axis=1)
  return cols, out_id + 1


# ---------------------------------------------------------------------------
# The authors' metrics.
# ---------------------------------------------------------------------------


def common_connections(cells) -> np.ndarray:
  """Number of full-graph edges two cells share: ``int32[K, K]``.

  Edges are compared as ``(u, v)`` pairs of node names of
  ``Architecture.to_networkx()``, activations ignored. Every pair shares
  ``x -> 0``, ``h_prev -> 0``, ``N-1 -> avg`` and ``avg -> out``, so the
  minimum is 4; the diagonal is each cell's edge count ``N + 2 + #loose``.
  Equals the sum over nodes ``l >= 1`` of ``[prev_l equal]`` plus the loose
  ends the two cells have in common, plus 3.
  """
  cols, width = _edge_columns(as_token_array(cells), labelled=False)
  return _count_gram(_indicators(cols, width))


def common_activations(cells) -> np.ndarray:
  """The authors' ``count_common_attributes``: ``int32[K, K]``.

  Over the full cell graph, the edges ``u -> v`` present in both cells whose
  child ``v`` carries the same label in both, where ``avg`` and ``out``
  count too (their label is the same in every cell). So it is
  :func:`common_activation_edges` plus the loose ends the two cells share
  (edges ``l -> avg``) plus 1 (``avg -> out``); the diagonal is
  ``N + 2 + #loose``. Its extra terms follow the cells' loose ends, which
  the parents fix: it rank-correlates only ~0.76 with
  :func:`common_activation_edges` on uniform cells.
  """
  tokens = as_token_array(cells)
  _, _, loose = _split(tokens)
  shared_loose = _count_gram(loose.astype(np.float64))
  return (common_activation_edges(tokens) + shared_loose + 1).astype(np.int32)


def common_activation_edges(cells) -> np.ndarray:
  """Shared edges into cell nodes whose child has the same activation:
  ``int32[K, K]``.

  Over the full cell graph, count the edges ``u -> v`` present in both cells
  where ``v`` is a cell node with the same activation in both. The edges
  into cell nodes are ``x -> 0``, ``h_prev -> 0`` and ``prev_l -> l``, so
  this is ``2 [act_0 equal] + sum_{l >= 1} [prev_l equal and act_l
  equal]``; the diagonal is ``N + 1``. (Before the authors' definition was
  checked, this was called ``common_activations``.)
  """
  tokens = as_token_array(cells)
  num_nodes = search_space.num_nodes_from_tokens(tokens.shape[1])
  cols, width = _edge_columns(tokens, labelled=True)
  # The first 2 + (N - 1) columns are the edges into cell nodes.
  return _count_gram(_indicators(cols[:, :num_nodes + 1], width))


# ---------------------------------------------------------------------------
# Stronger metrics.
# ---------------------------------------------------------------------------


def aligned_edit_distance(cells) -> np.ndarray:
  """Edit distance with node identities fixed: ``int32[K, K]``.

  Weight sharing gives every node an identity: node ``l`` of any cell uses
  the weights of slot ``l`` (and of the edge ``(prev_l, l)``), so "the same
  node" in two cells is node ``l`` in both, not whatever a graph matching
  would pair it with. Under that fixed correspondence a cell is its ``2N-1``
  independent decisions (each node has exactly one activation and, for
  ``l >= 1``, exactly one parent), and the edit operations are "change one
  activation" and "re-point one node's parent" at cost 1 each. Every
  differing decision must be changed at least once and changing each once
  suffices (the decisions do not constrain each other: any parent ``< l`` is
  valid whatever the others are), so the exact edit distance is the number of
  differing decisions, i.e. the Hamming distance of the token vectors.

  The loose-end edges (``l -> avg``) are not edited separately: they follow
  from the parents. For comparison, unit-cost GED under the same fixed node
  map would count a re-pointed parent twice (delete + insert an edge) plus
  every loose end that changes status; it is a metric too but double-weights
  structure.

  Returns:
    ``int32[K, K]``: symmetric, zero diagonal, at most ``2N - 1``.
  """
  tokens = as_token_array(cells)
  sizes = search_space.decision_sizes(
      search_space.num_nodes_from_tokens(tokens.shape[1])).astype(np.int64)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  # One-hot per decision; the Gram matrix counts the decisions that agree.
  agree = _count_gram(_indicators(tokens + offsets, int(sizes.sum())))
  return (tokens.shape[1] - agree).astype(np.int32)


def jaccard_edges(cells) -> np.ndarray:
  """Jaccard similarity of activation-labelled edge sets: ``float64[K, K]``.

  An edge is ``(parent, child, activation)`` over the full cell graph:
  ``(x, 0, act_0)``, ``(h_prev, 0, act_0)``, ``(prev_l, l, act_l)``,
  ``(l, avg, act_l)`` for each loose end ``l`` (labelled with the loose end's
  activation, since ``avg`` has none) and ``(avg, out)``. Similarity is
  ``|A & B| / |A | B|``; ``(avg, out)`` is always shared, so it is > 0, and it
  is 1 exactly for identical cells.
  """
  cols, width = _edge_columns(as_token_array(cells), labelled=True)
  features = _indicators(cols, width)
  inter = features @ features.T
  sizes = np.diag(inter)
  return inter / (sizes[:, None] + sizes[None, :] - inter)


def _wl_features(tokens: np.ndarray, iterations: int) -> sparse.csr_matrix:
  """Weisfeiler-Lehman label counts per cell: ``csr float64[K, num_labels]``.

  Nodes are indexed ``0 .. N-1`` (cell nodes), ``N`` (x), ``N+1`` (h_prev),
  ``N+2`` (avg), ``N+3`` (out). Each node's predecessors sit in a padded
  ``[K, N+4, W]`` table (``-1`` = none) so every refinement step is a gather,
  a sort along the last axis and one ``np.unique`` over all ``K (N+4)`` node
  signatures, which hashes them to compact ids shared by all cells.
  """
  acts, prevs, loose = _split(tokens)
  num_cells, num_nodes = acts.shape
  x, h_prev, avg, out = range(num_nodes, num_nodes + 4)
  num_graph_nodes = num_nodes + 4
  width = max(num_nodes, 2)  # Most predecessors: avg (<= N) or node 0 (2).
  preds = np.full((num_cells, num_graph_nodes, width), -1, dtype=np.int64)
  preds[:, 0, 0], preds[:, 0, 1] = x, h_prev
  preds[:, 1:num_nodes, 0] = prevs
  preds[:, avg, :num_nodes] = np.where(loose, np.arange(num_nodes), -1)
  preds[:, out, 0] = avg
  has_pred = preds >= 0
  gather = np.where(has_pred, preds, 0).reshape(
      num_cells, num_graph_nodes * width)

  # Iteration 0: activation index, or a fixed id for x, h_prev, avg, out.
  labels = np.empty((num_cells, num_graph_nodes), dtype=np.int64)
  labels[:, :num_nodes] = acts
  labels[:, num_nodes:] = _A + np.arange(4)
  all_labels = [labels]
  next_id = _A + 4
  for _ in range(iterations):
    pred_labels = np.take_along_axis(
        labels, gather, axis=1).reshape(preds.shape)
    # Sorting makes the signature a multiset; -1 padding sorts first.
    pred_labels = np.sort(np.where(has_pred, pred_labels, -1), axis=-1)
    signature = np.concatenate([labels[..., None], pred_labels], axis=-1)
    uniq, inverse = np.unique(
        signature.reshape(-1, width + 1), axis=0, return_inverse=True)
    # Offsetting keeps each iteration's ids disjoint from earlier ones.
    labels = inverse.reshape(num_cells, num_graph_nodes) + next_id
    next_id += uniq.shape[0]
    all_labels.append(labels)
  ids = np.concatenate(all_labels, axis=1)
  rows = np.repeat(np.arange(num_cells), ids.shape[1])
  # Duplicate (row, id) entries are summed: the features are label counts.
  return sparse.csr_matrix(
      (np.ones(ids.size), (rows, ids.ravel())), shape=(num_cells, next_id))


def wl_kernel(cells, iterations: int = 3) -> np.ndarray:
  """Normalised Weisfeiler-Lehman subtree kernel: ``float64[K, K]``.

  Labels start as the activation name of each cell node and the node's own
  name for ``x``, ``h_prev``, ``avg`` and ``out``. Each refinement replaces a
  node's label by the pair (its label, sorted multiset of its *predecessors'*
  labels), compressed to an integer id shared across all ``K`` cells. We use
  predecessors, not all neighbours, because the cell is a directed
  computation: after ``t`` steps a node's label describes the activations of
  the ``t`` nodes it reads through (its computation history), the label of
  ``avg`` describes the multiset of loose ends and ``out`` sees through
  ``avg``. A cell's feature vector counts every label of iterations
  ``0 .. iterations``; the kernel is the cosine of two feature vectors, so
  identical cells give exactly 1. ``x``, ``h_prev`` and ``out`` contribute
  labels every cell has, so the kernel is bounded away from 0.

  The ids are only names: a pair's value does not depend on the other cells
  in the batch.

  Args:
    cells: ``K`` cells.
    iterations: refinement steps ``h >= 0``; 0 compares activation counts.

  Returns:
    ``float64[K, K]``: symmetric, ones on the diagonal, values in ``(0, 1]``.
  """
  if isinstance(iterations, bool) or not isinstance(
      iterations, (int, np.integer)) or iterations < 0:
    raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
  features = _wl_features(as_token_array(cells), int(iterations))
  gram = (features @ features.T).toarray()
  norms = np.diag(gram)
  # sqrt of the product (not a product of sqrts) keeps identical cells at 1.0
  # exactly: the counts are integers, so sqrt(g * g) == g.
  return gram / np.sqrt(np.outer(norms, norms))


# ---------------------------------------------------------------------------
# Per-cell properties and the all-pairs bundle.
# ---------------------------------------------------------------------------


def cell_properties(cells) -> dict[str, np.ndarray]:
  """Structural summaries of each cell, each ``int32[K]``.

  Keys:
    ``depth``: the longest path, in edges, among the cell nodes: node 0 has
      depth 0, node ``l`` has ``depth[prev_l] + 1``, and the cell's depth is
      the maximum over its nodes (chain: ``N - 1``; star, every node reading
      node 0: 1; a 1-node cell: 0). The longest path of the full graph, from
      ``x`` to ``out``, has ``depth + 3`` edges.
    ``last_node_depth``: depth of node ``N - 1``, the next hidden state.
    ``num_loose_ends``: nodes averaged into the output.
    ``count_tanh``, ``count_relu``, ``count_identity``, ``count_sigmoid``:
      nodes with each activation.
    ``max_fan_out``: most children (cell nodes reading it) of any node.

  There is no mean fan-out: every node but 0 has exactly one parent, so it is
  ``(N - 1) / N`` for every cell.
  """
  tokens = as_token_array(cells)
  acts, prevs, loose = _split(tokens)
  num_cells, num_nodes = acts.shape
  rows = np.arange(num_cells)
  depth = np.zeros((num_cells, num_nodes), dtype=np.int32)
  for l in range(1, num_nodes):  # Parents come first: one pass suffices.
    depth[:, l] = depth[rows, prevs[:, l - 1]] + 1
  children = np.sum(prevs[:, :, None] == np.arange(num_nodes), axis=1)
  props = {
      "depth": depth.max(axis=1),
      "last_node_depth": depth[:, -1],
      "num_loose_ends": loose.sum(axis=1),
      "max_fan_out": children.max(axis=1),
  }
  for a, name in enumerate(search_space.ACTIVATIONS):
    props[f"count_{name}"] = np.sum(acts == a, axis=1)
  return {k: v.astype(np.int32) for k, v in props.items()}


SIMILARITIES = ("common_connections", "common_activations", "jaccard_edges",
                "wl_kernel")
DISTANCES = ("aligned_edit_distance", "topological_ged", "labelled_ged")


def pairwise_all(cells, wl_iterations: int = 3) -> dict[str, np.ndarray]:
  """All vectorised all-pairs metrics: name -> ``[K, K]`` matrix.

  ==========================  ===========
  key                         kind
  ==========================  ===========
  common_connections          similarity
  common_activations          similarity
  jaccard_edges               similarity
  wl_kernel                   similarity
  aligned_edit_distance       distance
  ==========================  ===========

  (``SIMILARITIES`` and ``DISTANCES`` list the kinds, the edit distances
  included.) The graph edit distances are not here: they cost milliseconds
  to seconds per pair, so call :func:`edit_distance.topological_ged` or
  :func:`edit_distance.labelled_ged` on :func:`edit_distance.sample_pairs`.
  """
  tokens = as_token_array(cells)
  return {
      "common_connections": common_connections(tokens),
      "common_activations": common_activations(tokens),
      "jaccard_edges": jaccard_edges(tokens),
      "wl_kernel": wl_kernel(tokens, iterations=wl_iterations),
      "aligned_edit_distance": aligned_edit_distance(tokens),
  }
