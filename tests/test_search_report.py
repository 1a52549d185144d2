"""Tests for nas_jax.analysis.search_report: the search section of report.md."""

import json
import os

import ml_collections

from nas_jax import files
from nas_jax.analysis import search_report

CELL_A = [0, 0, 1, 1, 2, 1, 3]
CELL_B = [2, 0, 0, 1, 3, 1, 2]


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _config(algorithm):
  return ml_collections.ConfigDict({"search": {"algorithm": algorithm},
                                    "train": {"epochs": 2}})


def _run_dir(tmp_path, *, controller=True, finished=True):
  """A run directory as the loop writes it: two epochs, a derive each."""
  d = str(tmp_path / "run")
  os.makedirs(d)
  metrics = [
      {"epoch": 1, "shared_step": 2, "train/ppl": 900.0, "time": 1.0},
      {"epoch": 1, "shared_step": 4, "train/ppl": None, "time": 2.0},
  ]
  if controller:
    metrics += [{"epoch": 1, "ctrl_step": 2, "ctrl/reward": 0.1,
                 "ctrl/entropy": 7.0, "ctrl/sampled_ppl": None,
                 "ctrl/sampled_log_ppl": 800.0, "time": 3.0},
                {"epoch": 2, "ctrl_step": 4, "ctrl/reward": 0.2,
                 "ctrl/entropy": 6.5, "ctrl/sampled_ppl": 700.0,
                 "ctrl/sampled_log_ppl": 6.55, "time": 4.0}]
  metrics += [{"epoch": 1, "shared_step": 4, "valid/ppl": 850.0},
              {"epoch": 2, "shared_step": 8, "valid/ppl": 640.5}]
  _write_jsonl(os.path.join(d, files.METRICS_FILE), metrics)
  _write_jsonl(os.path.join(d, files.DERIVED_FILE), [
      {"epoch": 1, "best": 1, "cells": [CELL_B, CELL_A], "ppl": [None, 900.0]},
      {"epoch": 2, "best": 0, "cells": [CELL_B, CELL_B], "ppl": [700.0, 700.0]},
  ])
  if finished:
    files.write_json(os.path.join(d, files.BEST_ARCH_FILE), {
        "epoch": 2, "tokens": CELL_B, "arch": " ".join(map(str, CELL_B)),
        "valid_ppl": 640.5, "valid_tokens": 73760, "test_ppl": 610.25,
        "test_tokens": 82430})
  return d


def test_section_shows_the_returned_cell_derives_and_curves(tmp_path):
  """The returned cell with valid/test ppl, one row per derive, figures."""
  d = _run_dir(tmp_path)
  text = search_report.section(d, _config("enas"))
  assert text.startswith(f"# Run `{d}`\n\n## The search\n")
  assert "ENAS" in text and "2 epochs" in text
  assert "`2 0 0 1 3 1 2`" in text
  assert "640.5 (73,760 tokens)" in text and "610.2" in text
  assert "| 1 | `0 0 1 1 2 1 3` | 900.0 | 850.0 | 2 of 2 |" in text
  assert "| 2 | `2 0 0 1 3 1 2` | 700.0 | 640.5 | 1 of 2 |" in text
  for name in ("best_cell.png", "derived_cells.png", "search_curves.png"):
    assert f"figures/{name}" in text
    with open(os.path.join(d, "figures", name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_unfinished_random_search_has_no_returned_cell_nor_controller(
    tmp_path):
  """Before the end: no returned cell; random search: no controller curves."""
  d = _run_dir(tmp_path, controller=False, finished=False)
  logs = search_report.load_logs(d)
  assert logs["best"] is None
  text = search_report.section(d, _config("random_ws"))
  assert "has not finished" in text and "Random search" in text
  assert not os.path.exists(os.path.join(d, "figures", "best_cell.png"))
  assert "search_curves.png" in text


def test_null_values_are_left_out_of_the_curves(tmp_path):
  """A null (overflowed) ppl is no point of its curve."""
  d = _run_dir(tmp_path)
  rows = search_report.load_logs(d)["metrics"]
  assert search_report._series(rows, "shared_step", "train/ppl") == (
      [2], [900.0])
  assert search_report._series(rows, "ctrl_step", "ctrl/sampled_ppl") == (
      [4], [700.0])


def test_write_report_writes_only_the_search(tmp_path):
  d = _run_dir(tmp_path)
  path = search_report.write_report(d, _config("fixed"))
  with open(path) as f:
    text = f.read()
  assert path == os.path.join(d, files.REPORT_FILE)
  assert text == search_report.section(d, _config("fixed"))
  assert "One fixed cell" in text and "proposes cells" not in text
