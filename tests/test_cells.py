"""Tests for nas_jax.analysis.cells: drawings, GraphML/DOT round trips, CLI."""

import json
import os
import shutil
import subprocess
import sys

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
import pytest

from conftest import random_tokens
from nas_jax import files
from nas_jax import search_space
from nas_jax.analysis import cells

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Architecture = search_space.Architecture

# Node l reads node 0 for every l: loose ends 1..4.
STAR = Architecture.from_tokens("1 0 2 0 3 0 0 0 1")


def _cases():
  rng = np.random.default_rng(0)
  named = [
      ("one_node", search_space.chain(1, activation=3)),
      ("chain_4", search_space.chain(4)),
      ("chain_12", search_space.chain(12, activation=2)),
      ("star_loose_ends", STAR),
      ("enas_ptb", search_space.ENAS_PTB_CELL),
  ]
  named += [(f"random_4_{i}", Architecture.from_tokens(t))
            for i, t in enumerate(random_tokens(rng, 4, 3))]
  named += [(f"random_12_{i}", Architecture.from_tokens(t))
            for i, t in enumerate(random_tokens(rng, 12, 3))]
  return [pytest.param(a, id=name) for name, a in named]


CASES = _cases()


def test_star_has_several_loose_ends():
  assert STAR.loose_ends() == (1, 2, 3, 4)


@pytest.mark.parametrize("arch", CASES)
def test_graphml_round_trip(arch):
  assert cells.from_graphml(cells.to_graphml(arch)) == arch


@pytest.mark.parametrize("arch", CASES)
def test_dot_round_trip(arch):
  assert cells.from_dot(cells.to_dot(arch)) == arch


def test_exports_accept_tokens_and_strings():
  arch = search_space.ENAS_PTB_CELL
  assert cells.to_dot(arch.tokens()) == cells.to_dot(arch)
  assert cells.to_graphml(str(arch)) == cells.to_graphml(arch)


def test_graphml_is_read_by_networkx(tmp_path):
  arch = search_space.ENAS_PTB_CELL
  path = tmp_path / "cell.graphml"
  path.write_text(cells.to_graphml(arch), encoding="utf-8")
  g = nx.read_graphml(path)
  expected = arch.to_networkx()
  assert set(g.nodes) == {str(n) for n in expected.nodes}
  assert set(g.edges) == {(str(u), str(v)) for u, v in expected.edges}
  for l, name in enumerate(arch.activation_names()):
    assert g.nodes[str(l)]["activation"] == name
  assert "activation" not in g.nodes["x"]
  assert g.nodes["avg"]["kind"] == "mean"


def test_edited_graphml_is_an_edited_cell():
  text = cells.to_graphml("0 0 1")  # Node 1 is the only relu.
  assert cells.from_graphml(text.replace(">relu<", ">sigmoid<")) == \
      Architecture.from_tokens("0 0 3")


def test_edited_dot_is_an_edited_cell():
  # 0 0 1 0 2: nodes 1 and 2 both read node 0. Make node 2 read node 1.
  text = cells.to_dot("0 0 1 0 2").replace('"0" -> "2"', '"1" -> "2"')
  text = text.replace('"1" -> "avg"', "// no longer a loose end")
  assert cells.from_dot(text) == Architecture.from_tokens("0 0 1 1 2")


def test_from_dot_reads_hand_written_variants():
  text = """
  /* A hand-written cell. */
  strict digraph G {
    node [activation=tanh]   // A default: applies to the nodes after it.
    x -> 0 -> 1 -> avg -> out; h_prev -> 0
    0 -> 2 -> avg
    2 [activation="identity", label="anything"]
  }
  """
  assert cells.from_dot(text) == Architecture.from_tokens("0 0 0 0 2")


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("hello world", "expected digraph"),
    ("graph g { a -- b }", "undirected"),
    ("digraph { x -> \"0 }", "unexpected"),
    ("digraph {}", "missing"),
    ("digraph { x -> 0; h_prev -> 0; 0 -> avg -> out; 0 -> foo }",
     "unexpected vertices ['foo']"),
    ("digraph { x -> 0; h_prev -> 0; 0 -> avg -> out; 0 [activation=gelu] }",
     "activation 'gelu'"),
    ("digraph { x -> 0 -> avg -> out; h_prev; 0 [activation=tanh] }",
     "missing h_prev -> 0"),
    ("digraph { node [activation=relu]; x -> 0; h_prev -> 0; 0 -> 2; "
     "2 -> avg -> out }", "numbered 0..N-1"),
    ("digraph { subgraph s { x -> 0 } }", "subgraphs"),
    ("digraph { x:p -> 0 }", "ports"),
    ("digraph { x -> 0; x -> 0 }", "appears twice"),
    ("digraph { } trailing", "after the digraph"),
])
def test_from_dot_rejects_what_is_not_a_cell(text, fragment):
  with pytest.raises(ValueError) as info:
    cells.from_dot(text)
  assert fragment in str(info.value)


