"""Tests for nas_jax.analysis.graph_metrics: cell similarities and distances.

Every vectorised metric is checked against a brute-force version written
independently here (networkx edge sets, Python loops over nodes and pairs),
plus hand-made pairs with known answers. Edit-distance tests use 3-node cells
so networkx's search stays fast.
"""

import collections
import itertools
import math

import jax
import networkx as nx
import numpy as np
import pytest

from nas_jax import search_space as ss
from nas_jax.analysis import graph_metrics as gm

VECTORISED = ("common_connections", "common_activations", "jaccard_edges",
              "wl_kernel", "aligned_edit_distance")


def _random_tokens(rng, num_nodes, num):
  """int[num, 2N-1] valid cells drawn with numpy (independent of the module)."""
  out = np.empty((num, 2 * num_nodes - 1), dtype=np.int64)
  out[:, 0::2] = rng.integers(0, 4, size=(num, num_nodes))
  for l in range(1, num_nodes):
    out[:, 2 * l - 1] = rng.integers(0, l, size=num)
  return out


@pytest.fixture(scope="module")
def cells():
  """40 random 5-node cells plus duplicates of the first two (ties matter)."""
  tokens = _random_tokens(np.random.default_rng(0), 5, 40)
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


def test_common_activations_matches_loop(cells, archs):
  """Shared full-graph edges whose child has the same activation (DESIGN)."""

  def shared_same_child(a, b):
    ga, gb = a.to_networkx(), b.to_networkx()
    return sum(1 for u, v in set(ga.edges) & set(gb.edges)
               if isinstance(v, int)
               and ga.nodes[v]["activation"] == gb.nodes[v]["activation"])

  expected = _all_pairs(archs, shared_same_child)
  out = gm.common_activations(cells)
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


@pytest.mark.parametrize("name", VECTORISED)
def test_symmetric(cells, name):
  out = getattr(gm, name)(cells)
  np.testing.assert_array_equal(out, out.T)


def test_diagonals(cells, archs):
  """Maximal similarity / zero distance of every cell with itself."""
  n = 5
  num_edges = np.array([a.to_networkx().number_of_edges() for a in archs])
  np.testing.assert_array_equal(
      np.diag(gm.common_connections(cells)), num_edges)
  np.testing.assert_array_equal(np.diag(gm.common_activations(cells)), n + 1)
  np.testing.assert_array_equal(np.diag(gm.aligned_edit_distance(cells)), 0)
  np.testing.assert_array_equal(np.diag(gm.jaccard_edges(cells)), 1.0)
  np.testing.assert_array_equal(np.diag(gm.wl_kernel(cells)), 1.0)


def test_identical_cells_off_diagonal(cells):
  """Rows 40, 41 duplicate rows 0, 1: same values as the diagonal."""
  for name in VECTORISED:
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
  # Edges into cell nodes shared: x->0, h_prev->0, 0->1 (all tanh).
  assert gm.common_activations(cells)[0, 1] == 3
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
  assert gm.common_activations(cells)[0, 1] == 5 - (2 if node == 0 else 1)
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
  assert gm.common_activations(cells)[0, 1] == 4
  assert gm.aligned_edit_distance(cells)[0, 1] == 1
  # Labelled edges: 7 in a, 8 in b, 6 shared.
  assert gm.jaccard_edges(cells)[0, 1] == pytest.approx(6 / 9)
  assert gm.wl_kernel(cells)[0, 1] < 1


# ---------------------------------------------------------------------------
# Graph edit distances (3-node cells).
# ---------------------------------------------------------------------------

CHAIN3 = ss.chain(3)
CHAIN3_RELU_MIDDLE = ss.Architecture(acts=(0, 1, 0), prevs=(0, 1))
STAR3 = ss.Architecture(acts=(0, 0, 0), prevs=(0, 0))


@pytest.mark.parametrize("fn", [gm.topological_ged, gm.labelled_ged])
def test_ged_identical_is_zero(fn):
  assert fn([CHAIN3, CHAIN3, STAR3, STAR3], pairs=[[0, 1], [2, 3]]).tolist() \
      == [0.0, 0.0]


def test_ged_one_activation_change():
  """Topological GED is blind to activations (0). Labelled: networkx's default
  node substitution cost is 1 for non-matching labels, so the exact distance
  is 1 (relabel the middle node); the first value is only an upper bound
  (networkx 3.6 yields 7 first, having paired the nodes differently)."""
  cells = [CHAIN3, CHAIN3_RELU_MIDDLE]
  assert gm.topological_ged(cells).tolist() == [0.0]
  first = gm.labelled_ged(cells)[0]
  exact = gm.labelled_ged(cells, timeout=None, first_only=False)[0]
  assert exact == 1.0
  assert first >= exact


def test_ged_one_parent_change():
  """Chain vs star: delete 1->2, insert 0->2 and 1->avg (exact: 3)."""
  cells = [CHAIN3, STAR3]
  for fn in (gm.topological_ged, gm.labelled_ged):
    first = fn(cells)[0]
    exact = fn(cells, timeout=None, first_only=False)[0]
    assert exact == 3.0
    assert first >= exact > 0


