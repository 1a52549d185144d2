"""The search config every search experiment starts from, and the presets.

CPU defaults are sized for a 2-core laptop-class machine (the full
``enas_probe`` in about 15 minutes); ``paper`` restores the DESIGN sizes for
accelerators and ``smoke`` shrinks everything to seconds. Each experiment's
``get_config(preset)`` builds its config and applies a preset with
:func:`with_preset`, which refuses a key the config lacks and locks it.
"""

from __future__ import annotations

import ml_collections

from nas_jax import data
from nas_jax import settings

# The PTB copy bundled with the package (works from any working directory).
DEFAULT_DATA_DIR = data.BUNDLED_PTB_DIR


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
      # "bfloat16": supernet matmuls in bf16 (accelerators); state, loss f32.
      "compute_dtype": "float32",
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
      "lr_decay_start_epoch": 15,  # epochs done before x0.96 (from epoch 16).
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
      # The authors restart the EMA baseline and the validation pointer at
      # every controller phase; False carries both over (TF ENAS).
      "reset_each_phase": True,
      # "cell": w * entropy summed over decisions, one reward (TF ENAS);
      # "step": w * H_t, a reward and a baseline per decision (the authors').
      "entropy_bonus": "cell",
  })
  config.search = ml_collections.ConfigDict({
      "algorithm": "enas",  # or "random_ws", "fixed" (train_fixed).
      # random_ws only: "uniform" (sample_uniform) or "controller" (the
      # untrained controller, as the authors ran their baseline).
      "random_sampler": "uniform",
  })
  config.buffer = ml_collections.ConfigDict({
      # Memory-buffer replay loss (DESIGN "Memory buffer"): "none" (plain
      # ENAS), "clean" or "faithful" (the authors' quirks).
      "variant": "none",
      "policy": "fifo",  # "fifo", "reservoir" or "authors".
      "capacity": 10_000,
      "store_per_epoch": 1000,  # cells stored when a controller phase starts,
      # Epochs done before storing / replaying (1: from epoch 2 as the logs
      # number them; the authors: 5 and 10).
      "store_start_epoch": 1,  # cells stored from this many epochs done,
      "replay_start_epoch": 2,  # replayed from this one (the authors: 10),
      "replay_samples": 100,  # per controller step,
      "weight": 1.0,  # lambda of the replay loss.
      "replace_rows": 100,  # "authors" policy: rows replaced once full.
  })
  config.derive = ml_collections.ConfigDict({
      "num_cells": 100,
      "chunk_size": 10,  # cells scored together (memory: chunk x T x B x V).
      "every_epochs": 5,  # and always after the last epoch.
      # Controller mode of the search's derive: "train" (2.5 tanh, the
      # authors' search) or "derive" (temperature only, their analyses).
      "mode": "train",
  })
  config.eval = ml_collections.ConfigDict({
      "batch_size": 64,
      # 0: the whole validation/test split (exact). N > 0: only the first N
      # BPTT windows; best_arch.json's valid_tokens/test_tokens then show it.
      "max_windows": 0,
  })
  config.mesh = ml_collections.ConfigDict({
      # Devices per mesh axis (nas_jax.devices); 0: automatic (all devices
      # on "seeds" when several seeds run stacked, else on "data"). Not part
      # of a run's identity: a run resumes on any device count.
      "seeds": 0,
      "data": 0,
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
      # Random-state samples: also draw step 0's input (the authors').
      "random_input": False,
  })


# Presets as data: dotted keys and values, applied strictly (a key that the
# config lacks raises, naming it). The probe's keys are shared by the search
# experiments (whose configs hold a probe section) and the probe experiment.
PROBE_PRESETS: dict[str, dict[str, object]] = {
    "paper": {
        "probe.num_cells": 1000,
        "probe.ged_max_pairs": 2000,
        "probe.random_input": True,
    },
    "smoke": {
        "probe.num_cells": 20,
        "probe.num_permutations": 99,
        "probe.num_bootstrap": 100,
        "probe.ged_max_pairs": 20,
    },
}
SEARCH_PRESETS: dict[str, dict[str, object]] = {
    # DESIGN's sizes and schedule: for GPUs/TPUs, not for a laptop.
    "paper": {
        "model.hidden_size": 1000,
        # The authors'; at 0.1 an identity chain overflows at hidden 1000.
        "model.init_range": 0.025,
        "train.epochs": 150,
        "train.steps_per_epoch": 400,
        "train.batch_size": 64,
        "controller.steps_per_epoch": 2000,
        "derive.every_epochs": 10,
        "buffer.store_start_epoch": 5,
        "buffer.replay_start_epoch": 10,
        "controller.entropy_bonus": "step",
        "checkpoint_every": 200,
        "log_every": 50,
        **PROBE_PRESETS["paper"],
    },
    # A few steps of every phase at tiny sizes: seconds on a CPU.
    "smoke": {
        "model.hidden_size": 16,
        "model.num_nodes": 4,
        "controller.hidden_size": 16,
        "train.epochs": 2,
        "train.steps_per_epoch": 4,
        "train.batch_size": 8,
        "train.bptt": 8,
        "controller.steps_per_epoch": 4,
        "controller.samples_per_step": 2,
        "derive.num_cells": 8,
        "derive.chunk_size": 4,
        "derive.every_epochs": 1,
        "eval.batch_size": 16,
        "eval.max_windows": 20,  # A partial evaluation: 2,560 tokens.
        "buffer.capacity": 64,
        "buffer.store_per_epoch": 16,
        "buffer.store_start_epoch": 0,
        "buffer.replay_start_epoch": 1,
        "buffer.replay_samples": 8,
        "buffer.replace_rows": 8,
        "log_every": 2,
        "checkpoint_every": 2,
        **PROBE_PRESETS["smoke"],
    },
}


