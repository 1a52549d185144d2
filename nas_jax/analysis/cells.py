"""Cells as files: drawings, GraphML and Graphviz DOT that read back, and a CLI.

One ENAS cell (:class:`nas_jax.search_space.Architecture`) can be

* drawn (:func:`draw_cell` on matplotlib axes, :func:`save_cell_figure` to a
  PNG, SVG or PDF file): the inputs ``x_t`` and ``h_{t-1}`` on top, one row
  per topological generation, the loose ends coloured and averaged into the
  output at the bottom, node ``N-1`` marked as the next state ``h_t``;
* exported and read back: :func:`to_graphml` / :func:`from_graphml` (via
  networkx, opens in yEd, Gephi, Cytoscape) and :func:`to_dot` /
  :func:`from_dot` (Graphviz: ``dot -Tpng cell.dot -o cell.png``; no Graphviz
  library is needed to write or read it). Reading rebuilds the cell from the
  graph's vertices and edges alone, so an edited file is an edited cell: a
  graph that is not a cell (a node with two parents, an edge into ``avg``
  from a node that is not a loose end, an unknown activation) is refused
  with a ``ValueError`` saying what is wrong;
* written by file suffix (:func:`write_cell`) and read from whatever names
  it (:func:`load_cell`): a token string, a ``best_arch.json`` or any JSON
  object with ``"tokens"``, a ``.graphml`` or ``.dot`` file, a run directory.

Vertices of the exported graphs are those of ``Architecture.to_networkx``,
named by strings: ``"x"``, ``"h_prev"``, ``"0"`` .. ``"N-1"`` (attribute
``activation``, a name from ``search_space.ACTIVATIONS``), ``"avg"`` and
``"out"``; edges ``x -> 0``, ``h_prev -> 0``, ``prev_l -> l``, every loose end
``-> avg`` and ``avg -> out``. Other attributes (``kind``, ``label``, Graphviz
styles) are for viewers and are ignored on reading.

Command line (a SPEC is anything load_cell reads)::

  # One cell to one file; the format is OUT's suffix.
  python -m nas_jax.analysis.cells runs/smoke/best_arch.json -o cell.svg
  python -m nas_jax.analysis.cells "0 0 1 1 2 1 2" -o cell.dot
  dot -Tpng cell.dot -o cell.png
  # Several cells into a directory (named after each SPEC), as GraphML.
  python -m nas_jax.analysis.cells runs/a runs/b -o cells/ --format graphml
  # An edited DOT file back to tokens (JSON).
  python -m nas_jax.analysis.cells cell.dot -o cell.json
  # The cell each derive kept, one figure per epoch, from derived.jsonl.
  python -m nas_jax.analysis.cells --derived runs/smoke -o derived_cells/

Every file written is printed on stdout. Bad input gives one ``error: ...``
line on stderr and exit status 2. Importing this module selects matplotlib's
file-only backend (as :mod:`nas_jax.analysis.figures` does); nothing here is
traced or compiled by JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Sequence
from xml.etree import ElementTree

import matplotlib

matplotlib.use("Agg")  # Files only; no display on batch machines.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import lines as mlines  # pylint: disable=g-import-not-at-top
import networkx as nx  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from nas_jax import files  # pylint: disable=g-import-not-at-top
from nas_jax import search_space  # pylint: disable=g-import-not-at-top

Architecture = search_space.Architecture

# Vertices other than the cell's nodes, as named in the exported graphs.
INPUTS = ("x", "h_prev")
MEAN = "avg"
OUTPUT = "out"
_SPECIAL = (*INPUTS, MEAN, OUTPUT)

FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
GRAPHML_SUFFIXES = (".graphml",)
DOT_SUFFIXES = (".dot", ".gv")
JSON_SUFFIXES = (".json",)
WRITE_SUFFIXES = (*FIGURE_SUFFIXES, *GRAPHML_SUFFIXES, *DOT_SUFFIXES,
                  *JSON_SUFFIXES)
# load_cell also reads a token string from a text file.
READ_SUFFIXES = (*GRAPHML_SUFFIXES, ".xml", *DOT_SUFFIXES, *JSON_SUFFIXES,
                 ".txt")

_COLORS = {"input": "#d9d9d9", "node": "#dde8f5", "loose": "#f9d9a6",
           "mean": "#d5ecd4", "output": "#d5ecd4"}
_LOOSE_EDGE = "#c07000"


def as_architecture(arch) -> Architecture:
  """``arch`` as an :class:`Architecture`: one already, tokens or a string."""
  if isinstance(arch, Architecture):
    return arch
  if isinstance(arch, str):
    return Architecture.from_tokens(arch)
  return Architecture.from_tokens(np.asarray(arch))


def _node_label(arch: Architecture, l: int, sep: str) -> str:
  """``"l act"``, lines or words by ``sep``; node N-1 adds ``"(h_t)"``."""
  parts = [str(l), search_space.ACTIVATIONS[arch.acts[l]]]
  if l == arch.num_nodes - 1:
    parts.append("(h_t)")
  return sep.join(parts)


def _export_graph(arch: Architecture) -> nx.DiGraph:
  """``arch.to_networkx()`` with string vertex names and no None attributes."""
  g = nx.DiGraph(description=(
      "ENAS recurrent cell: node 0 reads x_t and h_{t-1}, node l reads one "
      "earlier node, the output is the mean of the loose ends (the nodes "
      "no node reads), the next state h_t is node N-1"))
  kinds = {"x": "input", "h_prev": "input", MEAN: "mean", OUTPUT: "output"}
  labels = {"x": "x_t", "h_prev": "h_{t-1}", MEAN: "mean of loose ends",
            OUTPUT: "output"}
  for node, data in arch.to_networkx().nodes(data=True):
    name = str(node)
    if data.get("activation") is None:
      g.add_node(name, kind=kinds[name], label=labels[name])
    else:
      g.add_node(name, kind="node", activation=data["activation"],
                 label=_node_label(arch, node, " "))
  g.add_edges_from((str(u), str(v))
                   for u, v in arch.to_networkx().edges())
  return g


def _edge_text(edge) -> str:
  return f"{edge[0]} -> {edge[1]}"


def _cell_from_graph(g: nx.Graph) -> Architecture:
  """Rebuilds the cell a graph of :func:`_export_graph`'s shape describes.

  Only vertex names, ``activation`` attributes and edges count; the graph
  must be exactly the cell's (every edge of it, no other).

  Raises:
    ValueError: saying which vertex or edge is wrong.
  """
  if not g.is_directed():
    raise ValueError("a cell is a directed graph; this one is undirected")
  if g.is_multigraph():
    for u, v in set(g.edges()):
      if g.number_of_edges(u, v) > 1:
        raise ValueError(f"edge {u} -> {v} appears "
                         f"{g.number_of_edges(u, v)} times")
    g = nx.DiGraph(g)
  names = [str(n) for n in g.nodes]
  numbered = [n for n in names if re.fullmatch(r"[0-9]+", n)]
  other = sorted(set(names) - set(numbered) - set(_SPECIAL))
  if other:
    raise ValueError(
        f"unexpected vertices {other}; a cell has only "
        f"{', '.join(repr(v) for v in INPUTS)}, '0'..'N-1', '{MEAN}' and "
        f"'{OUTPUT}'")
  missing = [v for v in _SPECIAL if v not in names]
  if missing:
    raise ValueError(f"vertices {missing} are missing; a cell has "
                     f"{', '.join(repr(v) for v in _SPECIAL)} and '0'..'N-1'")
  if not numbered:
    raise ValueError("no cell nodes: a cell has nodes '0'..'N-1', N >= 1")
  ids = sorted(int(n) for n in numbered)
  if ids != list(range(len(ids))) or any(str(int(n)) != n for n in numbered):
    raise ValueError(f"cell nodes must be numbered 0..N-1, got "
                     f"{sorted(numbered, key=lambda n: (int(n), n))}")
  num_nodes = len(ids)
  acts = []
  for l in range(num_nodes):
    name = g.nodes[str(l)].get("activation")
    if name not in search_space.ACTIVATIONS:
      raise ValueError(
          f"node {l} has activation {name!r}; valid activations are "
          f"{', '.join(search_space.ACTIVATIONS)}")
    acts.append(search_space.ACTIVATIONS.index(name))
  prevs = []
  for l in range(1, num_nodes):
    parents = sorted(str(p) for p in g.predecessors(str(l)))
    if len(parents) != 1:
      raise ValueError(f"node {l} must read exactly one earlier node; it "
                       f"reads {parents if parents else 'none'}")
    parent = parents[0]
    if parent not in numbered or int(parent) >= l:
      raise ValueError(f"node {l} reads {parent!r}; it may only read one of "
                       f"nodes 0..{l - 1}")
    prevs.append(int(parent))
  arch = Architecture(acts=tuple(acts), prevs=tuple(prevs))
  expected = set(_export_graph(arch).edges())
  actual = {(str(u), str(v)) for u, v in g.edges()}
  if actual != expected:
    problems = []
    if expected - actual:
      problems.append("missing " + ", ".join(
          _edge_text(e) for e in sorted(expected - actual)))
    if actual - expected:
      problems.append("unexpected " + ", ".join(
          _edge_text(e) for e in sorted(actual - expected)))
    raise ValueError(
        f"the edges do not describe cell {arch}: {'; '.join(problems)} "
        f"(node 0 reads x and h_prev; exactly the loose ends "
        f"{list(arch.loose_ends())} feed '{MEAN}', which feeds '{OUTPUT}')")
  return arch


# GraphML.


def to_graphml(arch) -> str:
  """The cell as a GraphML document (what ``nx.write_graphml`` would write)."""
  body = "\n".join(nx.generate_graphml(_export_graph(as_architecture(arch))))
  return "<?xml version='1.0' encoding='utf-8'?>\n" + body + "\n"


def from_graphml(text: str) -> Architecture:
  """Reads a cell back from :func:`to_graphml`'s text (or an edited copy).

  Raises:
    ValueError: the text is not GraphML, or its graph is not a cell.
  """
  try:
    g = nx.parse_graphml(text)
  except (ElementTree.ParseError, nx.NetworkXError, ValueError, KeyError,
          TypeError) as e:
    raise ValueError(f"not a GraphML document: {e}") from None
  return _cell_from_graph(g)


# Graphviz DOT.


def _dot_quote(value: str) -> str:
  return '"' + value.replace('"', '\\"') + '"'


def _dot_attrs(attrs: dict[str, str]) -> str:
  return ", ".join(f"{k}={_dot_quote(v)}" for k, v in attrs.items())


def to_dot(arch) -> str:
  """The cell as a Graphviz DOT digraph (render: ``dot -Tpng cell.dot``).

  Besides the Graphviz styles, each cell node carries an ``activation``
  attribute, which is what :func:`from_dot` reads.
  """
  arch = as_architecture(arch)
  g = _export_graph(arch)
  loose = {str(l) for l in arch.loose_ends()}
  lines = [
      f"// ENAS recurrent cell, tokens {arch} when written "
      "(nas_jax.analysis.cells).",
      "// Read back from the vertices, their 'activation' and the edges.",
      "digraph cell {",
      '  node [fontname="Helvetica", fontsize=11, style=filled];',
      '  edge [arrowsize=0.7];',
  ]
  for name, data in g.nodes(data=True):
    kind = data["kind"]
    attrs = {"kind": kind}
    if kind == "node":
      attrs["activation"] = data["activation"]
      attrs["label"] = _node_label(arch, int(name), "\n")
      attrs["shape"] = "ellipse"
      if name in loose:
        attrs.update(fillcolor=_COLORS["loose"], color=_LOOSE_EDGE,
                     penwidth="2")
      else:
        attrs["fillcolor"] = _COLORS["node"]
    else:
      attrs["label"] = data["label"]
      attrs["shape"] = "box"
      attrs["fillcolor"] = _COLORS[kind]
    # Graphviz reads \n in a label as a line break; _dot_quote keeps it.
    lines.append(f"  {_dot_quote(name)} [{_dot_attrs(attrs)}]"
                 .replace("\n", "\\n") + ";")
  for u, v in g.edges():
    style = (f" [{_dot_attrs({'style': 'dashed', 'color': _LOOSE_EDGE})}]"
             if v == MEAN else "")
    lines.append(f"  {_dot_quote(u)} -> {_dot_quote(v)}{style};")
  lines.append("}")
  return "\n".join(lines) + "\n"


_DOT_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>//[^\n]*|/\*.*?\*/|^[ \t]*\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*")
  | (?P<edgeop>->|--)
  | (?P<id>[A-Za-z_\u0080-\U0010ffff][A-Za-z_0-9\u0080-\U0010ffff]*
           |-?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?))
  | (?P<punct>[{}\[\]=;,:+<])
""", re.VERBOSE | re.DOTALL | re.MULTILINE)

