"""A run's settings, checked once: the config as small frozen records.

:func:`make_setup` reads an experiment's ``ConfigDict`` once, checks every
choice and size (a :class:`ConfigError` names the key) and returns a
:class:`Setup`: hashable records of Python values that the jitted steps take
as a static argument and that the host loop reads for its cadence. Nothing
after it reads the raw config for a value that ``Setup`` holds.

Imports only the model modules for their own config records.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from nas_jax import buffer as buffer_lib
from nas_jax import controller
from nas_jax import search_space
from nas_jax import supernet

ALGORITHMS = ("enas", "random_ws", "fixed")
RANDOM_SAMPLERS = ("uniform", "controller")
SHARED_OPTIMIZERS = ("sgd", "adam")
# The controller's entropy bonus: "cell" adds w * (entropy summed over the
# cell's decisions) to one reward per cell (TF ENAS); "step" adds w * H_t to
# a reward per decision t, with a baseline per decision (the authors').
ENTROPY_BONUSES = ("cell", "step")


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Search:
  """Where cells come from: ``algorithm`` and, for ``fixed``, the cell."""
  algorithm: str = "enas"
  random_sampler: str = "uniform"
  fixed_cell: tuple[int, ...] = ()  # algorithm "fixed": the cell; () otherwise.


@dataclasses.dataclass(frozen=True)
class SharedTraining:
  """The shared phase: data windows, cells per step and the optimiser."""
  steps_per_epoch: int
  batch_size: int
  bptt: int = 35
  cells_per_step: int = 1
  optimizer: str = "sgd"
  lr: float = 20.0
  lr_decay: float = 0.96
  lr_decay_start_epoch: int = 15
  adam_lr: float = 3.5e-4
  grad_clip: float = 0.25
  weight_decay: float = 1e-7


@dataclasses.dataclass(frozen=True)
class Reinforce:
  """The controller phase (0 steps for random search and a fixed cell)."""
  steps_per_epoch: int
  samples_per_step: int = 1
  reward_c: float = 80.0
  entropy_weight: float = 1e-4
  baseline_decay: float = 0.95
  lr: float = 3.5e-4
  # The authors': the EMA baseline and the validation pointer restart at
  # every controller phase (False: both carry over, as in TF ENAS).
  reset_each_phase: bool = True
  entropy_bonus: str = "cell"  # One of ENTROPY_BONUSES.


@dataclasses.dataclass(frozen=True)
class Derive:
  """``num_cells`` sampled (controller ``mode``) and scored ``chunk_size``
  at a time."""
  num_cells: int = 100
  chunk_size: int = 10
  every_epochs: int = 5  # And always after the last epoch.
  # The authors' derive during the search samples in training mode (2.5
  # tanh); "derive" (temperature only) is what their analysis scripts used.
  mode: str = "train"


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Exact evaluation of a cell; ``max_windows > 0`` stops early."""
  batch_size: int = 64
  max_windows: int = 0