@pytest.mark.parametrize("edit, fragment", [
    # A node with two parents.
    (lambda t: t.replace('"0" -> "1";', '"0" -> "1";\n  "x" -> "1";'),
     "exactly one earlier node"),
    # A node reading a later one.
    (lambda t: t.replace('"0" -> "1";', '"2" -> "1";'), "may only read"),
    # avg fed by a node that is not a loose end.
    (lambda t: t.replace('"avg" -> "out";', '"avg" -> "out"; "0" -> "avg";'),
     "unexpected 0 -> avg"),
    # A loose end that no longer feeds avg.
    (lambda t: t.replace('"2" -> "avg"', "// cut"), "missing 2 -> avg"),
])
def test_from_dot_rejects_edits_that_break_the_cell(edit, fragment):
  text = edit(cells.to_dot("0 0 1 1 2"))
  with pytest.raises(ValueError) as info:
    cells.from_dot(text)
  assert fragment in str(info.value)


@pytest.mark.parametrize("text", [
    "not xml", "<graphml/>", cells.to_graphml("0 0 1").replace(">relu<",
                                                               ">gelu<")])
def test_from_graphml_rejects_what_is_not_a_cell(text):
  with pytest.raises(ValueError):
    cells.from_graphml(text)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz not found")
def test_graphviz_renders_the_dot(tmp_path):
  path = tmp_path / "cell.dot"
  path.write_text(cells.to_dot(search_space.ENAS_PTB_CELL), encoding="utf-8")
  proc = subprocess.run(["dot", "-Tpng", str(path), "-o",
                         str(tmp_path / "cell.png")],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ""
  assert (tmp_path / "cell.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("suffix, magic", [
    (".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<svg")])
def test_save_cell_figure_writes_the_suffix_format(tmp_path, suffix, magic):
  path = str(tmp_path / f"cell{suffix}")
  assert cells.save_cell_figure(STAR, path, title="a star") == path
  data = open(path, "rb").read()
  assert magic in data[:400]
  assert not plt.get_fignums()  # The figure was closed.


def test_save_cell_figure_rejects_unknown_suffix(tmp_path):
  with pytest.raises(ValueError, match=r"\.png"):
    cells.save_cell_figure(STAR, str(tmp_path / "cell.bmp"))
  assert not os.listdir(tmp_path)


def test_draw_cell_labels_nodes_inputs_and_loose_ends():
  fig, ax = plt.subplots()
  try:
    assert cells.draw_cell("0 0 1 0 2", ax, title="t") is ax
    texts = {t.get_text() for t in ax.texts}
    assert {"$x_t$", "$h_{t-1}$", "mean", "out", "0\ntanh", "1\nrelu",
            "2\nidentity\n(h_t)"} <= texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("loose end" in t for t in legend)
    assert ax.get_title() == "t"
  finally:
    plt.close(fig)


def test_draw_cell_fits_deep_cells_into_small_axes():
  fig, ax = plt.subplots(figsize=(3, 3))
  try:
    cells.draw_cell(search_space.chain(12), ax, legend=False)
    texts = {t.get_text() for t in ax.texts}
    assert "11 tanh (h_t)" in texts  # One-line labels on small nodes.
    assert max(t.get_fontsize() for t in ax.texts) <= 7
    assert ax.get_legend() is None
  finally:
    plt.close(fig)


@pytest.mark.parametrize("name", ["c.graphml", "c.dot", "c.gv", "c.json"])
def test_write_cell_then_load_cell(tmp_path, name):
  arch = search_space.ENAS_PTB_CELL
  path = str(tmp_path / name)
  assert cells.write_cell(arch, path) == path
  assert cells.load_cell(path) == arch


def test_write_cell_rejects_unknown_suffix(tmp_path):
  with pytest.raises(ValueError, match="suffix"):
    cells.write_cell(STAR, str(tmp_path / "cell.yaml"))