_DOT_KEYWORDS = ("strict", "graph", "digraph", "node", "edge", "subgraph")


class _DotParser:
  """The part of the DOT language a cell needs: one digraph of node, edge
  and attribute statements (no subgraphs, ports or HTML labels)."""

  def __init__(self, text: str):
    self.tokens = []  # (kind, value, line)
    pos = 0
    while pos < len(text):
      m = _DOT_TOKEN.match(text, pos)
      if m is None:
        raise ValueError(
            f"not a cell's DOT: unexpected {text[pos:pos + 10]!r} on line "
            f"{text.count(chr(10), 0, pos) + 1}")
      kind = m.lastgroup
      line = text.count("\n", 0, pos) + 1
      pos = m.end()
      if kind in ("space", "comment"):
        continue
      value = m.group()
      if kind == "string":
        value = value[1:-1].replace("\\\n", "").replace('\\"', '"')
        kind = "id"
      elif kind == "id" and value.lower() in _DOT_KEYWORDS:
        kind, value = "keyword", value.lower()
      self.tokens.append((kind, value, line))
    self.i = 0
    self.graph = nx.DiGraph()
    self.node_defaults = {}

  def _peek(self, offset=0):
    i = self.i + offset
    return self.tokens[i] if i < len(self.tokens) else ("end", "", None)

  def _fail(self, message):
    _, value, line = self._peek()
    where = f"line {line}, at {value!r}" if line else "the end of the text"
    raise ValueError(f"not a cell's DOT: {message} ({where})")

  def _take(self, kind, value=None):
    tok = self._peek()
    if tok[0] != kind or (value is not None and tok[1] != value):
      self._fail(f"expected {value or kind}")
    self.i += 1
    return tok[1]

  def _accept(self, kind, value):
    if self._peek()[:2] == (kind, value):
      self.i += 1
      return True
    return False

  def parse(self) -> nx.DiGraph:
    if not self.tokens:
      raise ValueError("not a cell's DOT: the text is empty")
    self._accept("keyword", "strict")
    if self._peek()[:2] == ("keyword", "graph"):
      self._fail("a cell is a digraph, this is an undirected graph")
    self._take("keyword", "digraph")
    if self._peek()[0] == "id":
      self.i += 1
    self._take("punct", "{")
    while not self._accept("punct", "}"):
      self._statement()
      self._accept("punct", ";")
    if self._peek()[0] != "end":
      self._fail("text after the digraph's closing brace")
    return self.graph

  def _attr_list(self) -> dict[str, str]:
    attrs = {}
    while self._accept("punct", "["):
      while not self._accept("punct", "]"):
        key = self._take("id")
        self._take("punct", "=")
        attrs[key] = self._take("id")
        if not self._accept("punct", ","):
          self._accept("punct", ";")
    return attrs

  def _node_id(self) -> str:
    kind, value, _ = self._peek()
    if (kind, value) in (("keyword", "subgraph"), ("punct", "{")):
      self._fail("subgraphs are not part of a cell's DOT")
    if (kind, value) == ("punct", "<"):
      self._fail("HTML strings are not part of a cell's DOT")
    name = self._take("id")
    if self._peek()[:2] == ("punct", ":"):
      self._fail("ports are not part of a cell's DOT")
    if self._peek()[:2] == ("punct", "+"):
      self._fail("string concatenation is not part of a cell's DOT")
    if name not in self.graph:
      self.graph.add_node(name, **self.node_defaults)
    return name

  def _statement(self):
    kind, value, _ = self._peek()
    if kind == "keyword" and value in ("graph", "node", "edge"):
      self.i += 1
      attrs = self._attr_list()
      if value == "node":
        self.node_defaults.update(attrs)
      return
    if kind == "id" and self._peek(1)[:2] == ("punct", "="):
      self.i += 2
      self._take("id")  # A graph attribute.
      return
    chain = [self._node_id()]
    while self._peek()[0] == "edgeop":
      if self._take("edgeop") != "->":
        self._fail("a digraph's edges are '->'")
      chain.append(self._node_id())
    attrs = self._attr_list()
    if len(chain) == 1:
      self.graph.nodes[chain[0]].update(attrs)
    for u, v in zip(chain, chain[1:]):
      if self.graph.has_edge(u, v):
        self._fail(f"edge {u} -> {v} appears twice")
      self.graph.add_edge(u, v)