def apply_overrides(config: ml_collections.ConfigDict,
                    values: dict[str, object]) -> ml_collections.ConfigDict:
  """Sets ``values`` (dotted keys) in ``config``, which must have every key:
  a misspelt key or section raises :class:`settings.ConfigError` naming it."""
  for dotted, value in values.items():
    parts = dotted.split(".")
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = ".".join(parts[:i]) or "the config"
        keys = (", ".join(sorted(node.keys()))
                if isinstance(node, ml_collections.ConfigDict) else "none")
        raise settings.ConfigError(
            f"unknown config key {dotted!r}: {where} has no {part!r} "
            f"(its keys: {keys})")
      if i < len(parts) - 1:
        node = node[part]
    node[parts[-1]] = value
  return config


def with_preset(config: ml_collections.ConfigDict, preset: str,
                own: dict[str, dict[str, object]] | None = None,
                presets: dict[str, dict[str, object]] | None = None
                ) -> ml_collections.ConfigDict:
  """``config`` with ``preset`` applied, then locked (no key can be added).

  ``presets`` (default :data:`SEARCH_PRESETS`) are the common presets;
  ``own`` is the experiment's own adjustments per preset (applied after the
  common one, e.g. ``train_fixed``'s final-training sizes). An unknown
  preset raises ``ValueError`` listing the valid ones; a preset key that the
  config lacks raises :class:`settings.ConfigError` naming it.
  """
  presets = SEARCH_PRESETS if presets is None else presets
  if preset:
    if preset not in presets:
      raise ValueError(f"unknown preset {preset!r}; valid presets: "
                       f"{', '.join(sorted(presets))}")
    apply_overrides(config, presets[preset])
    apply_overrides(config, (own or {}).get(preset, {}))
  config.lock()
  return config


def run_config(config: ml_collections.ConfigDict, own_keys: tuple[str, ...],
               **values) -> ml_collections.ConfigDict:
  """A copy of ``config`` without an experiment's ``own_keys`` (its seed
  list, arms, ...), with top-level ``values`` (e.g. ``seed``) set: the config
  one run of a multi-run experiment is bound to."""
  sub = ml_collections.ConfigDict(
      {k: v for k, v in config.to_dict().items() if k not in own_keys})
  for key, value in values.items():
    sub[key] = value
  return sub


def multi_seed_budget(config: ml_collections.ConfigDict) -> None:
  """The per-seed search budget of the experiments that run several seeds
  (and of ``random_ws``, the baseline of one): 6 epochs of 40 shared and
  200 controller steps, a derive every 3 epochs; about 3 minutes a search
  on a quiet 2-core CPU (memory_buffer's 12 took 36 min with their probes).
  Presets override it."""
  config.train.epochs = 6
  config.derive.every_epochs = 3


def check_seeds(seeds) -> tuple[int, ...]:
  """``config.seeds`` as a tuple; ``ConfigError`` unless distinct integers."""
  seeds = tuple(seeds)
  if (not seeds or len(set(seeds)) != len(seeds)
      or not all(isinstance(s, int) for s in seeds)):
    raise settings.ConfigError(
        f"config seeds must be distinct integers, got {seeds}")
  return seeds


SEEDS_MODES = ("auto", "stacked", "sequential")


def stacked_seeds(config: ml_collections.ConfigDict) -> bool:
  """Whether a multi-seed experiment trains its seeds stacked
  (``train.train_many(..., stacked=True)``), from ``config.seeds_mode``:
  ``"stacked"``, ``"sequential"``, or ``"auto"``: stacked on an accelerator,
  sequential on a CPU, where ``python -m benchmarks.stacked_seeds`` measured
  stacking slower (see README, "Many seeds in one process")."""
  mode = config.seeds_mode
  if mode not in SEEDS_MODES:
    raise settings.ConfigError(
        f"config seeds_mode must be one of {', '.join(SEEDS_MODES)}; "
        f"got {mode!r}")
  if mode == "auto":
    import jax  # pylint: disable=g-import-not-at-top
    return jax.default_backend() != "cpu"
  return mode == "stacked"
