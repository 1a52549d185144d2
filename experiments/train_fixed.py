"""``train_fixed``: one given cell trained from scratch as a language model.

``--config.arch`` is the cell: ``2N-1`` ENAS tokens (``"0 0 3 1 2 1 3"``) or
the path of a run's ``best_arch.json``. The run is the search loop with
``search.algorithm="fixed"`` (``nas_jax/train.py``): the same supernet code
with the cell fixed, the same run directory, resume, logs and progress; no
controller. Its ``best_arch.json`` holds the cell with its validation and
test perplexity (exact, whole splits).

The CPU default trains for minutes; the ``paper`` preset uses ENAS-style
final-training settings for accelerators (embedding = hidden = 750, SGD lr
20, grad-norm clip 0.25, batch 64, 300 epochs over all of PTB's train split).
"""

from __future__ import annotations

import os

import ml_collections

from experiments import common
from nas_jax import files
from nas_jax import search_space
from nas_jax import settings
from nas_jax import train
from nas_jax.analysis import search_report

# Keys of this experiment only: not part of the run's config.
_OWN_KEYS = ("arch",)

# One cell: nothing to sample at a derive (the presets set 100 and 8).
ONE_CELL = {"derive.num_cells": 1, "derive.chunk_size": 1}
# This experiment's adjustments, applied after the common preset.
OWN_PRESETS = {
    "smoke": ONE_CELL,
    "paper": {
        **ONE_CELL,
        "model.hidden_size": 750,
        "train.epochs": 300,
        # One pass over PTB's train split per epoch at batch 64, BPTT 35.
        "train.steps_per_epoch": 415,
        "derive.every_epochs": 10,
    },
}


def get_config(preset: str = ""):
  config = common.search_config()
  config.search.algorithm = "fixed"
  common.apply_overrides(config, ONE_CELL)
  config.derive.every_epochs = 5
  config.arch = ""  # Tokens, or the path of a best_arch.json.
  return common.with_preset(config, preset, OWN_PRESETS)


def resolve_arch(arch: str) -> str:
  """``arch`` (tokens or a ``best_arch.json`` path) as a token string."""
  if not arch:
    raise settings.ConfigError(
        "config arch: give the cell to train, as tokens "
        "(--config.arch='0 0 3 1 2 1 3') or the path of a best_arch.json")
  if arch.endswith(".json") or os.path.isfile(arch):
    if not os.path.isfile(arch):
      raise settings.ConfigError(f"config arch: no file {arch!r}")
    with open(arch) as f:
      try:
        cell = search_space.Architecture.from_json(f.read())
      except ValueError as e:
        raise settings.ConfigError(f"config arch: {arch!r}: {e}")
    return str(cell)
  try:
    return str(search_space.Architecture.from_tokens(arch))
  except ValueError as e:
    raise settings.ConfigError(f"config arch: {e}")


def fixed_config(config: ml_collections.ConfigDict, arch: str,
                 own_keys: tuple[str, ...] = _OWN_KEYS, **values
                 ) -> ml_collections.ConfigDict:
  """The run config that trains ``arch`` alone, from a search-shaped
  ``config`` (an experiment's ``own_keys`` dropped, ``values`` such as
  ``seed`` set, ``search.algorithm="fixed"``). Its derive settings are
  kept: make_setup requires :data:`ONE_CELL`."""
  sub = common.run_config(config, own_keys, **values)
  sub.search.algorithm = "fixed"
  sub.search.arch = resolve_arch(arch)
  return sub


def run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config: ``arch`` resolved into ``search.arch``."""
  return fixed_config(config, config.arch)


def run(config, workdir):
  sub = run_config(config)
  best = train.train_and_evaluate(sub, workdir).best
  search_report.write_report(workdir, sub)
  print(f"train_fixed: cell {best['arch']}: valid ppl "
        f"{best['valid_ppl']:.2f}, test ppl {best.get('test_ppl', float('nan')):.2f}"
        f" (in {os.path.join(workdir, files.BEST_ARCH_FILE)}; report: "
        f"{os.path.join(workdir, files.REPORT_FILE)})", flush=True)
  return best
