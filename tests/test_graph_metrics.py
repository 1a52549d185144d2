"""Tests for nas_jax.analysis.graph_metrics: cell similarities and distances.

Every vectorised metric is checked against a brute-force version written
independently here (networkx edge sets, Python loops over nodes and pairs),
plus hand-made pairs with known answers. The graph edit distances are tested
in test_edit_distance.py.
"""

import collections
import math

import jax
import networkx as nx
import numpy as np
import pytest

from conftest import random_tokens
from nas_jax import search_space as ss
from nas_jax.analysis import graph_metrics as gm

# pairwise_all's metrics, and every vectorised one.
VECTORISED = ("common_connections", "common_activations", "jaccard_edges",
              "wl_kernel", "aligned_edit_distance")
ALL_VECTORISED = VECTORISED + ("common_activation_edges",)


@pytest.fixture(scope="module")
def cells():
  """40 random 5-node cells plus duplicates of the first two (ties matter)."""
  tokens = random_tokens(np.random.default_rng(0), 5, 40)
  return np.concatenate([tokens, tokens[:2]])


@pytest.fixture(scope="module")
def archs(cells):
  return [ss.Architecture.from_tokens(t) for t in cells]


# ---------------------------------------------------------------------------
# Brute-force references.
# ---------------------------------------------------------------------------


def _labelled_edges(arch):
  """{(u, v, activation of the edge's cell-node end)} from networkx."""
  g = arch.to_networkx()
  edges = set()
  for u, v in g.edges:
    if v == "avg":
      label = g.nodes[u]["activation"]  # The loose end's activation.
    else:
      label = g.nodes[v]["activation"]  # The child's; None for avg -> out.
    edges.add((u, v, label))
  return edges


def _wl_counts(arch, iterations):
  """Counter of (iteration, label string) with WL on predecessors, unhashed."""
  g = arch.to_networkx()
  labels = {n: (d["activation"] or f"<{n}>") for n, d in g.nodes(data=True)}
  counts = collections.Counter((0, lab) for lab in labels.values())
  for t in range(1, iterations + 1):
    labels = {
        n: labels[n] + "(" + ",".join(
            sorted(labels[p] for p in g.predecessors(n))) + ")"
        for n in g.nodes
    }
    counts.update((t, lab) for lab in labels.values())
  return counts


def _cosine(c1, c2):
  dot = sum(v * c2[k] for k, v in c1.items())
  return dot / math.sqrt(sum(v * v for v in c1.values()) *
                         sum(v * v for v in c2.values()))


def _all_pairs(archs, fn):
  k = len(archs)
  return np.array([[fn(archs[i], archs[j]) for j in range(k)]
                   for i in range(k)])


# ---------------------------------------------------------------------------
# Vectorised metrics against brute force.
# ---------------------------------------------------------------------------


def test_common_connections_matches_networkx(cells, archs):
  """Shared (u, v) edges of the full networkx graphs, for every pair."""
  edges = [set(a.to_networkx().edges) for a in archs]
  expected = np.array([[len(e1 & e2) for e2 in edges] for e1 in edges])
  out = gm.common_connections(cells)
  assert out.dtype == np.int32 and out.shape == (42, 42)
  np.testing.assert_array_equal(out, expected)


def _shared_same_child(a, b, cell_nodes_only):
  """Shared full-graph edges whose child has the same label."""
  ga, gb = a.to_networkx(), b.to_networkx()
  return sum(1 for u, v in set(ga.edges) & set(gb.edges)
             if (isinstance(v, int) or not cell_nodes_only)
             and ga.nodes[v]["activation"] == gb.nodes[v]["activation"])


def test_common_activations_is_the_authors_count(cells, archs):
  """The authors' count_common_attributes: every shared edge whose child
  has the same label, avg and out included (DESIGN)."""
  expected = _all_pairs(
      archs, lambda a, b: _shared_same_child(a, b, cell_nodes_only=False))
  out = gm.common_activations(cells)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, expected)
  # = the edges into cell nodes + shared loose ends + 1 (avg -> out).
  loose = _all_pairs(
      archs, lambda a, b: len(set(a.loose_ends()) & set(b.loose_ends())))
  np.testing.assert_array_equal(
      out, gm.common_activation_edges(cells) + loose + 1)


