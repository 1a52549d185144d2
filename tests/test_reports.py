"""What every report shares: its files, Markdown tables and numbers."""

import math
import os

import numpy as np

from nas_jax.analysis import reports


def test_markdown_table_exact_text():
  """Header, separator, rows; an empty cell is `| |`; no trailing newline."""
  text = reports.markdown_table(["metric", "seed 0", "seed 1"],
                               [["wl_kernel", "+0.120", "-0.050"],
                                ["mean", "+0.035", ""]])
  assert text == ("| metric | seed 0 | seed 1 |\n"
                  "|---|---|---|\n"
                  "| wl_kernel | +0.120 | -0.050 |\n"
                  "| mean | +0.035 | |")


def test_markdown_table_without_rows_and_short_rows():
  """No rows gives the header and separator; short rows are not padded."""
  assert reports.markdown_table(["a", "b"], []) == "| a | b |\n|---|---|"
  assert reports.markdown_table(["a", "b"], [["x"]]).endswith("\n| x |")


def test_number_formats_finite_values_and_marks_missing_ones():
  assert reports.number(0.12345, "+.3f") == "+0.123"
  assert reports.number(np.float32(2.5), ".1f") == "2.5"
  assert reports.number(3, ".3g") == "3"
  for missing in (None, math.nan, math.inf, -np.inf):
    assert reports.number(missing, ".2f") == "n/a"


def test_float_or_nan_reads_json_numbers():
  assert math.isnan(reports.float_or_nan(None))
  assert reports.float_or_nan(3) == 3.0 and reports.float_or_nan(0.5) == 0.5


def test_write_and_figures_dir(tmp_path):
  """results.json through files.jsonable (indent 1, trailing newline),
  report.md verbatim, figures/ created."""
  directory = str(tmp_path)
  fig_dir = reports.figures_dir(directory)
  assert os.path.isdir(fig_dir) and fig_dir == os.path.join(directory,
                                                            "figures")
  reports.write(directory, {"rho": np.float64(np.nan), "n": np.int64(3),
                            "_matrix": np.eye(2)}, "# Report\n")
  with open(os.path.join(directory, "results.json")) as f:
    assert f.read() == '{\n "rho": null,\n "n": 3\n}\n'
  with open(os.path.join(directory, "report.md")) as f:
    assert f.read() == "# Report\n"
