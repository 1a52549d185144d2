"""Tests for nas_jax.search_space: the ENAS recurrent-cell encoding."""

import itertools
import json
import math

import jax
import networkx as nx
import numpy as np
import pytest
from scipy import stats

from nas_jax import search_space as ss

from conftest import random_tokens as _random_tokens

ENAS_TOKENS = [0, 0, 0, 1, 1, 2, 1, 2, 0, 2, 0, 5, 1, 1, 0, 6, 1, 8, 1, 8, 1, 8,
               1]
# Derived by hand: acts = tokens[0::2], prevs = tokens[1::2] (parent of node l
# is tokens[2l-1]). Nodes read: {0, 1, 2, 5, 6, 8}, so the rest are loose ends.
ENAS_ACTS = (0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 1)
ENAS_PREVS = (0, 1, 2, 2, 2, 5, 1, 6, 8, 8, 8)
ENAS_LOOSE_ENDS = (3, 4, 7, 9, 10, 11)


# ---------------------------------------------------------------------------
# Architecture: encoding round trips and the published ENAS cell.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["array", "list", "string", "comma_string"])
def test_tokens_round_trip(kind):
  """from_tokens(...).tokens() returns the input for every input form."""
  tokens = np.array([2, 0, 3, 1, 1, 0, 0], dtype=np.int32)
  given = {
      "array": tokens,
      "list": tokens.tolist(),
      "string": " ".join(str(t) for t in tokens),
      "comma_string": ",".join(str(t) for t in tokens),
  }[kind]
  out = ss.Architecture.from_tokens(given).tokens()
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, tokens)


def test_str_round_trip():
  """str(arch) parses back to an equal Architecture."""
  arch = ss.Architecture.from_tokens([1, 0, 2, 1, 3])
  assert ss.Architecture.from_tokens(str(arch)) == arch


def test_json_round_trip():
  """to_json/from_json round-trips and stores the token list."""
  arch = ss.ENAS_PTB_CELL
  text = arch.to_json()
  assert json.loads(text) == {"tokens": ENAS_TOKENS}
  assert ss.Architecture.from_json(text) == arch


def test_enas_cell_tokens():
  """ENAS_PTB_CELL encodes the published token string."""
  assert ss.ENAS_PTB_CELL.tokens().tolist() == ENAS_TOKENS
  assert ss.ENAS_PTB_CELL.num_nodes == 12


def test_enas_cell_acts_and_prevs():
  """ENAS_PTB_CELL's acts and prevs match the hand-decoded tokens."""
  assert ss.ENAS_PTB_CELL.acts == ENAS_ACTS
  assert ss.ENAS_PTB_CELL.prevs == ENAS_PREVS


def test_enas_cell_loose_ends():
  """ENAS_PTB_CELL's loose ends are the hand-derived unread nodes."""
  assert ss.ENAS_PTB_CELL.loose_ends() == ENAS_LOOSE_ENDS


# ---------------------------------------------------------------------------
# Architecture: invalid encodings.
# ---------------------------------------------------------------------------


def test_even_length_raises():
  """An even number of tokens raises ValueError naming the length."""
  with pytest.raises(ValueError, match=r"2N-1.*got 4"):
    ss.Architecture.from_tokens([0, 0, 0, 1])


@pytest.mark.parametrize("tokens, position", [
    ([0, 0, 0, 2, 0], 3),  # Parent of node 2 is 2 (must be < 2).
    ([0, 0, 0, 0, 0, 3, 0], 5),  # Parent of node 3 is 3.
    ([0, -1, 0], 1),  # Negative parent.
    ([0, 0, 0, -2, 0], 3),  # Negative parent of node 2.
    ([4, 0, 0], 0),  # Unknown activation at position 0.
    ([0, 0, 1, 0, 7], 4),  # Unknown activation at position 4.
    ([-1, 0, 0], 0),  # Negative activation.
])
def test_invalid_token_names_position(tokens, position):
  """An out-of-range token raises ValueError naming its position."""
  with pytest.raises(ValueError, match=rf"\btoken {position}\b"):
    ss.Architecture.from_tokens(tokens)


@pytest.mark.parametrize("tokens", [[0, 0, 0.5], [0, 0.25, 0], "0 x 0",
                                    "0 0.5 0"])
def test_non_integer_tokens_raise(tokens):
  """Non-integer tokens (floats, unparsable strings) raise ValueError."""
  with pytest.raises(ValueError):
    ss.Architecture.from_tokens(tokens)


def test_non_integer_token_names_position():
  """A non-integer token's error message names its position."""
  with pytest.raises(ValueError, match=r"\b(token|position) 1\b"):
    ss.Architecture.from_tokens([0, 0.5, 0])