def from_dot(text: str) -> Architecture:
  """Reads a cell back from :func:`to_dot`'s text (or an edited copy).

  Accepts one ``digraph`` of node, edge and attribute statements, with
  comments, quoted or bare names and edge chains (``a -> b -> c``).

  Raises:
    ValueError: the text is not such a digraph, or the graph is not a cell.
  """
  return _cell_from_graph(_DotParser(text).parse())


# Drawing.


def _layout(g: nx.DiGraph) -> dict:
  """One row per topological generation, inputs at the top."""
  for layer, nodes in enumerate(nx.topological_generations(g)):
    for node in nodes:
      g.nodes[node]["layer"] = layer
  pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal")
  pos = {n: (x, -y) for n, (x, y) in pos.items()}
  if pos["x"][0] > pos["h_prev"][0]:  # x_t on the left, always.
    pos["x"], pos["h_prev"] = pos["h_prev"], pos["x"]
  return pos


def draw_cell(arch, ax=None, *, title: str | None = None, legend: bool = True):
  """Draws a cell on ``ax`` (a new figure when None) and returns ``ax``.

  Rows are topological generations: ``x_t`` and ``h_{t-1}`` (grey boxes) on
  top, each node labelled with its index and activation, the loose ends
  (orange, thick border, dashed edges) averaged into the output (green) at
  the bottom; node ``N-1`` is marked ``(h_t)``, the next hidden state.

  Args:
    arch: an :class:`Architecture`, a token sequence or a token string.
    ax: matplotlib axes to draw on; None makes a figure sized to the cell
      (the caller closes it, or use :func:`save_cell_figure`).
    title: the axes title; None gives ``"cell <tokens>"``.
    legend: whether to explain the colours in a legend right of the axes
      (False where cells share a figure, as in a grid of subplots).
  """
  arch = as_architecture(arch)
  g = arch.to_networkx()
  pos = _layout(g)
  rows = 1 + max(d["layer"] for _, d in g.nodes(data=True))
  width = max(len(gen) for gen in nx.topological_generations(g))
  if ax is None:
    _, ax = plt.subplots(figsize=(max(4.0, 1.4 * width + 1.5),
                                  max(4.0, 0.9 * rows + 1.0)))
  # Node sizes are in points: shrink them (and their labels) to the rows and
  # columns the axes has room for, so deep cells in small axes do not overlap.
  extent = ax.get_window_extent()
  points = 72.0 / ax.figure.dpi
  pitch = min(extent.height * points / (rows + 1),
              extent.width * points / (width + 1))
  diameter = min(30.0, 0.8 * pitch)
  size = diameter**2
  compact = diameter < 22.0  # Too small for three-line labels: use one line.
  font_size = max(4.0, min(7.0, diameter / (2.0 if compact else 4.3)))
  loose = set(arch.loose_ends())
  inner = [l for l in range(arch.num_nodes) if l not in loose]
  groups = (
      (list(INPUTS), dict(node_shape="s", node_color=_COLORS["input"],
                          edgecolors="grey", linewidths=1.0)),
      (inner, dict(node_shape="o", node_color=_COLORS["node"],
                   edgecolors="#4a6f9a", linewidths=1.0)),
      (sorted(loose), dict(node_shape="o", node_color=_COLORS["loose"],
                           edgecolors=_LOOSE_EDGE, linewidths=2.5)),
      ([MEAN, OUTPUT], dict(node_shape="s", node_color=_COLORS["mean"],
                            edgecolors="#4c8a4a", linewidths=1.0)),
  )
  for nodes, style in groups:
    nx.draw_networkx_nodes(g, pos, nodelist=nodes, ax=ax, node_size=size,
                           **style)
  into_mean = [(u, v) for u, v in g.edges() if v == MEAN]
  rest = [e for e in g.edges() if e[1] != MEAN]
  nx.draw_networkx_edges(g, pos, edgelist=rest, ax=ax, node_size=size,
                         arrowsize=font_size + 3, edge_color="#555555")
  nx.draw_networkx_edges(g, pos, edgelist=into_mean, ax=ax, node_size=size,
                         arrowsize=font_size + 3, edge_color=_LOOSE_EDGE,
                         style="dashed")
  labels = {"x": "$x_t$", "h_prev": "$h_{t-1}$", MEAN: "mean", OUTPUT: "out"}
  labels.update({l: _node_label(arch, l, " " if compact else "\n")
                 for l in range(arch.num_nodes)})
  nx.draw_networkx_labels(g, pos, labels=labels, ax=ax, font_size=font_size)
  if legend:
    _legend(ax)
  ax.set_title(f"cell {arch}" if title is None else title, fontsize=8)
  ax.margins(0.12)
  ax.axis("off")
  return ax