@dataclasses.dataclass(frozen=True)
class Cadence:
  """The host loop's rhythm: epochs, logs and checkpoints."""
  epochs: int
  log_every: int = 10
  checkpoint_every: int = 50
  keep_checkpoints: int = 2


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything static about a run (hashable: jit's static argument)."""
  model: supernet.SupernetConfig
  ctrl: controller.ControllerConfig
  search: Search
  shared: SharedTraining
  reinforce: Reinforce
  buffer: buffer_lib.BufferConfig
  derive: Derive
  eval: Evaluation
  cadence: Cadence


# Keys that must be >= 1 (checked before any record is built).
_POSITIVE = (
    "train.epochs", "train.batch_size", "train.bptt", "train.steps_per_epoch",
    "train.cells_per_step", "controller.samples_per_step", "derive.num_cells",
    "derive.chunk_size", "derive.every_epochs", "eval.batch_size", "log_every",
    "checkpoint_every")
_POSITIVE_SIZES = ("model.hidden_size", "model.num_nodes",
                   "controller.hidden_size", "keep_checkpoints")


def make_setup(config: ml_collections.ConfigDict, vocab_size: int) -> Setup:
  """Checks the config's choices and sizes; :class:`ConfigError` names the key."""
  fixed_cell = _check_values(config)
  m, c, t, b = config.model, config.controller, config.train, config.buffer
  model = _checked("model", supernet.SupernetConfig,
      vocab_size=vocab_size, hidden_size=m.hidden_size, num_nodes=m.num_nodes,
      embed_dropout=m.embed_dropout, input_dropout=m.input_dropout,
      output_dropout=m.output_dropout,
      recurrent_dropconnect=m.recurrent_dropconnect,
      hidden_clip=m.hidden_clip, init_range=m.init_range,
      # .get: config.json files written before the key still load.
      compute_dtype=m.get("compute_dtype", "float32"))
  ctrl = _checked("controller", controller.ControllerConfig,
      num_nodes=m.num_nodes, hidden_size=c.hidden_size,
      temperature=c.temperature, tanh_constant=c.tanh_constant,
      init_range=c.init_range)
  buf = _checked("buffer", buffer_lib.BufferConfig,
      variant=b.variant, policy=b.policy, capacity=b.capacity,
      store_per_epoch=b.store_per_epoch,
      store_start_epoch=b.store_start_epoch,
      replay_start_epoch=b.replay_start_epoch,
      replay_samples=b.replay_samples, weight=b.weight,
      replace_rows=b.replace_rows)
  if buf.variant == "faithful" and ctrl.num_steps < 2:
    raise ConfigError("config buffer.variant 'faithful' never predicts the "
                      "first token: it needs model.num_nodes >= 2")
  algorithm = config.search.algorithm
  return Setup(
      model=model, ctrl=ctrl, buffer=buf,
      search=Search(algorithm=algorithm,
                    random_sampler=config.search.random_sampler,
                    fixed_cell=fixed_cell),
      shared=SharedTraining(
          steps_per_epoch=t.steps_per_epoch, batch_size=t.batch_size,
          bptt=t.bptt, cells_per_step=t.cells_per_step,
          optimizer=t.optimizer, lr=t.lr, lr_decay=t.lr_decay,
          lr_decay_start_epoch=t.lr_decay_start_epoch, adam_lr=t.adam_lr,
          grad_clip=t.grad_clip, weight_decay=t.weight_decay),
      reinforce=Reinforce(
          # No controller phase for random search or a fixed cell.
          steps_per_epoch=(0 if algorithm in ("random_ws", "fixed")
                           else c.steps_per_epoch),
          samples_per_step=c.samples_per_step, reward_c=c.reward_c,
          entropy_weight=c.entropy_weight, baseline_decay=c.baseline_decay,
          lr=c.lr, reset_each_phase=bool(c.reset_each_phase),
          entropy_bonus=c.entropy_bonus),
      derive=Derive(num_cells=config.derive.num_cells,
                    chunk_size=config.derive.chunk_size,
                    every_epochs=config.derive.every_epochs,
                    mode=config.derive.mode),
      eval=Evaluation(batch_size=config.eval.batch_size,
                      max_windows=config.eval.max_windows),
      cadence=Cadence(epochs=t.epochs, log_every=config.log_every,
                      checkpoint_every=config.checkpoint_every,
                      keep_checkpoints=config.keep_checkpoints))


def _check_values(config) -> tuple[int, ...]:
  """Choices, sizes and their relations, before any record is built;
  returns the fixed cell (see :func:`_fixed_cell`)."""
  _check_choice(config, "search.algorithm", ALGORITHMS)
  _check_choice(config, "search.random_sampler", RANDOM_SAMPLERS)
  _check_choice(config, "train.optimizer", SHARED_OPTIMIZERS)
  _check_choice(config, "buffer.variant", buffer_lib.VARIANTS)
  _check_choice(config, "buffer.policy", buffer_lib.POLICIES)
  _check_choice(config, "derive.mode", controller.MODES)
  _check_choice(config, "controller.entropy_bonus", ENTROPY_BONUSES)
  for key in _POSITIVE:
    _check_positive(config, key)
  if config.eval.max_windows < 0:
    raise ConfigError("config eval.max_windows must be >= 0 (0: whole split)")
  if config.controller.steps_per_epoch < 0:
    raise ConfigError("config controller.steps_per_epoch must be >= 0")
  if config.search.algorithm != "enas" and config.buffer.variant != "none":
    raise ConfigError(
        f"config buffer.variant must be 'none' for search.algorithm "
        f"{config.search.algorithm!r}: only ENAS trains a controller to "
        "replay into")
  fixed_cell = _fixed_cell(config)
  if config.checkpoint_every % config.log_every:
    raise ConfigError(
        f"config checkpoint_every ({config.checkpoint_every}) must be a "
        f"multiple of log_every ({config.log_every}) so that a resumed run "
        "logs the same windows")
  if config.derive.num_cells % config.derive.chunk_size:
    raise ConfigError(
        f"config derive.num_cells ({config.derive.num_cells}) must be a "
        f"multiple of derive.chunk_size ({config.derive.chunk_size})")
  for key in _POSITIVE_SIZES:
    _check_positive(config, key)
  return fixed_cell


def _fixed_cell(config) -> tuple[int, ...]:
  """``search.arch`` as tokens: required by "fixed", refused by the others.

  Only ``train_fixed`` configs have the key, so search run directories
  written before it existed still resume.
  """
  arch, algorithm = config.search.get("arch", ""), config.search.algorithm
  if algorithm != "fixed":
    if arch:
      raise ConfigError(
          f"config search.arch is only used by search.algorithm 'fixed', "
          f"not {algorithm!r}; leave it empty")
    return ()
  if not arch:
    raise ConfigError("config search.arch: search.algorithm 'fixed' needs a "
                      "cell, e.g. '0 0 3 1 2 1 3' (2N-1 ENAS tokens)")
  try:
    cell = search_space.Architecture.from_tokens(arch)
  except ValueError as e:
    raise ConfigError(f"config search.arch: {e}")
  if cell.num_nodes != config.model.num_nodes:
    raise ConfigError(
        f"config search.arch has {cell.num_nodes} nodes but model.num_nodes "
        f"is {config.model.num_nodes}")
  if config.derive.num_cells != 1 or config.derive.chunk_size != 1:
    raise ConfigError(
        "config derive.num_cells and derive.chunk_size must be 1 for "
        "search.algorithm 'fixed': there is one cell to evaluate")
  return tuple(int(t) for t in cell.tokens())


def _checked(section, cls, **kwargs):
  try:
    return cls(**kwargs)
  except ValueError as e:
    raise ConfigError(f"config {section}: {e}") from None


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(
          f"config has no key {dotted} (a config.json written by an older "
          "version of nas_jax? its runs cannot be resumed or probed by this "
          "one)")
    node = node[part]
  return node


def _check_positive(config, dotted):
  if _get(config, dotted) < 1:
    raise ConfigError(f"config {dotted} must be >= 1, got {_get(config, dotted)}")


def _check_choice(config, dotted, choices):
  if _get(config, dotted) not in choices:
    raise ConfigError(
        f"config {dotted} must be one of {choices}, got {_get(config, dotted)!r}")