def test_integral_floats_accepted():
  """Floats with integral values are accepted as tokens."""
  arch = ss.Architecture.from_tokens(np.array([1.0, 0.0, 2.0]))
  assert arch.tokens().tolist() == [1, 0, 2]


# ---------------------------------------------------------------------------
# to_networkx.
# ---------------------------------------------------------------------------


def test_networkx_nodes():
  """The graph has x, h_prev, the N cell nodes, avg and out, nothing else."""
  g = ss.ENAS_PTB_CELL.to_networkx()
  assert set(g.nodes) == {"x", "h_prev", "avg", "out", *range(12)}


def test_networkx_activation_attributes():
  """Cell nodes carry their activation name; the other nodes carry None."""
  g = ss.ENAS_PTB_CELL.to_networkx()
  for l, a in enumerate(ENAS_ACTS):
    assert g.nodes[l]["activation"] == ss.ACTIVATIONS[a]
  for name in ("x", "h_prev", "avg", "out"):
    assert g.nodes[name]["activation"] is None


def test_networkx_edges():
  """Edges are exactly x/h_prev->0, prev_l->l, loose ends->avg, avg->out."""
  g = ss.ENAS_PTB_CELL.to_networkx()
  expected = {("x", 0), ("h_prev", 0), ("avg", "out")}
  expected |= {(p, l) for l, p in enumerate(ENAS_PREVS, start=1)}
  expected |= {(l, "avg") for l in ENAS_LOOSE_ENDS}
  assert set(g.edges) == expected
  assert g.number_of_edges() == len(expected)


def test_networkx_is_dag():
  """The cell graph is a directed acyclic graph."""
  assert nx.is_directed_acyclic_graph(ss.ENAS_PTB_CELL.to_networkx())


@pytest.mark.parametrize("num_nodes", [1, 2, 5, 12])
def test_chain_has_single_loose_end(num_nodes):
  """In the chain cell only node N-1 is a loose end (and feeds avg)."""
  arch = ss.chain(num_nodes)
  assert arch.loose_ends() == (num_nodes - 1,)
  assert set(arch.to_networkx().predecessors("avg")) == {num_nodes - 1}


# ---------------------------------------------------------------------------
# loose_end_mask (JAX) and validate_tokens.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_cells():
  """200 random valid 7-node cells and their Architecture loose ends."""
  tokens = _random_tokens(np.random.default_rng(0), 7, 200)
  expected = np.zeros((200, 7), dtype=bool)
  for i, row in enumerate(tokens):
    expected[i, list(ss.Architecture.from_tokens(row).loose_ends())] = True
  return tokens.astype(np.int32), expected


def test_loose_end_mask_batched(random_cells):
  """Batched loose_end_mask matches Architecture.loose_ends on 200 cells."""
  tokens, expected = random_cells
  mask = ss.loose_end_mask(jax.numpy.asarray(tokens))
  assert mask.shape == (200, 7)
  assert mask.dtype == bool
  np.testing.assert_array_equal(np.asarray(mask), expected)


def test_loose_end_mask_single(random_cells):
  """loose_end_mask on single encodings matches Architecture.loose_ends."""
  tokens, expected = random_cells
  single = jax.jit(ss.loose_end_mask)
  for row, want in zip(tokens, expected):
    np.testing.assert_array_equal(np.asarray(single(row)), want)


def test_loose_end_mask_enas_cell():
  """loose_end_mask of the ENAS PTB cell marks the hand-derived loose ends."""
  mask = np.asarray(ss.loose_end_mask(ss.ENAS_PTB_CELL.tokens()))
  assert tuple(np.flatnonzero(mask)) == ENAS_LOOSE_ENDS


def test_validate_tokens_accepts_valid_batch(random_cells):
  """validate_tokens returns a valid batch unchanged, as int32."""
  tokens, _ = random_cells
  out = ss.validate_tokens(tokens.astype(np.int64))
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, tokens)


def test_validate_tokens_rejects_bad_entry(random_cells):
  """One bad entry in a batch raises ValueError naming its position."""
  tokens = random_cells[0][:10].copy()
  tokens[6, 7] = 4  # Parent of node 4 must be < 4.
  with pytest.raises(ValueError, match=r"\btoken 7\b"):
    ss.validate_tokens(tokens)


def test_validate_tokens_names_bad_row(random_cells):
  """validate_tokens' error message names the bad row of the batch."""
  tokens = random_cells[0][:10].copy()
  tokens[6, 7] = 4
  with pytest.raises(ValueError, match=r"\brow\b\D*6\b"):
    ss.validate_tokens(tokens)