def _legend(ax):
  handles = [
      mlines.Line2D([], [], ls="", marker="s", ms=9, mfc=_COLORS["input"],
                    mec="grey", label="input"),
      mlines.Line2D([], [], ls="", marker="o", ms=9, mfc=_COLORS["node"],
                    mec="#4a6f9a", label="node: index, activation"),
      mlines.Line2D([], [], ls="", marker="o", ms=9, mfc=_COLORS["loose"],
                    mec=_LOOSE_EDGE, mew=2, label="loose end (averaged)"),
      mlines.Line2D([], [], ls="", marker="s", ms=9, mfc=_COLORS["mean"],
                    mec="#4c8a4a", label="mean of loose ends -> output"),
  ]
  ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
            fontsize=7, frameon=False)


def save_cell_figure(arch, path: str, *, title: str | None = None) -> str:
  """Draws a cell into ``path``, PNG, SVG or PDF by its suffix; returns it.

  Raises:
    ValueError: for another suffix.
  """
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in FIGURE_SUFFIXES:
    raise ValueError(f"cannot draw a cell into {path!r}: figures are "
                     f"{', '.join(FIGURE_SUFFIXES)}")
  ax = draw_cell(arch, title=title)
  fig = ax.figure
  try:
    fig.savefig(path, dpi=110, bbox_inches="tight")
  finally:
    plt.close(fig)
  return path