def _run_dir(tmp_path, arch=search_space.ENAS_PTB_CELL):
  run = tmp_path / "run"
  run.mkdir()
  files.write_json(str(run / files.BEST_ARCH_FILE), {
      "tokens": arch.tokens().tolist(), "arch": str(arch),
      "valid_ppl": 81.5, "test_ppl": 78.25, "epoch": 3})
  lines = [{"epoch": 1, "best": 1, "cells": [[0, 0, 1], [2, 0, 3]],
            "ppl": [120.0, 95.5]},
           {"epoch": 2, "best": 0, "cells": [[1, 0, 1, 1, 0]], "ppl": [None]}]
  (run / files.DERIVED_FILE).write_text(
      "".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
  return run


def test_load_cell_from_best_arch_run_dir_and_tokens(tmp_path):
  run = _run_dir(tmp_path)
  arch = search_space.ENAS_PTB_CELL
  assert cells.load_cell(str(run / files.BEST_ARCH_FILE)) == arch
  assert cells.load_cell(str(run)) == arch
  assert cells.load_cell(run) == arch  # A pathlib.Path.
  assert cells.load_cell(str(arch)) == arch
  assert cells.load_cell("0, 0, 1") == Architecture.from_tokens([0, 0, 1])


def test_load_cell_from_results_json(tmp_path):
  path = tmp_path / "results.json"
  path.write_text(json.dumps({"tokens": [3, 0, 1], "ppl": 90.0}))
  assert cells.load_cell(str(path)) == Architecture.from_tokens("3 0 1")


def test_load_cell_errors_name_what_is_wrong(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a token string"):
    cells.load_cell(str(tmp_path / "missing.json"))
  with pytest.raises(FileNotFoundError, match=files.BEST_ARCH_FILE):
    cells.load_cell(str(tmp_path))
  with pytest.raises(ValueError, match="valid activations"):
    cells.load_cell("0 0 7")
  no_tokens = tmp_path / "metrics.json"
  no_tokens.write_text(json.dumps({"ppl": 1.0}))
  with pytest.raises(ValueError, match="metrics.json.*'tokens'"):
    cells.load_cell(str(no_tokens))
  broken = tmp_path / "broken.dot"
  broken.write_text("digraph {")
  with pytest.raises(ValueError, match="broken.dot"):
    cells.load_cell(str(broken))
  with pytest.raises(ValueError, match="suffix"):
    cells.load_cell(str(no_tokens.rename(tmp_path / "metrics.yaml")))


def test_derived_cells_are_the_kept_ones(tmp_path):
  run = _run_dir(tmp_path)
  got = cells.derived_cells(str(run))
  assert [(e, str(a), p) for e, a, p in got] == [
      (1, "2 0 3", 95.5), (2, "1 0 1 1 0", None)]


def test_main_writes_a_directory_with_derived_figures(tmp_path, capsys):
  run = _run_dir(tmp_path)
  out = tmp_path / "out"
  status = cells.main([str(run), "0 0 1", "-o", str(out), "--format", "dot",
                       "--derived", str(run)])
  assert status == 0
  assert sorted(os.listdir(out)) == [
      "cell_0-0-1.dot", "derived_epoch001.dot", "derived_epoch002.dot",
      "run.dot"]
  assert cells.load_cell(str(out / "run.dot")) == search_space.ENAS_PTB_CELL
  assert cells.load_cell(str(out / "derived_epoch001.dot")) == \
      Architecture.from_tokens("2 0 3")
  assert len(capsys.readouterr().out.splitlines()) == 4


@pytest.mark.parametrize("args, fragment", [
    (["nope", "-o", "{tmp}/c.png"], "'nope'"),
    (["0 0 1", "-o", "{tmp}/c.txt"], "'.txt'"),
    (["0 0 1", "1 0 1", "-o", "{tmp}/c.png"], "directory"),
    (["0 0 1", "-o", "{tmp}/c.png", "--format", "svg"], "disagrees"),
    (["0 0 1"], "-o/--out"),
    (["-o", "{tmp}/d"], "at least one SPEC"),
])
def test_main_bad_input_is_one_error_line(tmp_path, capsys, args, fragment):
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  assert cells.main(args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:"), err
  assert fragment in err[0]
  assert not os.listdir(tmp_path)


def _cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "nas_jax.analysis.cells", *args], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=120)


def test_cli_writes_a_figure(tmp_path):
  run = _run_dir(tmp_path)
  out = tmp_path / "cell.png"
  proc = _cli(str(run), "-o", str(out))
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == str(out)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_spec_is_one_error_line(tmp_path):
  proc = _cli("0 0 9", "-o", str(tmp_path / "cell.png"))
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
  assert "'0 0 9'" in lines[0]
  assert not os.listdir(tmp_path)
