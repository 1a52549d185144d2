"""What every report shares: its files, its Markdown tables and numbers.

Every report (a run's probe, :mod:`nas_jax.analysis.probe_analysis`; the
comparisons across runs, :mod:`nas_jax.analysis.buffer_comparison` and
:mod:`nas_jax.analysis.enas_vs_random`) writes its figures into
:func:`figures_dir`, then ``results.json`` and ``report.md`` (:func:`write`);
its tables are :func:`markdown_table` and a missing number in them is ``n/a``
(:func:`number`). The comparisons read numbers back from their runs' JSON
files with :func:`float_or_nan`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from nas_jax import files


def figures_dir(directory: str) -> str:
  """``directory/figures``, created if missing."""
  path = os.path.join(directory, files.FIGURES_DIR)
  os.makedirs(path, exist_ok=True)
  return path


def write(directory: str, results: dict[str, Any], report: str) -> None:
  """``results.json`` (:func:`nas_jax.files.jsonable` of ``results``, so keys
  starting with ``"_"`` are left out) and ``report.md`` in ``directory``."""
  files.write_json(os.path.join(directory, files.RESULTS_FILE),
                   files.jsonable(results), indent=1)
  files.atomic_write_text(os.path.join(directory, files.REPORT_FILE), report)


def float_or_nan(value) -> float:
  """A number read back from a JSON file: ``None`` (how
  :func:`nas_jax.files.jsonable` writes NaN and inf, or a missing value)
  becomes NaN."""
  return math.nan if value is None else float(value)


def markdown_table(header: Sequence[str],
                   rows: Iterable[Sequence[str]]) -> str:
  """A Markdown table: the header, a ``|---|`` separator, then the rows.

  Each line is ``| a | b |``; an empty cell is written ``| |``. Rows are
  written as given (a shorter row is not padded). No trailing newline.

  Args:
    header: the column titles.
    rows: the cells of each row, as text.
  """
  lines = [_row(header), "|" + "---|" * len(header)]
  lines.extend(_row(cells) for cells in rows)
  return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
  return "|" + "".join(f" {c} |" if c else " |" for c in cells)


def number(value, spec: str) -> str:
  """``value`` formatted with ``spec``; ``n/a`` for None, NaN or inf."""
  return "n/a" if value is None or not np.isfinite(value) else format(
      value, spec)