# Files.


def write_cell(arch, path: str, *, title: str | None = None) -> str:
  """Writes a cell to ``path`` in the format its suffix names; returns it.

  ``.graphml`` (:func:`to_graphml`), ``.dot``/``.gv`` (:func:`to_dot`),
  ``.png``/``.svg``/``.pdf`` (:func:`save_cell_figure`, with ``title``),
  ``.json`` (``Architecture.to_json``, which :func:`load_cell` reads).

  Raises:
    ValueError: for another suffix.
  """
  arch = as_architecture(arch)
  suffix = os.path.splitext(path)[1].lower()
  if suffix in FIGURE_SUFFIXES:
    return save_cell_figure(arch, path, title=title)
  if suffix in GRAPHML_SUFFIXES:
    text = to_graphml(arch)
  elif suffix in DOT_SUFFIXES:
    text = to_dot(arch)
  elif suffix in JSON_SUFFIXES:
    text = arch.to_json() + "\n"
  else:
    raise ValueError(
        f"cannot write a cell to {path!r}: the suffix must be one of "
        f"{', '.join(WRITE_SUFFIXES)}")
  files.atomic_write_text(path, text)
  return path


def _looks_like_tokens(spec: str) -> bool:
  return bool(spec.strip()) and re.fullmatch(r"[-0-9\s,]+", spec) is not None


