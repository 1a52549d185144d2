"""The search loop: ENAS, random search with weight sharing (RS-WS), and
one fixed cell trained alone (``search.algorithm="fixed"``, ``train_fixed``).

One *epoch* is a shared phase (``train.steps_per_epoch`` steps of the
supernet, one sampled cell per slot and step) followed, for ENAS, by a
controller phase (``controller.steps_per_epoch`` REINFORCE steps), and, every
``derive.every_epochs`` epochs and at the last one, a derive phase. With a
fixed cell the "sampler" always returns ``search.arch``: the shared phase
trains an ordinary language model through the same supernet code, and the
derive phase evaluates that cell.

Everything a run needs to continue lives in :class:`TrainState` (parameters,
optimiser states, EMA baseline, PRNG key, data positions, hidden carry,
counters), a pytree of arrays advanced by two jitted, pure steps:

* :func:`shared_step` ``(state, train_data) -> (state, metrics)``;
* :func:`controller_step` ``(state, valid_data) -> (state, metrics)``.

Randomness: every draw uses ``fold_in(fold_in(state.key, STREAM), counter)``,
so results depend only on the seed and the counters, never on where a run
was interrupted. :func:`train_and_evaluate` is the host loop around them
(progress, metrics, checkpoints, resume); see ``README.md`` for the run
directory it writes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nas_jax import buffer as buffer_lib
from nas_jax import checkpointing
from nas_jax import controller
from nas_jax import data
from nas_jax import metrics as metrics_lib
from nas_jax import search_space
from nas_jax import supernet

ALGORITHMS = ("enas", "random_ws", "fixed")
RANDOM_SAMPLERS = ("uniform", "controller")
SHARED_OPTIMIZERS = ("sgd", "adam")
# PRNG streams: fold_in(root, STREAM) then fold_in(stream, counter).
_SHARED_STREAM, _CTRL_STREAM, _DERIVE_STREAM = 1, 2, 3
_STORE_STREAM, _REPLAY_STREAM = 4, 5  # Memory buffer: per epoch, per step.


class ConfigError(ValueError):
  """A config value is invalid; the message names the key."""


class TrainingDiverged(RuntimeError):
  """A loss or reward became non-finite; the message names step and checkpoint."""


# What bad input raises before a run starts: the launcher reports these as
# one line, never a traceback.
INPUT_ERRORS = (data.DataError, ConfigError, checkpointing.WorkdirMismatch)


class TrainState(NamedTuple):
  """Everything the search needs to continue, as arrays.

  ``carry`` is the supernet's hidden state per cell slot ``[M, B, H]``
  (carried across BPTT windows, reset when the train pointer wraps).
  ``baseline`` is the EMA of the controller's reward (entropy bonus
  included); it is set to the first step's mean reward. ``buffer`` is the
  memory buffer of stored cells (empty while ``buffer.variant`` is
  ``"none"``).
  """
  shared: supernet.Params
  shared_opt: Any
  ctrl: controller.Params
  ctrl_opt: Any
  baseline: jax.Array  # float32[]
  key: jax.Array  # typed PRNG key
  epoch: jax.Array  # int32[]: completed epochs
  shared_step: jax.Array  # int32[]: shared steps done in the whole run
  ctrl_step: jax.Array  # int32[]: controller steps done in the whole run
  train_pos: jax.Array  # int32[]: next row of the batchified train data
  valid_pos: jax.Array  # int32[]: next row of the reward (valid) data
  carry: jax.Array  # float32[M, B, H]
  buffer: buffer_lib.Buffer


@dataclasses.dataclass(frozen=True)
class Setup:
  """Static pieces derived from the config (hashable: jit's static argument)."""
  model: supernet.SupernetConfig
  ctrl: controller.ControllerConfig
  algorithm: str
  random_sampler: str
  fixed_cell: tuple[int, ...]  # algorithm "fixed": the cell; () otherwise.
  bptt: int
  cells_per_step: int
  ctrl_samples: int
  reward_c: float
  entropy_weight: float
  baseline_decay: float
  derive_cells: int
  derive_chunk: int
  ctrl_steps_per_epoch: int
  buffer: buffer_lib.BufferConfig
  # Optimisers (see make_shared_optimizer / make_ctrl_optimizer).
  shared_optimizer: str
  lr: float
  lr_decay: float
  lr_decay_start_epoch: int
  steps_per_epoch: int
  adam_lr: float
  grad_clip: float
  weight_decay: float
  ctrl_lr: float


def make_setup(config: ml_collections.ConfigDict, vocab_size: int) -> Setup:
  """Checks the config's choices and sizes; :class:`ConfigError` names the key."""
  _check_choice(config, "search.algorithm", ALGORITHMS)
  _check_choice(config, "search.random_sampler", RANDOM_SAMPLERS)
  _check_choice(config, "train.optimizer", SHARED_OPTIMIZERS)
  _check_choice(config, "buffer.variant", buffer_lib.VARIANTS)
  _check_choice(config, "buffer.policy", buffer_lib.POLICIES)
  for key in ("train.epochs", "train.batch_size", "train.bptt",
              "train.steps_per_epoch", "train.cells_per_step",
              "controller.samples_per_step", "derive.num_cells",
              "derive.chunk_size", "derive.every_epochs", "eval.batch_size",
              "log_every", "checkpoint_every"):
    if _get(config, key) < 1:
      raise ConfigError(f"config {key} must be >= 1, got {_get(config, key)}")
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
  for key in ("model.hidden_size", "model.num_nodes", "controller.hidden_size",
              "keep_checkpoints"):
    if _get(config, key) < 1:
      raise ConfigError(f"config {key} must be >= 1, got {_get(config, key)}")
  m = config.model
  model = _checked("model", supernet.SupernetConfig,
      vocab_size=vocab_size, hidden_size=m.hidden_size, num_nodes=m.num_nodes,
      embed_dropout=m.embed_dropout, input_dropout=m.input_dropout,
      output_dropout=m.output_dropout,
      recurrent_dropconnect=m.recurrent_dropconnect,
      hidden_clip=m.hidden_clip, init_range=m.init_range)
  c = config.controller
  ctrl = _checked("controller", controller.ControllerConfig,
      num_nodes=m.num_nodes, hidden_size=c.hidden_size,
      temperature=c.temperature, tanh_constant=c.tanh_constant,
      init_range=c.init_range)
  b = config.buffer
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
  return Setup(
      model=model, ctrl=ctrl, algorithm=config.search.algorithm,
      random_sampler=config.search.random_sampler, fixed_cell=fixed_cell,
      bptt=config.train.bptt,
      cells_per_step=config.train.cells_per_step,
      ctrl_samples=c.samples_per_step, reward_c=c.reward_c,
      entropy_weight=c.entropy_weight, baseline_decay=c.baseline_decay,
      derive_cells=config.derive.num_cells,
      derive_chunk=config.derive.chunk_size,
      ctrl_steps_per_epoch=ctrl_steps_per_epoch(config), buffer=buf,
      shared_optimizer=config.train.optimizer, lr=config.train.lr,
      lr_decay=config.train.lr_decay,
      lr_decay_start_epoch=config.train.lr_decay_start_epoch,
      steps_per_epoch=config.train.steps_per_epoch,
      adam_lr=config.train.adam_lr, grad_clip=config.train.grad_clip,
      weight_decay=config.train.weight_decay, ctrl_lr=c.lr)


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


def _check_choice(config, dotted, choices):
  if _get(config, dotted) not in choices:
    raise ConfigError(
        f"config {dotted} must be one of {choices}, got {_get(config, dotted)!r}")


def ctrl_steps_per_epoch(config) -> int:
  """Controller steps per epoch: none for random search or a fixed cell."""
  if config.search.algorithm in ("random_ws", "fixed"):
    return 0
  return config.controller.steps_per_epoch


# ---------------------------------------------------------------------------
# Optimisers and state.


def shared_learning_rate(setup: Setup) -> Callable[[jax.Array], jax.Array]:
  """The shared weights' learning rate as a function of the shared step.

  SGD: ``lr * lr_decay ** max(0, epoch - lr_decay_start_epoch + 1)`` with
  ``epoch = step // steps_per_epoch`` (ENAS: x0.96 per epoch from epoch 15,
  counting from 0). Adam: constant ``adam_lr`` (the authors' practice).
  """
  if setup.shared_optimizer == "adam":
    return lambda step: jnp.asarray(setup.adam_lr, jnp.float32)

  def schedule(step):
    epoch = jnp.asarray(step) // setup.steps_per_epoch
    exponent = jnp.maximum(0, epoch - setup.lr_decay_start_epoch + 1)
    return setup.lr * setup.lr_decay ** exponent.astype(jnp.float32)

  return schedule


def make_shared_optimizer(setup: Setup) -> optax.GradientTransformation:
  """Global grad-norm clip, weight decay, then SGD (scheduled) or Adam."""
  schedule = shared_learning_rate(setup)
  base = (optax.sgd(schedule) if setup.shared_optimizer == "sgd"
          else optax.adam(schedule))
  return optax.chain(optax.clip_by_global_norm(setup.grad_clip),
                     optax.add_decayed_weights(setup.weight_decay), base)


def make_ctrl_optimizer(setup: Setup) -> optax.GradientTransformation:
  return optax.adam(setup.ctrl_lr)


def init_state(config, setup: Setup) -> TrainState:
  key = jax.random.key(config.seed)
  k_shared, k_ctrl = jax.random.split(jax.random.fold_in(key, 0))
  shared = supernet.init(k_shared, setup.model)
  ctrl = controller.init(k_ctrl, setup.ctrl)
  # Separate buffers: the steps donate the state, and one buffer may not be
  # donated twice.
  zero = lambda: jnp.zeros((), jnp.int32)
  return TrainState(
      shared=shared,
      shared_opt=make_shared_optimizer(setup).init(shared),
      ctrl=ctrl,
      ctrl_opt=make_ctrl_optimizer(setup).init(ctrl),
      baseline=jnp.zeros((), jnp.float32),
      key=key, epoch=zero(), shared_step=zero(), ctrl_step=zero(),
      train_pos=zero(), valid_pos=zero(),
      carry=jnp.zeros((setup.cells_per_step, config.train.batch_size,
                       setup.model.hidden_size), jnp.float32),
      buffer=buffer_lib.init(setup.buffer.capacity, setup.ctrl.num_steps))


# ---------------------------------------------------------------------------
# Jitted steps.


def _window(data_2d, pos, bptt):
  """``(inputs, targets)`` ``[T, B]`` starting at row ``pos`` (traced)."""
  block = jax.lax.dynamic_slice_in_dim(data_2d, pos, bptt + 1, axis=0)
  return block[:-1], block[1:]


def _advance(pos, bptt, rows):
  """Next window start; wraps to 0 when a full window no longer fits."""
  pos = pos + bptt
  return jnp.where(pos + bptt + 1 > rows, 0, pos)


def sample_cells(state: TrainState, key: jax.Array, num: int, setup: Setup,
                 mode: str = "train") -> jax.Array:
  """``int32[num, 2N-1]`` cells from the algorithm's sampler."""
  if setup.algorithm == "fixed":
    cell = jnp.asarray(setup.fixed_cell, jnp.int32)
    return jnp.broadcast_to(cell, (num, cell.size))
  if setup.algorithm == "random_ws" and setup.random_sampler == "uniform":
    return search_space.sample_uniform(key, setup.model.num_nodes, num)
  return controller.sample(state.ctrl, key, num, config=setup.ctrl,
                           mode=mode).tokens


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def shared_step(state: TrainState, train_data: jax.Array, *, setup: Setup
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD/Adam step of the shared weights on the next train window.

  Each of the ``M = cells_per_step`` slots samples a cell and runs it with its
  own carry and dropout key; the loss is the mean over slots.
  """
  shared_opt = make_shared_optimizer(setup)
  key = jax.random.fold_in(jax.random.fold_in(state.key, _SHARED_STREAM),
                           state.shared_step)
  k_cells, k_drop = jax.random.split(key)
  cells = sample_cells(state, k_cells, setup.cells_per_step, setup)
  drop_keys = jax.random.split(k_drop, setup.cells_per_step)

  rows = train_data.shape[0]
  wrap = state.train_pos + setup.bptt + 1 > rows
  pos = jnp.where(wrap, 0, state.train_pos)
  carry = jnp.where(wrap, 0.0, state.carry)
  inputs, targets = _window(train_data, pos, setup.bptt)

  def loss_fn(params):
    losses, carries = jax.vmap(
        lambda cell, c, k: supernet.loss(params, cell, inputs, targets, c,
                                         config=setup.model, key=k,
                                         train=True))(cells, carry, drop_keys)
    return jnp.mean(losses), carries

  (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.shared)
  updates, opt_state = shared_opt.update(grads, state.shared_opt, state.shared)
  new_state = state._replace(
      shared=optax.apply_updates(state.shared, updates), shared_opt=opt_state,
      shared_step=state.shared_step + 1,
      train_pos=_advance(pos, setup.bptt, rows), carry=carry)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                     "lr": shared_learning_rate(setup)(state.shared_step),
                     "cells": cells}


def cell_losses(params: supernet.Params, cells: jax.Array, inputs: jax.Array,
                targets: jax.Array, *, config: supernet.SupernetConfig,
                chunk_size: int | None = None) -> jax.Array:
  """Mean eval-mode cross-entropy of each cell on one window, zero carry.

  ``cells [K, 2N-1]`` are scored together (``vmap``), ``chunk_size`` at a time
  when given, so that ``[K, T, B, V]`` logits never live in memory at once.
  """
  carry = supernet.init_carry(inputs.shape[1], config)
  one = lambda cell: supernet.loss(params, cell, inputs, targets, carry,
                                   config=config)[0]
  if chunk_size is None or chunk_size >= cells.shape[0]:
    return jax.vmap(one)(cells)
  return jax.lax.map(one, cells, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def controller_step(state: TrainState, valid_data: jax.Array, *, setup: Setup
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One REINFORCE step of the controller on the next validation window.

  ``M`` cells sampled in train mode are scored together on the window (eval
  mode, zero carry, so a reward depends only on its cell); reward
  ``c / ppl + entropy_weight * entropy`` (entropy summed over the cell's
  decisions, as ENAS), EMA baseline, loss ``-mean(sum log p * advantage)``
  with the log-probabilities from the teacher-forced ``controller.score``.

  With a memory buffer (``setup.buffer.enabled``) the step first stores new
  cells when an epoch's controller phase starts (:func:`_store`), then adds
  ``weight * buffer.replay_loss`` on ``replay_samples`` stored cells from
  ``replay_start_epoch`` on (the replay loss is computed and reported before
  that too, with weight 0). Its draws use their own PRNG streams, so the
  REINFORCE samples are those of the same run without a buffer.
  """
  ctrl_opt = make_ctrl_optimizer(setup)
  key = jax.random.fold_in(jax.random.fold_in(state.key, _CTRL_STREAM),
                           state.ctrl_step)
  rollout = controller.sample(state.ctrl, key, setup.ctrl_samples,
                              config=setup.ctrl, mode="train")
  rows = valid_data.shape[0]
  inputs, targets = _window(valid_data, state.valid_pos, setup.bptt)
  losses = cell_losses(state.shared, rollout.tokens, inputs, targets,
                       config=setup.model)
  ppl = jnp.exp(losses)
  entropy = jnp.sum(rollout.entropies, axis=-1)
  reward = setup.reward_c / ppl + setup.entropy_weight * entropy
  mean_reward = jnp.mean(reward)
  decay = setup.baseline_decay
  baseline = jnp.where(state.ctrl_step == 0, mean_reward,
                       decay * state.baseline + (1.0 - decay) * mean_reward)
  advantage = jax.lax.stop_gradient(reward - baseline)

  buf, replay_weight = state.buffer, jnp.zeros((), jnp.float32)
  if setup.buffer.enabled:
    buf = _store(state, setup)
    replay_key = jax.random.fold_in(
        jax.random.fold_in(state.key, _REPLAY_STREAM), state.ctrl_step)
    replay_tokens, replay_mask = buffer_lib.sample(
        buf, replay_key, setup.buffer.replay_samples)
    replaying = (state.epoch >= setup.buffer.replay_start_epoch) & (buf.size > 0)
    replay_weight = jnp.where(replaying, setup.buffer.weight, 0.0)

  def loss_fn(params):
    scored = controller.score(params, rollout.tokens, config=setup.ctrl,
                              mode="train")
    pg = -jnp.mean(jnp.sum(scored.log_probs, axis=-1) * advantage)
    if not setup.buffer.enabled:
      return pg, jnp.zeros((), jnp.float32)
    replay = buffer_lib.replay_loss(params, replay_tokens, replay_mask,
                                    config=setup.ctrl,
                                    variant=setup.buffer.variant)
    return pg + replay_weight * replay, replay

  (loss, replay), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.ctrl)
  updates, opt_state = ctrl_opt.update(grads, state.ctrl_opt, state.ctrl)
  new_state = state._replace(
      ctrl=optax.apply_updates(state.ctrl, updates), ctrl_opt=opt_state,
      baseline=baseline, ctrl_step=state.ctrl_step + 1,
      valid_pos=_advance(state.valid_pos, setup.bptt, rows), buffer=buf)
  return new_state, {
      "loss": loss, "reward": mean_reward, "baseline": baseline,
      "entropy": jnp.mean(entropy), "ppl": jnp.mean(ppl),
      "cells": rollout.tokens, "cell_rewards": reward, "cell_ppl": ppl,
      "replay_loss": replay, "replay_weight": replay_weight,
      "buffer_size": buf.size}


def _store(state: TrainState, setup: Setup) -> buffer_lib.Buffer:
  """The buffer after this step's store: at the first controller step of
  every epoch from ``store_start_epoch`` on, ``store_per_epoch`` cells sampled
  (train mode) by the controller before the step's update.

  Keyed by the epoch, so a resumed run stores the same cells.
  """
  cfg = setup.buffer
  first_step = state.ctrl_step % setup.ctrl_steps_per_epoch == 0
  storing = first_step & (state.epoch >= cfg.store_start_epoch)

  def store(buf):
    key = jax.random.fold_in(jax.random.fold_in(state.key, _STORE_STREAM),
                             state.epoch)
    k_sample, k_add = jax.random.split(key)
    cells = controller.sample(state.ctrl, k_sample, cfg.store_per_epoch,
                              config=setup.ctrl, mode="train").tokens
    return buffer_lib.add(buf, cells, k_add, policy=cfg.policy,
                          replace_rows=cfg.replace_rows)

  return jax.lax.cond(storing, store, lambda buf: buf, state.buffer)


@functools.partial(jax.jit, static_argnames="setup")
def derive_cells(state: TrainState, valid_data: jax.Array, *, setup: Setup
                 ) -> tuple[jax.Array, jax.Array]:
  """``K`` cells and their ppl on the first validation window (zero carry).

  ENAS samples in derive mode from the controller; RS-WS draws from its
  sampler. The key depends on the epoch, so each derive sees new cells.
  """
  key = jax.random.fold_in(jax.random.fold_in(state.key, _DERIVE_STREAM),
                           state.epoch)
  cells = sample_cells(state, key, setup.derive_cells, setup, mode="derive")
  return cells, window_ppl(state.shared, cells, valid_data, setup=setup)


@functools.partial(jax.jit, static_argnames="setup")
def window_ppl(params: supernet.Params, cells: jax.Array, valid_data: jax.Array,
               *, setup: Setup) -> jax.Array:
  """Shared-weight ppl ``[K]`` of ``cells`` on the first validation window
  (zero carry), ``setup.derive_chunk`` cells at a time: the derive score."""
  inputs, targets = _window(valid_data, 0, setup.bptt)
  return jnp.exp(cell_losses(params, cells, inputs, targets,
                             config=setup.model,
                             chunk_size=setup.derive_chunk))


# ---------------------------------------------------------------------------
# Exact evaluation of one cell on a whole split.


@functools.partial(jax.jit, static_argnames="config")
def _eval_window(params, cell, window, carry, num_rows, *, config):
  """Summed CE over the first ``num_rows`` target rows of ``window [T+1, B]``."""
  logits, carry = supernet.apply(params, cell, window[:-1], carry,
                                 config=config)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, window[1:])
  rows = jnp.arange(ce.shape[0])[:, None] < num_rows
  return jnp.sum(jnp.where(rows, ce, 0.0)), carry