def test_common_activation_edges_matches_loop(cells, archs):
  """Shared edges into cell nodes whose child has the same activation."""
  expected = _all_pairs(
      archs, lambda a, b: _shared_same_child(a, b, cell_nodes_only=True))
  out = gm.common_activation_edges(cells)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, expected)


def test_aligned_edit_distance_matches_loop(cells, archs):
  """Differing parents plus differing activations."""
  expected = _all_pairs(
      archs, lambda a, b: sum(x != y for x, y in zip(a.acts, b.acts)) + sum(
          x != y for x, y in zip(a.prevs, b.prevs)))
  out = gm.aligned_edit_distance(cells)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, expected)


def test_jaccard_edges_matches_sets(cells, archs):
  """|A & B| / |A | B| of labelled edge sets built from networkx."""
  edges = [_labelled_edges(a) for a in archs]
  expected = np.array([[len(e1 & e2) / len(e1 | e2) for e2 in edges]
                       for e1 in edges])
  np.testing.assert_allclose(gm.jaccard_edges(cells), expected, rtol=1e-12)


@pytest.mark.parametrize("iterations", [0, 1, 3])
def test_wl_kernel_matches_unhashed_wl(cells, archs, iterations):
  """Cosine of label counts, with labels kept as full strings (no hashing)."""
  counts = [_wl_counts(a, iterations) for a in archs]
  expected = np.array([[_cosine(c1, c2) for c2 in counts] for c1 in counts])
  np.testing.assert_allclose(
      gm.wl_kernel(cells, iterations=iterations), expected, rtol=1e-12)


def test_wl_kernel_independent_of_batch(cells):
  """A pair's kernel value does not depend on the other cells passed."""
  full = gm.wl_kernel(cells)
  pair = gm.wl_kernel(cells[[3, 17]])
  np.testing.assert_allclose(pair[0, 1], full[3, 17], rtol=1e-12)


def test_wl_kernel_rejects_bad_iterations(cells):
  with pytest.raises(ValueError, match="iterations"):
    gm.wl_kernel(cells, iterations=-1)


# ---------------------------------------------------------------------------
# Symmetry, diagonals, identical cells.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VECTORISED)
def test_symmetric(cells, name):
  out = getattr(gm, name)(cells)
  np.testing.assert_array_equal(out, out.T)


def test_diagonals(cells, archs):
  """Maximal similarity / zero distance of every cell with itself."""
  n = 5
  num_edges = np.array([a.to_networkx().number_of_edges() for a in archs])
  np.testing.assert_array_equal(
      np.diag(gm.common_connections(cells)), num_edges)
  np.testing.assert_array_equal(np.diag(gm.common_activation_edges(cells)),
                                n + 1)
  num_loose = np.array([len(a.loose_ends()) for a in archs])
  np.testing.assert_array_equal(np.diag(gm.common_activations(cells)),
                                n + 2 + num_loose)
  np.testing.assert_array_equal(np.diag(gm.aligned_edit_distance(cells)), 0)
  np.testing.assert_array_equal(np.diag(gm.jaccard_edges(cells)), 1.0)
  np.testing.assert_array_equal(np.diag(gm.wl_kernel(cells)), 1.0)


def test_identical_cells_off_diagonal(cells):
  """Rows 40, 41 duplicate rows 0, 1: same values as the diagonal."""
  for name in ALL_VECTORISED:
    out = getattr(gm, name)(cells)
    assert out[0, 40] == out[0, 0], name
    assert out[1, 41] == out[1, 1], name