def _from_json_file(path: str) -> Architecture:
  try:
    data = files.read_json(path)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not JSON: {e}") from None
  if isinstance(data, list):
    return Architecture.from_tokens(data)
  if isinstance(data, dict):
    if "tokens" in data:
      return Architecture.from_tokens(data["tokens"])
    if isinstance(data.get("arch"), str):
      return Architecture.from_tokens(data["arch"])
    raise ValueError(
        f"{path} has no cell: expected a 'tokens' list (as in "
        f"{files.BEST_ARCH_FILE}); its keys are {sorted(data)[:10]}")
  raise ValueError(f"{path} has no cell: expected a JSON object with a "
                   f"'tokens' list, got a {type(data).__name__}")


def load_cell(spec) -> Architecture:
  """The cell that ``spec`` names.

  Args:
    spec: a token string (``"0 0 1 1 2"``); a run directory (its
      ``best_arch.json``); or a file: ``.json`` (an object with ``"tokens"``
      such as ``best_arch.json``, or a list of tokens), ``.graphml``/``.xml``,
      ``.dot``/``.gv``, ``.txt`` (a token string). An ``Architecture`` or a
      token sequence is returned as a cell.

  Raises:
    FileNotFoundError: ``spec`` is neither a token string nor an existing
      path, or a run directory has no ``best_arch.json``.
    ValueError: the file is not a cell, naming the file and what is wrong.
  """
  if not isinstance(spec, (str, os.PathLike)):
    return as_architecture(spec)
  spec = os.fspath(spec)
  if not os.path.exists(spec):
    if _looks_like_tokens(spec):
      try:
        return Architecture.from_tokens(spec)
      except ValueError as e:
        raise ValueError(f"cell {spec!r}: {e}") from None
    raise FileNotFoundError(
        f"{spec!r} is neither a token string nor an existing file or run "
        "directory")
  path = spec
  if os.path.isdir(path):
    path = os.path.join(spec, files.BEST_ARCH_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"run directory {spec} has no {files.BEST_ARCH_FILE} (the search "
          f"writes it when it finishes; --derived draws the cells of "
          f"{files.DERIVED_FILE})")
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in READ_SUFFIXES:
    raise ValueError(f"cannot read a cell from {path}: the suffix must be one "
                     f"of {', '.join(READ_SUFFIXES)}, or give a run directory")
  try:
    if suffix in JSON_SUFFIXES:
      return _from_json_file(path)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    if suffix in DOT_SUFFIXES:
      return from_dot(text)
    if suffix == ".txt":
      return Architecture.from_tokens(text)
    return from_graphml(text)
  except ValueError as e:
    message = str(e)
    raise ValueError(message if path in message else f"{path}: {message}"
                     ) from None