def test_ged_first_value_is_networkx_first_value():
  """Fidelity: the value is optimize_graph_edit_distance's first one."""
  tokens = _random_tokens(np.random.default_rng(1), 5, 6)
  pairs = gm.sample_pairs(6, 5, seed=0)
  out = gm.topological_ged(tokens, pairs)
  graphs = [ss.Architecture.from_tokens(t).to_networkx() for t in tokens]
  expected = [next(nx.optimize_graph_edit_distance(graphs[i], graphs[j]))
              for i, j in pairs]
  np.testing.assert_array_equal(out, expected)


def test_ged_bounds_exact_search():
  """first >= exact (networkx graph_edit_distance), topological and labelled."""
  tokens = _random_tokens(np.random.default_rng(2), 3, 5)
  pairs = gm.sample_pairs(5, 6, seed=1)
  graphs = [gm._labelled_graph(ss.Architecture.from_tokens(t)) for t in tokens]
  same = lambda a, b: a["label"] == b["label"]
  for fn, match in ((gm.topological_ged, None), (gm.labelled_ged, same)):
    first = fn(tokens, pairs)
    best = fn(tokens, pairs, timeout=None, first_only=False)
    exact = [nx.graph_edit_distance(graphs[i], graphs[j], node_match=match)
             for i, j in pairs]
    np.testing.assert_array_equal(best, exact)
    assert np.all(first >= best)
  # Labels can only add cost.
  assert np.all(gm.labelled_ged(tokens, pairs, timeout=None, first_only=False)
                >= gm.topological_ged(tokens, pairs, timeout=None,
                                      first_only=False))


def test_ged_all_pairs_by_default():
  tokens = _random_tokens(np.random.default_rng(3), 3, 4)
  out = gm.topological_ged(tokens)
  expected = gm.topological_ged(tokens, np.stack(np.triu_indices(4, 1), 1))
  assert out.shape == (6,)
  np.testing.assert_array_equal(out, expected)


def test_ged_timeout_gives_nan():
  """A limit too short to find any edit path yields NaN, not a wrong number."""
  out = gm.labelled_ged([ss.ENAS_PTB_CELL, ss.chain(12)], timeout=1e-9)
  assert np.isnan(out).all()


def test_ged_bad_arguments():
  cells = [CHAIN3, STAR3]
  with pytest.raises(ValueError, match="timeout"):
    gm.topological_ged(cells, timeout=0)
  with pytest.raises(ValueError, match="0..1"):
    gm.topological_ged(cells, pairs=[[0, 2]])
  with pytest.raises(ValueError, match=r"int\[M, 2\]"):
    gm.labelled_ged(cells, pairs=[0, 1, 1])
  assert gm.topological_ged(cells, pairs=np.zeros((0, 2), int)).shape == (0,)


# ---------------------------------------------------------------------------
# sample_pairs.
# ---------------------------------------------------------------------------


def test_sample_pairs_all_when_they_fit():
  out = gm.sample_pairs(5, 10, seed=0)
  assert [tuple(p) for p in out.tolist()] == list(
      itertools.combinations(range(5), 2))
  assert gm.sample_pairs(5, 100, seed=0).shape == (10, 2)
  assert gm.sample_pairs(1, 10, seed=0).shape == (0, 2)


def test_sample_pairs_subset():
  """434 of the 435 pairs of 30 cells: distinct, valid, sorted."""
  out = gm.sample_pairs(30, 434, seed=0)
  assert out.shape == (434, 2)
  assert np.all(out[:, 0] < out[:, 1]) and out.min() >= 0 and out.max() < 30
  pairs = [tuple(p) for p in out.tolist()]
  assert len(set(pairs)) == 434 and pairs == sorted(pairs)


def test_sample_pairs_deterministic_and_seeded():
  a = gm.sample_pairs(1000, 50, seed=7)
  np.testing.assert_array_equal(a, gm.sample_pairs(1000, 50, seed=7))
  assert not np.array_equal(a, gm.sample_pairs(1000, 50, seed=8))


def test_sample_pairs_uniform():
  """Each of the 10 pairs of 5 cells is drawn about equally often."""
  counts = collections.Counter()
  for seed in range(2000):
    counts.update(tuple(p) for p in gm.sample_pairs(5, 3, seed).tolist())
  freq = np.array(list(counts.values())) / 2000
  assert len(counts) == 10
  np.testing.assert_allclose(freq, 0.3, atol=0.04)


def test_sample_pairs_large_population():
  """10^5 cells (5 * 10^9 pairs) without materialising the pairs."""
  out = gm.sample_pairs(100_000, 100, seed=0)
  assert out.shape == (100, 2)
  assert np.all(out[:, 0] < out[:, 1]) and out.max() < 100_000


def test_sample_pairs_bad_arguments():
  with pytest.raises(ValueError, match="max_pairs"):
    gm.sample_pairs(5, -1, 0)
  with pytest.raises(ValueError, match="num_cells"):
    gm.sample_pairs(2.5, 1, 0)


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
