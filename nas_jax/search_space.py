"""The ENAS recurrent-cell search space (Pham et al. 2018), as data.

A cell has ``N`` nodes. Node 0 reads the input embedding ``x_t`` and the
previous hidden state ``h_{t-1}``; node ``l >= 1`` reads exactly one earlier
node ``prev_l < l``. Every node applies one of ``ACTIVATIONS``. The cell output
is the mean of the *loose ends* (nodes that no other node reads) and the next
hidden state is node ``N - 1``.

A cell is encoded as ``2N - 1`` integers in the ENAS order::

    [act_0, prev_1, act_1, prev_2, act_2, ..., prev_{N-1}, act_{N-1}]

so ``tokens[0::2]`` are the ``N`` activations and ``tokens[1::2]`` the ``N - 1``
parents, where ``tokens[2 * l - 1]`` is the parent of node ``l``.

This module is the leaf of the package: everything may import it, it imports
nothing from ``nas_jax``. The host-side ``Architecture`` is for humans, JSON and
graph analysis; jitted code works on the ``int32[2N-1]`` token arrays directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "identity", "sigmoid")
NUM_ACTIVATIONS = len(ACTIVATIONS)


def num_tokens(num_nodes: int) -> int:
  """Length ``2N - 1`` of the token encoding of an ``N``-node cell."""
  return 2 * num_nodes - 1


def num_nodes_from_tokens(length: int) -> int:
  """Inverse of :func:`num_tokens`; raises ``ValueError`` for even lengths."""
  if length < 1 or length % 2 == 0:
    raise ValueError(
        f"a cell encoding has 2N-1 tokens (an odd number >= 1), got {length}")
  return (length + 1) // 2


def space_size(num_nodes: int) -> int:
  """Number of distinct cells: ``4^N * (N-1)!``."""
  return NUM_ACTIVATIONS**num_nodes * math.factorial(num_nodes - 1)


def decision_sizes(num_nodes: int) -> np.ndarray:
  """``int[2N-1]``: how many choices each token position has.

  Activation positions have ``len(ACTIVATIONS)`` choices; position ``2l - 1``
  (the parent of node ``l``) has ``l`` choices (``0 .. l-1``).
  """
  sizes = np.full(num_tokens(num_nodes), NUM_ACTIVATIONS, dtype=np.int32)
  sizes[1::2] = np.arange(1, num_nodes, dtype=np.int32)
  return sizes


@dataclasses.dataclass(frozen=True)
class Architecture:
  """An immutable ENAS cell.

  Attributes:
    acts: ``N`` activation indices into ``ACTIVATIONS``; ``acts[l]`` is node l's.
    prevs: ``N - 1`` parent indices; ``prevs[l - 1]`` is the node that node
      ``l`` reads (node 0 reads ``x_t`` and ``h_{t-1}`` and has no entry).
  """
  acts: tuple[int, ...]
  prevs: tuple[int, ...]

  def __post_init__(self):
    for name in ("acts", "prevs"):
      for i, v in enumerate(getattr(self, name)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(
            v, (int, np.integer)):
          raise ValueError(f"{name}[{i}] is {v!r}, not an integer")
    acts = tuple(int(a) for a in self.acts)
    prevs = tuple(int(p) for p in self.prevs)
    object.__setattr__(self, "acts", acts)
    object.__setattr__(self, "prevs", prevs)
    if not acts:
      raise ValueError("a cell needs at least one node")
    if len(prevs) != len(acts) - 1:
      raise ValueError(
          f"{len(acts)} nodes need {len(acts) - 1} parents, got {len(prevs)}")
    for l, a in enumerate(acts):
      if not 0 <= a < NUM_ACTIVATIONS:
        raise ValueError(
            f"token {2 * l} (activation of node {l}) is {a}; valid activations "
            f"are 0..{NUM_ACTIVATIONS - 1} ({', '.join(ACTIVATIONS)})")
    for l, p in enumerate(prevs, start=1):
      if not 0 <= p < l:
        raise ValueError(
            f"token {2 * l - 1} (parent of node {l}) is {p}; node {l} may only "
            f"read nodes 0..{l - 1}")

  @property
  def num_nodes(self) -> int:
    return len(self.acts)

  @classmethod
  def from_tokens(cls, tokens: Sequence[int] | np.ndarray | str) -> "Architecture":
    """Builds a cell from its ``2N-1`` ENAS tokens (a sequence or a string).

    Raises:
      ValueError: naming the first invalid position.
    """
    if isinstance(tokens, str):
      parts = tokens.replace(",", " ").split()
      for i, part in enumerate(parts):
        if not part.lstrip("-").isdigit():
          raise ValueError(
              f"cannot parse cell tokens {tokens!r}: token {i} is {part!r}, "
              "not an integer")
      tokens = [int(t) for t in parts]
    arr = _integer_tokens(tokens)
    if arr.ndim != 1:
      raise ValueError(f"cell tokens must be one-dimensional, got shape {arr.shape}")
    num_nodes_from_tokens(arr.size)
    return cls(acts=tuple(arr[0::2].tolist()), prevs=tuple(arr[1::2].tolist()))

  def tokens(self) -> np.ndarray:
    """``int32[2N-1]`` in ENAS order."""
    out = np.empty(num_tokens(self.num_nodes), dtype=np.int32)
    out[0::2] = self.acts
    out[1::2] = self.prevs
    return out

  def __str__(self) -> str:
    return " ".join(str(t) for t in self.tokens())

  def to_json(self) -> str:
    return json.dumps({"tokens": self.tokens().tolist()})

  @classmethod
  def from_json(cls, text: str) -> "Architecture":
    data = json.loads(text)
    if not isinstance(data, dict) or "tokens" not in data:
      raise ValueError("expected a JSON object with a 'tokens' list")
    return cls.from_tokens(data["tokens"])

  def loose_ends(self) -> tuple[int, ...]:
    """Nodes that no other node reads, ascending (always includes ``N-1``)."""
    read = set(self.prevs)
    return tuple(l for l in range(self.num_nodes) if l not in read)

  def activation_names(self) -> tuple[str, ...]:
    return tuple(ACTIVATIONS[a] for a in self.acts)

  def to_networkx(self) -> nx.DiGraph:
    """The whole cell as a DAG, edges parent -> child.

    Nodes: ``"x"``, ``"h_prev"``, ``0 .. N-1`` (attribute ``activation``, a
    name from ``ACTIVATIONS``), ``"avg"`` and ``"out"``. Edges: ``x -> 0``,
    ``h_prev -> 0``, ``prev_l -> l``, each loose end ``-> avg``, ``avg -> out``.
    """
    g = nx.DiGraph()
    g.add_node("x", activation=None)
    g.add_node("h_prev", activation=None)
    for l, a in enumerate(self.acts):
      g.add_node(l, activation=ACTIVATIONS[a])
    g.add_node("avg", activation=None)
    g.add_node("out", activation=None)
    g.add_edge("x", 0)
    g.add_edge("h_prev", 0)
    for l, p in enumerate(self.prevs, start=1):
      g.add_edge(p, l)
    for l in self.loose_ends():
      g.add_edge(l, "avg")
    g.add_edge("avg", "out")
    return g


def _integer_tokens(tokens) -> np.ndarray:
  """``tokens`` as an int64 array; ``ValueError`` naming a non-integer entry."""
  try:
    arr = np.asarray(tokens)
  except ValueError as e:
    raise ValueError(f"cell tokens must be a rectangular array: {e}") from None
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                               or np.issubdtype(arr.dtype, np.floating)):
    raise ValueError(f"cell tokens must be integers, got dtype {arr.dtype}")
  if np.issubdtype(arr.dtype, np.floating):
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    if np.any(bad):
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f"token {index[-1]} is {arr[index]}, not an integer"
          + (f" (row {index[:-1]})" if len(index) > 1 else ""))
  return arr.astype(np.int64)


def validate_tokens(tokens) -> np.ndarray:
  """Checks one encoding or a batch ``int[..., 2N-1]`` on the host.

  Returns the tokens as ``int32``; raises ``ValueError`` naming the first bad
  row and position.
  """
  arr = _integer_tokens(tokens)
  if arr.ndim == 0:
    raise ValueError("cell tokens must have at least one dimension")
  num_nodes = num_nodes_from_tokens(arr.shape[-1])
  sizes = decision_sizes(num_nodes)
  bad = (arr < 0) | (arr >= sizes)
  if np.any(bad):
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    row = index[:-1]
    try:
      Architecture.from_tokens(arr[row])
    except ValueError as e:  # Says what the position means.
      raise ValueError(f"row {row}: {e}" if row else str(e)) from None
  return arr.astype(np.int32)


def loose_end_mask(tokens: jax.Array) -> jax.Array:
  """``bool[..., N]``: which nodes are loose ends, computed in JAX.

  Works on a single ``int[2N-1]`` encoding or a batch of them.
  """
  num_nodes = num_nodes_from_tokens(tokens.shape[-1])
  prevs = tokens[..., 1::2]
  read = jnp.any(prevs[..., :, None] == jnp.arange(num_nodes), axis=-2)
  return ~read


def sample_uniform(key: jax.Array, num_nodes: int, num: int) -> jax.Array:
  """Draws ``num`` cells uniformly at random: ``int32[num, 2N-1]``.

  Every decision is independent and uniform over its valid choices
  (activations over 4, the parent of node ``l`` over ``0 .. l-1``; drawn by
  ``jax.random.randint`` with a per-position upper bound), so every cell of
  the space is equally likely. This is the random-search sampler.
  """
  if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or \
      num_nodes < 1:
    raise ValueError(f"num_nodes must be an int >= 1, got {num_nodes!r}")
  if isinstance(num, bool) or not isinstance(num, int) or num < 0:
    raise ValueError(f"num must be an int >= 0, got {num!r}")
  sizes = jnp.asarray(decision_sizes(num_nodes))
  return jax.random.randint(
      key, (num, num_tokens(num_nodes)), 0, sizes, dtype=jnp.int32)


# The published ENAS PTB cell (Pham et al. 2018), as listed in DESIGN.md.
ENAS_PTB_CELL = Architecture.from_tokens(
    "0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1")


def chain(num_nodes: int, activation: int = 0) -> Architecture:
  """The chain cell: node l reads node l-1, all with one activation."""
  return Architecture(acts=(activation,) * num_nodes,
                      prevs=tuple(range(num_nodes - 1)))
