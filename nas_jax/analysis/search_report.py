"""The search section of a run's report: what the search found, how it went.

Reads a run directory's logs (:mod:`nas_jax.metrics`: ``metrics.jsonl``,
``derived.jsonl``, ``best_arch.json``) and returns the Markdown that opens
its ``report.md`` (:func:`section`): the cell the search returned, drawn,
with its validation and test perplexity; the cell kept at every derive; and
the curves of the search, drawn into the run's ``figures/``:

* ``best_cell.png``: the returned cell (:func:`nas_jax.analysis.cells.draw_cell`);
* ``derived_cells.png``: the cell kept at each derive, with its valid ppl;
* ``search_curves.png``: train ppl per shared step; the controller's reward,
  entropy and the geometric-mean ppl of its sampled cells per controller
  step (ENAS only); valid ppl of the kept cell per derive.

The probe's report (``enas_probe``, ``memory_buffer`` runs) puts its own
sections after this one; ``random_ws`` and ``train_fixed`` runs write it
alone (:func:`write_report`).
"""

from __future__ import annotations

import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # Files only; no display on batch machines.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top

from nas_jax import files  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import cells  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import reports  # pylint: disable=g-import-not-at-top

_ALGORITHMS = {
    "enas": "ENAS (controller trained with REINFORCE)",
    "random_ws": "random search with weight sharing",
    "fixed": "one fixed cell trained alone",
}


def _jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def load_logs(run_dir: str) -> dict:
  """The run's ``metrics`` and ``derived`` rows and its ``best`` record
  (``None`` before the search ends)."""
  best_path = os.path.join(run_dir, files.BEST_ARCH_FILE)
  return {
      "metrics": _jsonl(os.path.join(run_dir, files.METRICS_FILE)),
      "derived": _jsonl(os.path.join(run_dir, files.DERIVED_FILE)),
      "best": (files.read_json(best_path) if os.path.exists(best_path)
               else None),
  }


def _series(rows: list[dict], counter: str, key: str):
  """``(steps, values)`` of ``key`` in the rows indexed by ``counter``;
  null (non-finite) values are left out."""
  points = [(r[counter], r[key]) for r in rows
            if counter in r and r.get(key) is not None]
  return [p[0] for p in points], [p[1] for p in points]


def _derives(logs: dict) -> list[dict]:
  """One record per derive: epoch, kept cell, its batch and valid ppl."""
  valid = {r["epoch"]: r["valid/ppl"] for r in logs["metrics"]
           if "valid/ppl" in r}
  out = []
  for d in logs["derived"]:
    out.append({"epoch": d["epoch"], "tokens": d["cells"][d["best"]],
                "batch_ppl": d["ppl"][d["best"]],
                "valid_ppl": valid.get(d["epoch"]),
                "unique": len({tuple(c) for c in d["cells"]}),
                "num_cells": len(d["cells"])})
  return out


def _grid(n: int, cols: int, width: float, height: float):
  """A figure of ``n`` panels, ``cols`` per row: ``(fig, the n axes)``;
  the grid's unused axes are hidden."""
  cols = min(cols, n)
  rows = math.ceil(n / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                           squeeze=False)
  for ax in axes.ravel()[n:]:
    ax.axis("off")
  return fig, axes.ravel()[:n]


def _save(fig, fig_dir: str, name: str, dpi: int = 110) -> str:
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name), dpi=dpi)
  plt.close(fig)
  return name


def curves(logs: dict, fig_dir: str) -> str | None:
  """``search_curves.png``; ``None`` when the run has logged nothing."""
  rows = logs["metrics"]
  panels = []
  steps, ppl = _series(rows, "shared_step", "train/ppl")
  if steps:
    panels.append(("shared step", "train ppl (window mean loss)", steps, ppl,
                   True))
  for key, label in (("ctrl/reward", "controller reward"),
                     ("ctrl/entropy", "controller entropy (nats)"),
                     ("ctrl/sampled_ppl", "sampled cells' ppl (geo. mean)")):
    steps, values = _series(rows, "ctrl_step", key)
    if steps:
      panels.append(("controller step", label, steps, values,
                     key == "ctrl/sampled_ppl"))
  derives = [d for d in _derives(logs) if d["valid_ppl"] is not None]
  if derives:
    panels.append(("epoch", "valid ppl of the derived cell",
                   [d["epoch"] for d in derives],
                   [d["valid_ppl"] for d in derives], True))
  if not panels:
    return None
  fig, axes = _grid(len(panels), 3, 4.2, 3.2)
  for ax, (xlabel, ylabel, x, y, log) in zip(axes, panels):
    ax.plot(x, y, "o-" if len(x) < 20 else "-", ms=3, lw=1.2)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if not log:
      ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel(xlabel)
    ax.set_title(ylabel, fontsize=9)
    if log:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
  return _save(fig, fig_dir, "search_curves.png")


def derived_cells(derives: list[dict], fig_dir: str) -> str | None:
  """``derived_cells.png``: the kept cell of every derive, side by side."""
  if not derives:
    return None
  fig, axes = _grid(len(derives), 3, 5.0, 4.6)
  for ax, d in zip(axes, derives):
    valid = reports.number(d["valid_ppl"], ".1f")
    cells.draw_cell(d["tokens"], ax=ax,
                    title=f"epoch {d['epoch']}: valid ppl {valid}")
  return _save(fig, fig_dir, "derived_cells.png")