def test_validate_tokens_rejects_non_integers():
  """validate_tokens rejects non-integer token values."""
  with pytest.raises(ValueError):
    ss.validate_tokens(np.array([[0, 0, 0], [0, 0, 3.5]]))


# ---------------------------------------------------------------------------
# sample_uniform.
# ---------------------------------------------------------------------------

_NUM_NODES = 6
_NUM_SAMPLES = 20_000


@pytest.fixture(scope="module")
def samples():
  """20,000 uniform 6-node cells as a numpy array."""
  return np.asarray(
      ss.sample_uniform(jax.random.key(0), _NUM_NODES, _NUM_SAMPLES))


def test_sample_uniform_shape_and_dtype(samples):
  """sample_uniform returns int32[num, 2N-1]."""
  assert samples.shape == (_NUM_SAMPLES, 2 * _NUM_NODES - 1)
  assert samples.dtype == np.int32


def test_sample_uniform_rows_valid(samples):
  """Every sampled activation is in 0..3 and every parent of node l < l."""
  acts, prevs = samples[:, 0::2], samples[:, 1::2]
  assert ((acts >= 0) & (acts < 4)).all()
  limits = np.arange(1, _NUM_NODES)
  assert ((prevs >= 0) & (prevs < limits)).all()


def test_sample_uniform_each_decision_uniform(samples):
  """Each position is uniform over its valid choices (chi-square p > 1e-4)."""
  for pos in range(samples.shape[1]):
    size = 4 if pos % 2 == 0 else (pos + 1) // 2
    counts = np.bincount(samples[:, pos], minlength=size)
    assert len(counts) == size, f"position {pos}: value out of range"
    assert (counts > 0).all(), f"position {pos}: a value never occurs"
    if size > 1:
      p = stats.chisquare(counts).pvalue
      assert p > 1e-4, f"position {pos}: counts {counts}, p = {p}"


def test_sample_uniform_same_key_same_cells():
  """The same key gives the same cells."""
  a = ss.sample_uniform(jax.random.key(3), _NUM_NODES, 50)
  b = ss.sample_uniform(jax.random.key(3), _NUM_NODES, 50)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_uniform_different_key_different_cells():
  """Different keys give different cells."""
  a = ss.sample_uniform(jax.random.key(3), _NUM_NODES, 50)
  b = ss.sample_uniform(jax.random.key(4), _NUM_NODES, 50)
  assert not np.array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------
# Space size and decision sizes.
# ---------------------------------------------------------------------------


def test_space_size_n12():
  """space_size(12) is 4^12 * 11!."""
  assert ss.space_size(12) == 4**12 * math.factorial(11)


def test_space_size_counts_valid_encodings():
  """space_size(3) equals a brute-force count of valid 3-node encodings."""
  count = 0
  for tokens in itertools.product(range(-1, 5), repeat=5):
    try:
      ss.Architecture.from_tokens(list(tokens))
    except ValueError:
      continue
    count += 1
  assert count == ss.space_size(3) == 128


@pytest.mark.parametrize("num_nodes, expected", [
    (1, [4]),
    (2, [4, 1, 4]),
    (3, [4, 1, 4, 2, 4]),
    (4, [4, 1, 4, 2, 4, 3, 4]),
])
def test_decision_sizes(num_nodes, expected):
  """decision_sizes gives 4 per activation and l per parent of node l."""
  assert ss.decision_sizes(num_nodes).tolist() == expected


@pytest.mark.parametrize("tokens", [[True, False, True], ["0", "0", "0"]])
def test_booleans_and_string_lists_are_rejected(tokens):
  """Booleans and lists of strings are not silently taken as integers."""
  with pytest.raises(ValueError, match="integers"):
    ss.Architecture.from_tokens(tokens)


def test_constructor_rejects_non_integer_choices():
  """Floats and bools are not silently truncated into choices."""
  with pytest.raises(ValueError, match=r"acts\[1\]"):
    ss.Architecture(acts=(0, 1.5), prevs=(0,))
  with pytest.raises(ValueError, match=r"prevs\[0\]"):
    ss.Architecture(acts=(0, 1), prevs=(False,))


def test_string_parse_error_names_the_position():
  """A non-integer in a token string names its position."""
  with pytest.raises(ValueError, match="token 2 is 'x'"):
    ss.Architecture.from_tokens("0 0 x")


def test_sample_uniform_validates_its_sizes():
  """num_nodes < 1 or a negative num is a ValueError, num=0 is empty."""
  with pytest.raises(ValueError, match="num_nodes"):
    ss.sample_uniform(jax.random.key(0), 0, 3)
  with pytest.raises(ValueError, match="num must"):
    ss.sample_uniform(jax.random.key(0), 3, -1)
  assert ss.sample_uniform(jax.random.key(0), 3, 0).shape == (0, 5)