def test_similarity_ranges(cells):
  """Jaccard and WL lie in (0, 1]; only identical cells reach 1."""
  identical = gm.aligned_edit_distance(cells) == 0
  for name in ("jaccard_edges", "wl_kernel"):
    out = getattr(gm, name)(cells)
    assert np.all(out > 0) and np.all(out <= 1), name
    np.testing.assert_array_equal(out == 1.0, identical)


# ---------------------------------------------------------------------------
# Hand-made pairs with known answers.
# ---------------------------------------------------------------------------


def test_enas_cell_edge_count():
  """ENAS cell: 2 input edges, 11 parent edges, 6 loose ends, avg -> out."""
  cc = gm.common_connections([ss.ENAS_PTB_CELL, ss.ENAS_PTB_CELL])
  np.testing.assert_array_equal(cc, 20)


def test_chain_vs_star():
  """chain(4) prevs (0,1,2), star prevs (0,0,0): they share x->0, h_prev->0,
  avg->out, 0->1 and 3->avg (loose ends {3} vs {1,2,3})."""
  star = ss.Architecture(acts=(0,) * 4, prevs=(0, 0, 0))
  cells = [ss.chain(4), star]
  assert gm.common_connections(cells)[0, 1] == 5
  # Edges into cell nodes shared: x->0, h_prev->0, 0->1 (all tanh); the
  # authors' count adds 3->avg and avg->out.
  assert gm.common_activation_edges(cells)[0, 1] == 3
  assert gm.common_activations(cells)[0, 1] == 5
  assert gm.aligned_edit_distance(cells)[0, 1] == 2
  # Labelled edges: chain has 7, star 9; activations all equal, so 5 shared.
  assert gm.jaccard_edges(cells)[0, 1] == pytest.approx(5 / 11)


@pytest.mark.parametrize("node, loose", [(1, False), (3, True), (0, False)])
def test_one_activation_change(node, loose):
  """One differing activation: same edges, one fewer common activation,
  aligned distance 1; the labelled edges touching that node differ (one
  parent edge, plus the avg edge for a loose end; node 0 has two input
  edges)."""
  a = ss.chain(4)
  acts = list(a.acts)
  acts[node] = 2
  b = ss.Architecture(acts=tuple(acts), prevs=a.prevs)
  assert (node in b.loose_ends()) == loose
  cells = [a, b]
  assert gm.common_connections(cells)[0, 1] == 7  # All of chain(4)'s edges.
  # 5 edges into cell nodes; the changed node's input edges no longer count.
  assert gm.common_activation_edges(cells)[0, 1] == 5 - (
      2 if node == 0 else 1)
  # The authors' count adds the shared loose end 3 and avg -> out.
  assert gm.common_activations(cells)[0, 1] == 7 - (2 if node == 0 else 1)
  assert gm.aligned_edit_distance(cells)[0, 1] == 1
  changed = 2 if (loose or node == 0) else 1
  assert gm.jaccard_edges(cells)[0, 1] == pytest.approx(
      (7 - changed) / (7 + changed))
  assert gm.wl_kernel(cells)[0, 1] < 1


def test_one_parent_change():
  """chain(4) with node 3 reading node 1: loose ends become {2, 3}."""
  a = ss.chain(4)
  b = ss.Architecture(acts=a.acts, prevs=(0, 1, 1))
  cells = [a, b]
  # x->0, h_prev->0, avg->out, 0->1, 1->2, 3->avg.
  assert gm.common_connections(cells)[0, 1] == 6
  assert gm.common_activation_edges(cells)[0, 1] == 4
  assert gm.common_activations(cells)[0, 1] == 6  # + 3->avg, avg->out.
  assert gm.aligned_edit_distance(cells)[0, 1] == 1
  # Labelled edges: 7 in a, 8 in b, 6 shared.
  assert gm.jaccard_edges(cells)[0, 1] == pytest.approx(6 / 9)
  assert gm.wl_kernel(cells)[0, 1] < 1


# ---------------------------------------------------------------------------
# cell_properties.
# ---------------------------------------------------------------------------