def derived_cells(run_dir: str) -> list[tuple[int, Architecture, float | None]]:
  """``(epoch, kept cell, its derive ppl)`` per line of ``derived.jsonl``.

  Raises:
    FileNotFoundError: the run directory has no ``derived.jsonl``.
    ValueError: a line is not a derive record, naming the line.
  """
  path = os.path.join(run_dir, files.DERIVED_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{run_dir} has no {files.DERIVED_FILE}")
  out = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        best = record["best"]
        cell = Architecture.from_tokens(record["cells"][best])
        ppl = record.get("ppl")
        out.append((int(record["epoch"]), cell,
                    ppl[best] if isinstance(ppl, list) else None))
      except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{path} line {number} is not a derive record with "
                         f"'epoch', 'best' and 'cells': {e!r}") from None
  if not out:
    raise ValueError(f"{path} has no derive records")
  return out


# Command line.


class _ArgumentParser(argparse.ArgumentParser):
  """Usage errors as one ``error:`` line, exit status 2."""

  def error(self, message):
    raise _UsageError(message)


class _UsageError(Exception):
  pass


def _spec_name(spec: str) -> str:
  """A file name stem for the cell ``spec`` names."""
  if not os.path.exists(spec):
    return "cell_" + "-".join(spec.replace(",", " ").split())
  path = os.path.normpath(os.path.abspath(spec))
  if os.path.isdir(path):
    return os.path.basename(path)
  stem = os.path.splitext(os.path.basename(path))[0]
  if stem == os.path.splitext(files.BEST_ARCH_FILE)[0]:
    return os.path.basename(os.path.dirname(path)) or stem
  return stem