def evaluate_cell(params: supernet.Params, cell: jax.Array, split: np.ndarray,
                  *, config: supernet.SupernetConfig, bptt: int,
                  batch_size: int, max_windows: int = 0) -> tuple[float, int]:
  """Perplexity of ``cell`` on a whole split (every target once, exact).

  The split is batchified into ``batch_size`` columns and run window by
  window with the carry passed along, from a zero state. The last, shorter
  window is padded and masked, so every split shares one compilation.
  ``max_windows > 0`` stops after that many windows (a partial evaluation:
  the returned token count says how much was seen).

  Returns:
    ``(perplexity, number of target tokens evaluated)``.
  """
  columns = data.batchify(split, batch_size)
  targets = columns.shape[0] - 1
  if max_windows > 0:
    targets = min(targets, max_windows * bptt)
  carry = supernet.init_carry(batch_size, config)
  sums = []
  for start in range(0, targets, bptt):
    window = columns[start:min(start + bptt, targets) + 1]
    num_rows = window.shape[0] - 1
    if num_rows < bptt:
      pad = np.zeros((bptt + 1 - window.shape[0], batch_size), np.int32)
      window = np.concatenate([window, pad])
    s, carry = _eval_window(params, cell, window, carry, num_rows,
                            config=config)
    sums.append(s)
  total = float(np.sum(jax.device_get(sums), dtype=np.float64))
  return math.exp(total / (targets * batch_size)), targets * batch_size


