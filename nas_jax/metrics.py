"""What a run writes as it goes: JSON-lines logs, TensorBoard, progress bars.

Files in the run directory:

* ``metrics.jsonl``: one JSON object per logging window or evaluation, with
  ``epoch``, the counter it is indexed by (``shared_step`` or ``ctrl_step``),
  the metric values and a wall-clock ``time``;
* ``archs.jsonl``: every cell sampled for a controller update, with its
  reward and validation-batch log perplexity (and perplexity);
* ``derived.jsonl``: per derive, every candidate cell and its perplexity on
  the derive batch, and which one was kept;
* ``best_arch.json``: the cell the search returns, with its validation and
  test perplexity;
* ``tb/``: TensorBoard event files of the same scalars.

Epochs are numbered from 1 in every file (``"epoch": 1`` is the first
epoch), as on the console and in the reports. No non-finite number reaches
a file: the logs hold log perplexities, which stay finite when a
perplexity overflows, and any value that is still NaN or infinite is written
as JSON ``null`` (and left out of TensorBoard, which cannot show it).

The JSON-lines files are truncated on resume to the sizes recorded in the
checkpoint, so a resumed run's files equal an uninterrupted run's. Timing
values (:func:`is_timing`) are the only fields that differ between runs.
TensorBoard files are append-only: steps re-run after a crash appear twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import tqdm

from nas_jax import files


def is_timing(key: str) -> bool:
  """Keys that measure wall time and so differ between identical runs."""
  return key == "time" or key.endswith("steps_per_s") or key.endswith("seconds")


def _finite_or_none(value: float):
  return value if math.isfinite(value) else None


def exp_or_inf(x: float) -> float:
  """``exp(x)`` in float64, ``inf`` where it overflows (x > ~709), NaN for NaN."""
  try:
    return math.exp(x)
  except OverflowError:
    return math.inf


class Window:
  """Running sums of per-step scalars; :meth:`pop` returns their means."""

  def __init__(self):
    self._sums: dict[str, float] = {}
    self._n = 0

  def add(self, **values: float) -> None:
    for k, v in values.items():
      self._sums[k] = self._sums.get(k, 0.0) + v
    self._n += 1

  def pop(self) -> dict[str, float]:
    means = {k: v / self._n for k, v in self._sums.items()}
    means["n"] = self._n
    self._sums, self._n = {}, 0
    return means


def progress(total: int, initial: int, desc: str) -> tqdm.tqdm:
  """A progress bar with rate and ETA on stderr (process 0's only)."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, file=sys.stderr,
                   dynamic_ncols=True, mininterval=1.0, leave=False,
                   disable=jax.process_index() != 0)


class RunWriter:
  """Appends to the run's logs; :meth:`truncate` first on every (re)start."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._files: dict[str, Any] = {}
    self._tb = None
    self.last_values: dict[str, float] = {}

  def _path(self, name):
    return os.path.join(self.workdir, name)

  def truncate(self, offsets: dict[str, int]) -> None:
    """Cuts each log back to ``offsets[name]`` bytes (0 when absent) and
    re-reads :attr:`last_values` from ``metrics.jsonl`` (null, a non-finite
    value, as NaN)."""
    for name in files.LOG_FILES:
      path = self._path(name)
      if os.path.exists(path):
        with open(path, "r+b") as f:
          f.truncate(min(offsets.get(name, 0), os.path.getsize(path)))
      self._files[name] = open(path, "a", encoding="utf-8")
    # The latest value of every metric, as an uninterrupted run would have
    # them (the epoch summary reads them).
    self.last_values = {}
    with open(self._path(files.METRICS_FILE), encoding="utf-8") as f:
      for line in f:
        self.last_values.update(
            (k, math.nan if v is None else v)
            for k, v in json.loads(line).items()
            if (v is None or isinstance(v, float)) and k != "time")

  def _tensorboard(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter  # Heavy import, only when used.
      self._tb = SummaryWriter(self._path(files.TENSORBOARD_DIR),
                               flush_secs=30)
    return self._tb

  def _line(self, name: str, record: dict) -> None:
    self._files[name].write(json.dumps(record) + "\n")

  def metrics(self, step: int, epoch: int, values: dict[str, float],
              counter: str = "shared_step") -> None:
    values = {k: float(v) for k, v in values.items()}
    record = {"epoch": epoch, counter: step}
    record.update({k: _finite_or_none(v) for k, v in values.items()})
    record["time"] = time.time()
    self._line(files.METRICS_FILE, record)
    tb = self._tensorboard()
    for k, v in values.items():
      if math.isfinite(v):  # null in metrics.jsonl.
        tb.add_scalar(k, v, global_step=step)
    self.last_values.update(values)

  def archs(self, step: int, epoch: int, cells: np.ndarray,
            rewards: np.ndarray, log_ppl: np.ndarray) -> None:
    """One line per cell; ``ppl`` is ``exp(log_ppl)`` in float64."""
    for cell, reward, lp in zip(cells, rewards, log_ppl):
      lp = float(lp)
      self._line(files.ARCHS_FILE, {
          "ctrl_step": step, "epoch": epoch, "tokens": cell.tolist(),
          "reward": _finite_or_none(float(reward)),
          "log_ppl": _finite_or_none(lp),
          "ppl": _finite_or_none(exp_or_inf(lp))})

  def derived(self, epoch: int, cells: np.ndarray, ppl: np.ndarray,
              best: int) -> None:
    self._line(files.DERIVED_FILE, {
        "epoch": epoch, "best": best, "cells": cells.tolist(),
        "ppl": [_finite_or_none(float(p)) for p in ppl]})

  def best_arch(self, record: dict) -> None:
    files.write_json(self._path(files.BEST_ARCH_FILE), record, allow_nan=False)

  def flush(self) -> None:
    for f in self._files.values():
      f.flush()
      os.fsync(f.fileno())
    if self._tb is not None:
      self._tb.flush()

  def offsets(self) -> dict[str, int]:
    """Sizes of the logs, after a flush (what a checkpoint records)."""
    self.flush()
    return {name: os.path.getsize(self._path(name)) for name in files.LOG_FILES}

  def close(self) -> None:
    for f in self._files.values():
      f.close()
    self._files = {}
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class ReadOnlyWriter(RunWriter):
  """The writer of a process other than 0 in a multi-host run: it writes
  nothing (no files, no TensorBoard) and keeps :attr:`last_values` of this
  process only (its epoch summaries are not printed)."""

  def truncate(self, offsets: dict[str, int]) -> None:
    del offsets
    self.last_values = {}

  def _line(self, name: str, record: dict) -> None:
    del name, record

  def metrics(self, step: int, epoch: int, values: dict[str, float],
              counter: str = "shared_step") -> None:
    del step, epoch, counter
    self.last_values.update({k: float(v) for k, v in values.items()})

  def best_arch(self, record: dict) -> None:
    del record

  def flush(self) -> None:
    pass

  def offsets(self) -> dict[str, int]:
    return {}  # Process 0's meta is the one orbax keeps.