def _unique(name: str, used: set[str]) -> str:
  candidate, i = name, 2
  while candidate in used:
    candidate, i = f"{name}_{i}", i + 1
  used.add(candidate)
  return candidate


def _build_parser() -> argparse.ArgumentParser:
  formats = sorted(s[1:] for s in WRITE_SUFFIXES)
  parser = _ArgumentParser(
      prog="python -m nas_jax.analysis.cells",
      description="Draw or export ENAS cells (see the module docstring).",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__[__doc__.index("Command line"):] if __doc__ else None)
  parser.add_argument(
      "specs", nargs="*", metavar="SPEC",
      help="a token string, best_arch.json, a JSON with 'tokens', a "
      ".graphml or .dot file, or a run directory")
  parser.add_argument(
      "-o", "--out", required=True, metavar="OUT",
      help="the file to write (one cell, format from its suffix) or a "
      "directory (several cells, or --derived)")
  parser.add_argument(
      "--format", choices=formats, default=None,
      help="output format; default: OUT's suffix, or png into a directory")
  parser.add_argument(
      "--derived", metavar="RUN_DIR", default=None,
      help="also write the cell each derive kept (derived.jsonl), one file "
      "per epoch, into the directory OUT")
  return parser


def _run(argv: Sequence[str]) -> list[str]:
  """Writes what ``argv`` asks for; returns the paths written."""
  args = _build_parser().parse_args(argv)
  if not args.specs and args.derived is None:
    raise _UsageError("give at least one SPEC or --derived RUN_DIR")
  out = args.out
  suffix = os.path.splitext(out)[1].lower()
  into_file = (not os.path.isdir(out) and suffix in WRITE_SUFFIXES)
  if into_file:
    if args.format is not None and "." + args.format != suffix:
      raise _UsageError(f"--format {args.format} disagrees with OUT {out!r}")
    if len(args.specs) != 1 or args.derived is not None:
      raise _UsageError(
          f"OUT {out!r} is one file; several cells or --derived need OUT to "
          "be a directory")
    cell = load_cell(args.specs[0])
    parent = os.path.dirname(out)
    if parent and not os.path.isdir(parent):
      raise FileNotFoundError(f"the directory of OUT {out!r} does not exist")
    return [write_cell(cell, out)]
  if suffix and not os.path.isdir(out) and suffix not in WRITE_SUFFIXES:
    raise _UsageError(
        f"OUT {out!r} has suffix {suffix!r}; formats are "
        f"{', '.join(WRITE_SUFFIXES)} (or give a directory)")
  fmt = args.format or "png"
  # Read everything first: a bad SPEC writes nothing.
  jobs = []
  used = set()
  for spec in args.specs:
    jobs.append((load_cell(spec), _unique(_spec_name(spec), used), None))
  if args.derived is not None:
    for epoch, cell, ppl in derived_cells(args.derived):
      what = f", derive ppl {ppl:.2f}" if isinstance(ppl, (int, float)) else ""
      jobs.append((cell, _unique(f"derived_epoch{epoch:03d}", used),
                   f"epoch {epoch}: kept cell {cell}{what}"))
  os.makedirs(out, exist_ok=True)
  return [write_cell(cell, os.path.join(out, f"{name}.{fmt}"), title=title)
          for cell, name, title in jobs]


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (2 for bad input)."""
  try:
    written = _run(sys.argv[1:] if argv is None else argv)
  except (_UsageError, ValueError, OSError) as e:
    message = str(e) if not isinstance(e, OSError) or e.filename is None \
        else f"{e.strerror}: {e.filename}"
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return 2
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
