"""The search config every search experiment starts from, and the presets.

CPU defaults are sized for a 2-core laptop-class machine (the full
``enas_probe`` in about 15 minutes); ``paper`` restores the DESIGN sizes for
accelerators and ``smoke`` shrinks everything to seconds.
"""

from __future__ import annotations

import os
from typing import Callable

import ml_collections

# The bundled PTB copy, found from this file so the default works from any
# working directory.
DEFAULT_DATA_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "ptb")


def search_config() -> ml_collections.ConfigDict:
  """ENAS on PTB with CPU-sized supernet and schedule (DESIGN values otherwise)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict({
      "dir": DEFAULT_DATA_DIR,
      "verify_checksums": True,
  })
  config.model = ml_collections.ConfigDict({
      "hidden_size": 128,  # = embedding size (tied); paper: 1000.
      "num_nodes": 12,
      "embed_dropout": 0.1,
      "input_dropout": 0.65,
      "output_dropout": 0.4,
      "recurrent_dropconnect": 0.5,
      "hidden_clip": 25.0,
      "init_range": 0.1,
  })
  config.train = ml_collections.ConfigDict({
      "epochs": 10,  # paper: 150.
      "steps_per_epoch": 40,  # shared steps; paper: 400.
      "batch_size": 32,  # paper: 64.
      "bptt": 35,
      "cells_per_step": 1,  # M: cells (each with its own carry) per step.
      "optimizer": "sgd",  # or "adam" (the authors' practice).
      "lr": 20.0,
      "lr_decay": 0.96,
      "lr_decay_start_epoch": 15,
      "adam_lr": 3.5e-4,
      "grad_clip": 0.25,
      "weight_decay": 1e-7,
  })
  config.controller = ml_collections.ConfigDict({
      "hidden_size": 100,
      "temperature": 5.0,
      "tanh_constant": 2.5,
      "init_range": 0.1,
      "steps_per_epoch": 200,  # paper: 2000.
      "samples_per_step": 1,  # M cells scored together per REINFORCE step.
      "lr": 3.5e-4,
      "reward_c": 80.0,
      "entropy_weight": 1e-4,
      "baseline_decay": 0.95,
  })
  config.search = ml_collections.ConfigDict({
      "algorithm": "enas",  # or "random_ws".
      # random_ws only: "uniform" (sample_uniform) or "controller" (the
      # untrained controller, as the authors ran their baseline).
      "random_sampler": "uniform",
  })
  config.derive = ml_collections.ConfigDict({
      "num_cells": 100,
      "chunk_size": 10,  # cells scored together (memory: chunk x T x B x V).
      "every_epochs": 5,  # and always after the last epoch.
  })
  config.eval = ml_collections.ConfigDict({
      "batch_size": 64,
      # 0: the whole validation/test split (exact). N > 0: only the first N
      # BPTT windows; best_arch.json's valid_tokens/test_tokens then show it.
      "max_windows": 0,
  })
  config.probe = probe_config()
  config.log_every = 10  # steps per metrics line.
  config.checkpoint_every = 50  # steps; a multiple of log_every.
  config.keep_checkpoints = 2
  return config


def probe_config() -> ml_collections.ConfigDict:
  """Settings of the controller probe (analysis of the carries)."""
  return ml_collections.ConfigDict({
      "num_cells": 100,  # K cells per controller (the authors: 100).
      "seed": 0,
      "num_permutations": 999,  # Mantel test.
      "num_bootstrap": 1000,  # CIs over cells.
      "ged_max_pairs": 300,  # networkx edit distances on a random subset.
      "ged_timeout": 1.0,  # seconds per pair.
  })


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """DESIGN's sizes and schedule: for GPUs/TPUs, not for a laptop."""
  if "train" in config:  # A search config.
    config.model.hidden_size = 1000
    config.train.epochs = 150
    config.train.steps_per_epoch = 400
    config.train.batch_size = 64
    config.controller.steps_per_epoch = 2000
    config.derive.every_epochs = 10
    config.checkpoint_every = 200
    config.log_every = 50
  if "probe" in config:
    config.probe.num_cells = 1000
    config.probe.ged_max_pairs = 2000
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps of every phase at tiny sizes: seconds on a CPU."""
  if "train" in config:  # A search config.
    config.model.hidden_size = 16
    config.model.num_nodes = 4
    config.controller.hidden_size = 16
    config.train.epochs = 2
    config.train.steps_per_epoch = 4
    config.train.batch_size = 8
    config.train.bptt = 8
    config.controller.steps_per_epoch = 4
    config.controller.samples_per_step = 2
    config.derive.num_cells = 8
    config.derive.chunk_size = 4
    config.derive.every_epochs = 1
    config.eval.batch_size = 16
    config.eval.max_windows = 20  # A partial evaluation: 2,560 tokens.
    config.log_every = 2
    config.checkpoint_every = 2
  if "probe" in config:
    config.probe.num_cells = 20
    config.probe.num_permutations = 99
    config.probe.num_bootstrap = 100
    config.probe.ged_max_pairs = 20
  return config


PRESETS: dict[str, Callable[[ml_collections.ConfigDict],
                            ml_collections.ConfigDict]] = {
    "paper": paper,
    "smoke": smoke,
}