def test_properties_match_networkx(cells, archs):
  props = gm.cell_properties(cells)
  for k, a in enumerate(archs):
    g = a.to_networkx()
    inner = g.subgraph(range(a.num_nodes))
    assert props["depth"][k] == nx.dag_longest_path_length(inner)
    assert props["last_node_depth"][k] == nx.shortest_path_length(
        inner, 0, a.num_nodes - 1)
    assert props["num_loose_ends"][k] == len(a.loose_ends())
    assert props["max_fan_out"][k] == max(d for _, d in inner.out_degree())
    for i, name in enumerate(ss.ACTIVATIONS):
      assert props[f"count_{name}"][k] == a.acts.count(i)
  # The full graph's longest path runs x -> ... -> avg -> out.
  assert nx.dag_longest_path_length(archs[0].to_networkx()) == \
      props["depth"][0] + 3


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_chain_properties(n):
  props = gm.cell_properties([ss.chain(n)])
  assert props["depth"][0] == n - 1
  assert props["last_node_depth"][0] == n - 1
  assert props["num_loose_ends"][0] == 1
  assert props["max_fan_out"][0] == (1 if n > 1 else 0)


def test_star_properties():
  star = ss.Architecture(acts=(1,) * 6, prevs=(0,) * 5)
  props = gm.cell_properties([star])
  assert props["depth"][0] == 1
  assert props["num_loose_ends"][0] == 5
  assert props["max_fan_out"][0] == 5
  assert props["count_relu"][0] == 6 and props["count_tanh"][0] == 0


def test_enas_cell_properties():
  """Depths 0,1,2,3,3,3,4,2,5,6,6,6; node 2 and node 8 have three children."""
  props = gm.cell_properties([ss.ENAS_PTB_CELL])
  assert {k: int(v[0]) for k, v in props.items()} == {
      "depth": 6, "last_node_depth": 6, "num_loose_ends": 6, "max_fan_out": 3,
      "count_tanh": 5, "count_relu": 7, "count_identity": 0,
      "count_sigmoid": 0}


# ---------------------------------------------------------------------------
# Inputs and the all-pairs bundle.
# ---------------------------------------------------------------------------


def test_inputs_equivalent(cells, archs):
  """Architectures, numpy, lists and JAX arrays give the same results."""
  expected = gm.pairwise_all(cells)
  for given in (archs, cells.tolist(), jax.numpy.asarray(cells)):
    out = gm.pairwise_all(given)
    for name in VECTORISED:
      np.testing.assert_array_equal(out[name], expected[name])


def test_sample_uniform_cells():
  """The JAX random-search sampler's output is accepted directly."""
  tokens = ss.sample_uniform(jax.random.key(0), 12, 20)
  out = gm.pairwise_all(tokens)
  assert all(v.shape == (20, 20) for v in out.values())


@pytest.mark.parametrize("given, match", [
    (ss.chain(3), "one Architecture"),
    ([ss.chain(3), ss.chain(4)], "same number of nodes"),
    ([ss.chain(3), [0, 0, 0, 1, 0]], "mix"),
    (np.zeros(5, int), "shape"),
    (np.array([[0, 0, 0, 2, 0]]), r"token 3"),
])
def test_invalid_inputs(given, match):
  with pytest.raises(ValueError, match=match):
    gm.common_connections(given)


def test_pairwise_all_keys_and_kinds(cells):
  out = gm.pairwise_all(cells, wl_iterations=2)
  assert set(out) == set(VECTORISED)
  assert set(out) <= set(gm.SIMILARITIES) | set(gm.DISTANCES)
  np.testing.assert_array_equal(out["wl_kernel"],
                                gm.wl_kernel(cells, iterations=2))
  np.testing.assert_array_equal(out["common_connections"],
                                gm.common_connections(cells))


def test_empty_batch():
  out = gm.pairwise_all(np.zeros((0, 5), dtype=np.int32))
  assert all(v.shape == (0, 0) for v in out.values())