# ---------------------------------------------------------------------------
# The host loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) a search in ``workdir``; returns the best-cell record.

  Raises:
    data.DataError: the data directory is missing or fails its checksums.
    ConfigError: an invalid config value (names the key).
    checkpointing.WorkdirMismatch: ``workdir`` holds a run of another config.
    TrainingDiverged: a non-finite loss (names step and last checkpoint).
  """
  loop = _Loop(config, workdir)
  try:
    return loop.run()
  finally:
    loop.close()


class _Loop:
  """State and files of one run; :meth:`run` drives the phases."""

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = workdir
    # Everything is checked before the run directory is bound to the config,
    # so a typo does not leave a directory that refuses the corrected command.
    corpus = data.load_corpus(config.data.dir,
                              verify=config.data.verify_checksums)
    self.corpus = corpus
    self.setup = make_setup(config, corpus.vocab_size)
    t = config.train
    try:
      self.train_data = jnp.asarray(data.batchify(corpus.train, t.batch_size))
      self.valid_data = jnp.asarray(data.batchify(corpus.valid, t.batch_size))
      data.batchify(corpus.test, config.eval.batch_size)
    except ValueError as e:
      raise ConfigError(f"config train.batch_size / eval.batch_size: {e}")
    for name, arr in (("train", self.train_data), ("valid", self.valid_data)):
      if arr.shape[0] < t.bptt + 1:
        raise ConfigError(
            f"the {name} split has {arr.shape[0]} rows at batch size "
            f"{t.batch_size}, fewer than train.bptt + 1 = {t.bptt + 1}")
    self.ctrl_per_epoch = ctrl_steps_per_epoch(config)
    self.ckpt = checkpointing.RunDirectory(
        workdir, config, max_to_keep=config.keep_checkpoints)
    self.writer = metrics_lib.RunWriter(workdir)
    fresh = init_state(config, self.setup)
    restored = self.ckpt.restore(fresh)
    if restored is None:
      self.state = fresh
      self.writer.truncate({})
      self.finished = False
      self.best = None
      print(f"run directory: {workdir} (new run)", flush=True)
    else:
      self.state, meta = restored
      self.writer.truncate(meta["offsets"])
      self.finished = meta.get("finished", False)
      self.best = meta.get("best")
      print(f"run directory: {workdir} (resumed at epoch "
            f"{int(self.state.epoch)}, shared step "
            f"{int(self.state.shared_step)}, controller step "
            f"{int(self.state.ctrl_step)})", flush=True)

  def close(self):
    self.writer.close()
    self.ckpt.close()

  # -- checkpoints ----------------------------------------------------------

  def save(self, finished=False):
    # offsets() flushes the logs first, so the checkpoint never points past
    # what is on disk.
    self.ckpt.save(self.state, {"offsets": self.writer.offsets(),
                                "finished": finished, "best": self.best})

  def _diverged(self, what, step):
    last = self.ckpt.latest_description()
    raise TrainingDiverged(
        f"non-finite {what} at {step} (epoch {int(self.state.epoch)}); "
        f"last good checkpoint: {last}")

  # -- phases ---------------------------------------------------------------

  def run(self) -> dict:
    c = self.config
    if self.finished:
      print("run already complete; best cell:", json.dumps(self.best),
            flush=True)
      return self.best
    while int(self.state.epoch) < c.train.epochs:
      epoch = int(self.state.epoch)
      self._shared_phase(epoch)
      self._ctrl_phase(epoch)
      self._end_epoch(epoch)
    return self.best

  def _phase(self, epoch, name, total, counter, step_fn, observe, summarize,
             rate_key):
    """Runs what remains of one phase: progress bar, logs and checkpoints.

    Args:
      epoch: the current epoch.
      name: ``"shared"`` or ``"controller"`` (progress bar).
      total: steps of this phase per epoch.
      counter: the state field counting this phase's steps.
      step_fn: ``state -> (state, device metrics)``.
      observe: ``(step, epoch, host metrics) -> dict`` of per-step scalars
        (checks finiteness and writes per-step records first).
      summarize: window means -> the values logged to ``metrics.jsonl``.
      rate_key: the logged key of the phase's steps per second.

    Logs close every ``log_every`` steps and checkpoints land every
    ``checkpoint_every`` steps (a multiple) and at the phase end, so a
    resumed run logs exactly the same windows.
    """
    done = int(getattr(self.state, counter)) - epoch * total
    if done >= total:
      return
    window = metrics_lib.Window()
    bar = metrics_lib.progress(
        total, done, f"epoch {epoch + 1}/{self.config.train.epochs} {name}")
    start = time.perf_counter()
    for i in range(done, total):
      step = epoch * total + i  # == state.<counter>, without a device sync.
      self.state, m = step_fn(self.state)
      scalars = observe(step, epoch, jax.device_get(m))
      window.add(**scalars)
      bar.update(1)
      bar.set_postfix({k: f"{v:.4g}" for k, v in list(scalars.items())[:2]})
      if (i + 1) % self.config.log_every == 0 or i + 1 == total:
        means = window.pop()
        values = summarize(means)
        values[rate_key] = means["n"] / (time.perf_counter() - start)
        start = time.perf_counter()
        self.writer.metrics(step + 1, epoch, values, counter=counter)
      if (i + 1) % self.config.checkpoint_every == 0 or i + 1 == total:
        self.save()
    bar.close()

  def _shared_phase(self, epoch):
    def observe(step, epoch, m):
      if not math.isfinite(float(m["loss"])):
        self._diverged("training loss", f"shared step {step}")
      return {"loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
              "lr": float(m["lr"])}

    def summarize(means):
      return {"train/loss": means["loss"],
              "train/ppl": math.exp(means["loss"]),
              "train/grad_norm": means["grad_norm"], "train/lr": means["lr"]}

    self._phase(epoch, "shared", self.setup.steps_per_epoch, "shared_step",
                lambda state: shared_step(state, self.train_data,
                                          setup=self.setup),
                observe, summarize, rate_key="train/steps_per_s")

  def _ctrl_phase(self, epoch):
    def observe(step, epoch, m):
      if not (np.isfinite(m["loss"]) and np.isfinite(m["baseline"])):
        self._diverged("controller loss", f"controller step {step}")
      self.writer.archs(step, epoch, m["cells"], m["cell_rewards"],
                        m["cell_ppl"])
      scalars = {"reward": float(m["reward"]), "entropy": float(m["entropy"]),
                 "baseline": float(m["baseline"]), "loss": float(m["loss"]),
                 "ppl": float(m["ppl"])}
      if buffered:
        scalars.update(replay_loss=float(m["replay_loss"]),
                       replay_weight=float(m["replay_weight"]),
                       buffer_size=float(m["buffer_size"]))
      return scalars

    def summarize(means):
      values = {"ctrl/reward": means["reward"],
                "ctrl/baseline": means["baseline"],
                "ctrl/entropy": means["entropy"], "ctrl/loss": means["loss"],
                "ctrl/sampled_ppl": means["ppl"],
                "ctrl/lr": self.config.controller.lr}
      if buffered:
        # The replay loss is reported from the first stored cell on; its
        # weight in the loss is 0 before buffer.replay_start_epoch.
        if means["buffer_size"] > 0:
          values["ctrl/replay_loss"] = means["replay_loss"]
        values["ctrl/replay_weight"] = means["replay_weight"]
        values["buffer/size"] = means["buffer_size"]
      return values

    buffered = self.setup.buffer.enabled

    self._phase(epoch, "controller", self.ctrl_per_epoch, "ctrl_step",
                lambda state: controller_step(state, self.valid_data,
                                              setup=self.setup),
                observe, summarize, rate_key="ctrl/steps_per_s")

  def _end_epoch(self, epoch):
    c = self.config
    last = epoch + 1 == c.train.epochs
    derived = None
    if last or (epoch + 1) % c.derive.every_epochs == 0:
      derived = self._derive(epoch, final=last)
    self.state = self.state._replace(epoch=self.state.epoch + 1)
    self._summary(epoch, derived)
    self.save(finished=last)
    self.finished = last

  def _derive(self, epoch, final):
    c = self.config
    start = time.perf_counter()
    cells, ppl = derive_cells(self.state, self.valid_data, setup=self.setup)
    cells, ppl = np.asarray(cells), np.asarray(ppl)
    finite = np.isfinite(ppl)
    if not finite.any():
      self._diverged("derive perplexity of every cell", f"epoch {epoch}")
    best_i = int(np.argmin(np.where(finite, ppl, np.inf)))
    best = jnp.asarray(cells[best_i])
    ev = dict(config=self.setup.model, bptt=c.train.bptt,
              batch_size=c.eval.batch_size, max_windows=c.eval.max_windows)
    valid_ppl, valid_tokens = evaluate_cell(self.state.shared, best,
                                            self.corpus.valid, **ev)
    record = {
        "epoch": epoch, "tokens": cells[best_i].tolist(),
        "arch": str(search_space.Architecture.from_tokens(cells[best_i])),
        "derive_batch_ppl": float(ppl[best_i]), "valid_ppl": valid_ppl,
        "valid_tokens": valid_tokens}
    if final:
      record["test_ppl"], record["test_tokens"] = evaluate_cell(
          self.state.shared, best, self.corpus.test, **ev)
    for key in ("valid_ppl", "test_ppl"):
      if key in record and not math.isfinite(record[key]):
        self._diverged(key.replace("_", " ") + " of the derived cell",
                       f"epoch {epoch}")
    self.writer.derived(epoch, cells, ppl, best_i)
    self.writer.metrics(int(self.state.shared_step), epoch, {
        "valid/ppl": valid_ppl,
        "derive/batch_ppl_best": float(ppl[best_i]),
        "derive/batch_ppl_median": float(np.median(ppl[finite])),
        "derive/unique_cells": len({tuple(r) for r in cells}),
        "derive/seconds": time.perf_counter() - start})
    # ``best`` is the best derived cell so far (epoch summaries); the run's
    # answer, best_arch.json, is the last derive's cell under the final
    # weights, as in ENAS.
    if self.best is None or valid_ppl < self.best["valid_ppl"] or final:
      self.best = record
    if final:
      if "test_ppl" in record:
        self.writer.metrics(int(self.state.shared_step), epoch,
                            {"test/ppl": record["test_ppl"]})
      self.writer.best_arch(record)
    return record

  def _summary(self, epoch, derived):
    last = self.writer.last_values
    parts = [f"epoch {epoch + 1}/{self.config.train.epochs}"]
    if "train/ppl" in last:
      parts.append(f"train ppl {last['train/ppl']:.1f}")
    if self.ctrl_per_epoch and "ctrl/reward" in last:
      parts.append(f"reward {last['ctrl/reward']:.3f}")
      parts.append(f"entropy {last['ctrl/entropy']:.3f}")
    if derived is not None:
      parts.append(f"derived valid ppl {derived['valid_ppl']:.1f}")
    if self.best is not None:
      parts.append(f"best {self.best['arch']} "
                   f"(valid ppl {self.best['valid_ppl']:.1f})")
    print(" | ".join(parts), flush=True)
