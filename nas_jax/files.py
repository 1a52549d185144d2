"""Files of a run directory: their names, the layout of multi-run
experiments, and atomic writes.

A leaf module (standard library and NumPy only): the training code, the
experiments and the host-side analysis all name files through it, so a file
name is spelled once.

Every file a report or a run's record depends on is written atomically
(a temporary file in the same directory, flushed, then ``os.replace``): a
run killed mid-write leaves the previous version or none, never half a file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

# One run directory (see README "Run directory").
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
ARCHS_FILE = "archs.jsonl"
DERIVED_FILE = "derived.jsonl"
LOG_FILES = (METRICS_FILE, ARCHS_FILE, DERIVED_FILE)
TENSORBOARD_DIR = "tb"
BEST_ARCH_FILE = "best_arch.json"
PROBE_FILE = "probe.npz"
# Every report (a run's probe, a comparison across runs) writes these three.
REPORT_FILE = "report.md"
RESULTS_FILE = "results.json"
FIGURES_DIR = "figures"


def run_dir(workdir: str, group: str, seed: int) -> str:
  """``WORKDIR/GROUP/seed_SEED``: one run of a multi-run experiment (an arm
  of ``memory_buffer``, a method of ``enas_vs_random``)."""
  return os.path.join(workdir, group, f"seed_{seed}")


def seed_dir(workdir: str, seed: int) -> str:
  """``WORKDIR/seed_SEED``: one seed's run of a multi-seed ``enas_probe``."""
  return os.path.join(workdir, f"seed_{seed}")


def atomic_write_text(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a flushed temporary file."""
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def jsonable(obj: Any) -> Any:
  """``obj`` with NumPy values as Python ones and non-finite floats as None.

  Dict keys starting with ``"_"`` (working data kept for figures) are
  dropped.
  """
  if isinstance(obj, dict):
    return {str(k): jsonable(v) for k, v in obj.items()
            if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return jsonable(obj.tolist())
  if isinstance(obj, (np.floating, float)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def write_json(path: str, obj: Any, **dump_kwargs) -> None:
  """Atomic JSON file with a trailing newline; ``dump_kwargs`` go to
  ``json.dumps`` (e.g. ``indent``, ``allow_nan=False``)."""
  atomic_write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_npz(path: str, compressed: bool = False, **arrays) -> None:
  """Atomic ``.npz`` of ``arrays``."""
  tmp = path + ".tmp.npz"  # np.savez appends ".npz" to other names.
  (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
  os.replace(tmp, path)