def _split(best: dict, split: str) -> str:
  """``591.4 (73,664 tokens)``: the ppl and the tokens it covers."""
  value = best.get(f"{split}_ppl")
  if value is None:
    return "n/a"
  tokens = best.get(f"{split}_tokens")
  where = f" ({tokens:,} tokens)" if tokens else ""
  return f"{value:.1f}{where}"


def section(run_dir: str, config=None) -> str:
  """The Markdown of the search section, with its figures written into
  ``run_dir/figures``; links are relative to ``run_dir``."""
  logs = load_logs(run_dir)
  fig_dir = reports.figures_dir(run_dir)
  fig = files.FIGURES_DIR
  algorithm = config.search.algorithm if config is not None else None
  epochs = config.train.epochs if config is not None else None
  lines = [f"# Run `{run_dir}`", "", "## The search", ""]
  what = _ALGORITHMS.get(algorithm, "search")
  lines.append(what[0].upper() + what[1:]
               + (f", {epochs} epochs" if epochs else "") + ".")
  lines.append("")
  best = logs["best"]
  if best is None:
    lines.append("The search has not finished: no returned cell yet.")
  else:
    cells.save_cell_figure(best["tokens"], os.path.join(fig_dir,
                                                        "best_cell.png"),
                           title=f"returned cell: {best['arch']}")
    lines += [
        f"**Returned cell** (the last derive's, epoch {best['epoch']}; "
        "perplexities with the shared weights from a zero initial carry, "
        "over the tokens counted: the whole split in whole batches, or its "
        "first `eval.max_windows` windows):",
        "",
        f"`{best['arch']}`",
        "",
        reports.markdown_table(
            ["valid ppl", "test ppl"],
            [[_split(best, "valid"), _split(best, "test")]]),
        "",
        f"![returned cell]({fig}/best_cell.png)",
        "",
    ]
  derives = _derives(logs)
  if derives:
    how = ("The cell is evaluated on the validation split at each derive."
           if algorithm == "fixed" else
           "At each derive the controller (ENAS) or the sampler (random "
           "search) proposes cells; the best on one validation batch is "
           "kept and evaluated on the validation split.")
    lines += ["### Derived cells", "", how, ""]
    lines.append(reports.markdown_table(
        ["epoch", "kept cell", "batch ppl", "valid ppl", "distinct proposals"],
        [[str(d["epoch"]), f"`{' '.join(map(str, d['tokens']))}`",
          reports.number(d["batch_ppl"], ".1f"),
          reports.number(d["valid_ppl"], ".1f"),
          f"{d['unique']} of {d['num_cells']}"] for d in derives]))
    name = derived_cells(derives, fig_dir)
    lines += ["", f"![derived cells]({fig}/{name})", ""]
  name = curves(logs, fig_dir)
  if name:
    lines += ["### Curves", "",
              "From `metrics.jsonl` (one point per logging window; the "
              "sampled cells' ppl is the geometric mean of the window's "
              "cells).", "", f"![search curves]({fig}/{name})", ""]
  return "\n".join(lines) + "\n"


def write_report(run_dir: str, config=None) -> str:
  """Writes ``report.md`` holding only the search section; returns its path."""
  path = os.path.join(run_dir, files.REPORT_FILE)
  files.atomic_write_text(path, section(run_dir, config))
  return path


def runs_overview(workdir: str, runs: list[tuple[str, str]]) -> str:
  """The opening section of a comparison's report (``memory_buffer``,
  ``enas_vs_random``): every run's returned cell with its perplexities and
  a link to its own report, and ``figures/returned_cells.png`` drawing them.

  Args:
    workdir: the comparison's directory (links are relative to it).
    runs: ``(label, run directory relative to workdir)`` per run, in table
      order; a run without ``best_arch.json`` is listed as unfinished.
  """
  rows, drawn = [], []
  for label, rel in runs:
    path = os.path.join(workdir, rel, files.BEST_ARCH_FILE)
    if not os.path.exists(path):
      rows.append([label, "(unfinished)", "n/a", "n/a", f"`{rel}`"])
      continue
    best = files.read_json(path)
    rows.append([label, f"`{best['arch']}`", _split(best, "valid"),
                 _split(best, "test"), f"[report]({rel}/{files.REPORT_FILE})"])
    drawn.append((label, best))
  text = ["## The searches", "",
          "Each run's returned cell (its last derive's, shared weights; a "
          "from-scratch run's own weights), with the run's own report.", "",
          reports.markdown_table(
              ["run", "returned cell", "valid ppl", "test ppl", "run report"],
              rows), ""]
  if drawn:
    fig, axes = _grid(len(drawn), 4, 4.2, 4.0)
    for ax, (label, best) in zip(axes, drawn):
      cells.draw_cell(best["tokens"], ax=ax, legend=False,
                      title=f"{label}: valid ppl "
                            f"{reports.number(best.get('valid_ppl'), '.1f')}")
    name = _save(fig, reports.figures_dir(workdir), "returned_cells.png",
                 dpi=100)
    text += [f"![returned cells]({files.FIGURES_DIR}/{name})", ""]
  return "\n".join(text)
