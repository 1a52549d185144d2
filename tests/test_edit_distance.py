"""Tests for nas_jax.analysis.edit_distance: networkx edit distances, pairs.

Edit-distance tests use 3-node cells so networkx's search stays fast; the
values are checked against networkx's own search and exact distance.
"""

import collections
import itertools

import networkx as nx
import numpy as np
import pytest

from conftest import random_tokens
from nas_jax import search_space as ss
from nas_jax.analysis import edit_distance as ed


# ---------------------------------------------------------------------------
# Graph edit distances (3-node cells).
# ---------------------------------------------------------------------------

CHAIN3 = ss.chain(3)
CHAIN3_RELU_MIDDLE = ss.Architecture(acts=(0, 1, 0), prevs=(0, 1))
STAR3 = ss.Architecture(acts=(0, 0, 0), prevs=(0, 0))


@pytest.mark.parametrize("fn", [ed.topological_ged, ed.labelled_ged])
def test_ged_identical_is_zero(fn):
  assert fn([CHAIN3, CHAIN3, STAR3, STAR3], pairs=[[0, 1], [2, 3]]).tolist() \
      == [0.0, 0.0]


def test_ged_one_activation_change():
  """Topological GED is blind to activations (0). Labelled: networkx's default
  node substitution cost is 1 for non-matching labels, so the exact distance
  is 1 (relabel the middle node); the first value is only an upper bound
  (networkx 3.6 yields 7 first, having paired the nodes differently)."""
  cells = [CHAIN3, CHAIN3_RELU_MIDDLE]
  assert ed.topological_ged(cells).tolist() == [0.0]
  first = ed.labelled_ged(cells)[0]
  exact = ed.labelled_ged(cells, timeout=None, first_only=False)[0]
  assert exact == 1.0
  assert first >= exact


def test_ged_one_parent_change():
  """Chain vs star: delete 1->2, insert 0->2 and 1->avg (exact: 3)."""
  cells = [CHAIN3, STAR3]
  for fn in (ed.topological_ged, ed.labelled_ged):
    first = fn(cells)[0]
    exact = fn(cells, timeout=None, first_only=False)[0]
    assert exact == 3.0
    assert first >= exact > 0


def test_ged_first_value_is_networkx_first_value():
  """Fidelity: the value is optimize_graph_edit_distance's first one."""
  tokens = random_tokens(np.random.default_rng(1), 5, 6)
  pairs = ed.sample_pairs(6, 5, seed=0)
  out = ed.topological_ged(tokens, pairs)
  graphs = [ss.Architecture.from_tokens(t).to_networkx() for t in tokens]
  expected = [next(nx.optimize_graph_edit_distance(graphs[i], graphs[j]))
              for i, j in pairs]
  np.testing.assert_array_equal(out, expected)


def test_ged_bounds_exact_search():
  """first >= exact (networkx graph_edit_distance), topological and labelled."""
  tokens = random_tokens(np.random.default_rng(2), 3, 5)
  pairs = ed.sample_pairs(5, 6, seed=1)
  graphs = [ed._labelled_graph(ss.Architecture.from_tokens(t)) for t in tokens]
  same = lambda a, b: a["label"] == b["label"]
  for fn, match in ((ed.topological_ged, None), (ed.labelled_ged, same)):
    first = fn(tokens, pairs)
    best = fn(tokens, pairs, timeout=None, first_only=False)
    exact = [nx.graph_edit_distance(graphs[i], graphs[j], node_match=match)
             for i, j in pairs]
    np.testing.assert_array_equal(best, exact)
    assert np.all(first >= best)
  # Labels can only add cost.
  assert np.all(ed.labelled_ged(tokens, pairs, timeout=None, first_only=False)
                >= ed.topological_ged(tokens, pairs, timeout=None,
                                      first_only=False))


def test_ged_all_pairs_by_default():
  tokens = random_tokens(np.random.default_rng(3), 3, 4)
  out = ed.topological_ged(tokens)
  expected = ed.topological_ged(tokens, np.stack(np.triu_indices(4, 1), 1))
  assert out.shape == (6,)
  np.testing.assert_array_equal(out, expected)


def test_ged_timeout_gives_nan():
  """A limit too short to find any edit path yields NaN, not a wrong number."""
  out = ed.labelled_ged([ss.ENAS_PTB_CELL, ss.chain(12)], timeout=1e-9)
  assert np.isnan(out).all()


def test_ged_bad_arguments():
  cells = [CHAIN3, STAR3]
  with pytest.raises(ValueError, match="timeout"):
    ed.topological_ged(cells, timeout=0)
  with pytest.raises(ValueError, match="0..1"):
    ed.topological_ged(cells, pairs=[[0, 2]])
  with pytest.raises(ValueError, match=r"int\[M, 2\]"):
    ed.labelled_ged(cells, pairs=[0, 1, 1])
  assert ed.topological_ged(cells, pairs=np.zeros((0, 2), int)).shape == (0,)


# ---------------------------------------------------------------------------
# sample_pairs.
# ---------------------------------------------------------------------------


def test_sample_pairs_all_when_they_fit():
  out = ed.sample_pairs(5, 10, seed=0)
  assert [tuple(p) for p in out.tolist()] == list(
      itertools.combinations(range(5), 2))
  assert ed.sample_pairs(5, 100, seed=0).shape == (10, 2)
  assert ed.sample_pairs(1, 10, seed=0).shape == (0, 2)


def test_sample_pairs_subset():
  """434 of the 435 pairs of 30 cells: distinct, valid, sorted."""
  out = ed.sample_pairs(30, 434, seed=0)
  assert out.shape == (434, 2)
  assert np.all(out[:, 0] < out[:, 1]) and out.min() >= 0 and out.max() < 30
  pairs = [tuple(p) for p in out.tolist()]
  assert len(set(pairs)) == 434 and pairs == sorted(pairs)


def test_sample_pairs_deterministic_and_seeded():
  a = ed.sample_pairs(1000, 50, seed=7)
  np.testing.assert_array_equal(a, ed.sample_pairs(1000, 50, seed=7))
  assert not np.array_equal(a, ed.sample_pairs(1000, 50, seed=8))


def test_sample_pairs_uniform():
  """Each of the 10 pairs of 5 cells is drawn about equally often."""
  counts = collections.Counter()
  for seed in range(2000):
    counts.update(tuple(p) for p in ed.sample_pairs(5, 3, seed).tolist())
  freq = np.array(list(counts.values())) / 2000
  assert len(counts) == 10
  np.testing.assert_allclose(freq, 0.3, atol=0.04)


def test_sample_pairs_large_population():
  """10^5 cells (5 * 10^9 pairs) without materialising the pairs."""
  out = ed.sample_pairs(100_000, 100, seed=0)
  assert out.shape == (100, 2)
  assert np.all(out[:, 0] < out[:, 1]) and out.max() < 100_000


def test_sample_pairs_bad_arguments():
  with pytest.raises(ValueError, match="max_pairs"):
    ed.sample_pairs(5, -1, 0)
  with pytest.raises(ValueError, match="num_cells"):
    ed.sample_pairs(2.5, 1, 0)
