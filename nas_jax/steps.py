"""The search state and the pure, jitted steps that advance it.

Everything a run needs to continue lives in :class:`TrainState` (parameters,
optimiser states, EMA baseline, PRNG key, data positions, hidden carry,
counters, memory buffer), a pytree of arrays advanced by:

* :func:`shared_step` ``(state, train_data) -> (state, metrics)``: one step
  of the shared weights on one sampled cell per slot;
* :func:`controller_step` ``(state, valid_data) -> (state, metrics)``: one
  REINFORCE step (plus the memory buffer's replay loss); :func:`store_cells`
  the buffer's store when a controller phase starts;
* :func:`derive_cells` ``(state, valid_data) -> (cells, ppl)``: the derive
  phase's candidates and their scores;
* :func:`run_window`: many shared or controller steps as one ``lax.scan``,
  which is how the host loop runs them.

Each takes the run's :class:`settings.Setup` as a static argument and is
compiled once for every cell: the cell is data. Randomness: every draw uses
``fold_in(fold_in(state.key, STREAM), counter)`` (:mod:`nas_jax.streams`),
so results depend only on the seed and the counters, never on where a run
was interrupted.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nas_jax import buffer as buffer_lib
from nas_jax import controller
from nas_jax import data
from nas_jax import evaluation
from nas_jax import search_space
from nas_jax import settings
from nas_jax import streams
from nas_jax import supernet

Setup = settings.Setup


class TrainState(NamedTuple):
  """Everything the search needs to continue, as arrays.

  ``carry`` is the supernet's hidden state per cell slot ``[M, B, H]``
  (carried across BPTT windows, reset when the train pointer wraps).
  ``baseline`` is the EMA of the controller's reward (entropy bonus
  included): ``float32[]``, or ``float32[2N-1]``, one per decision, with
  ``reinforce.entropy_bonus == "step"``; it is set to the first step's mean
  reward. ``buffer`` is the memory buffer of stored cells (empty while
  ``buffer.variant`` is ``"none"``).
  """
  shared: supernet.Params
  shared_opt: Any
  ctrl: controller.Params
  ctrl_opt: Any
  baseline: jax.Array  # float32[] (float32[2N-1] with a per-step bonus)
  key: jax.Array  # typed PRNG key
  epoch: jax.Array  # int32[]: completed epochs
  shared_step: jax.Array  # int32[]: shared steps done in the whole run
  ctrl_step: jax.Array  # int32[]: controller steps done in the whole run
  train_pos: jax.Array  # int32[]: next row of the batchified train data
  valid_pos: jax.Array  # int32[]: next row of the reward (valid) data
  carry: jax.Array  # float32[M, B, H]
  buffer: buffer_lib.Buffer


def _stream_key(state: TrainState, stream: int, counter) -> jax.Array:
  return jax.random.fold_in(jax.random.fold_in(state.key, stream), counter)


# ---------------------------------------------------------------------------
# Optimisers and state.


def shared_learning_rate(setup: Setup) -> Callable[[jax.Array], jax.Array]:
  """The shared weights' learning rate as a function of the shared step.

  SGD: ``lr * lr_decay ** max(0, epoch - lr_decay_start_epoch + 1)`` with
  ``epoch = step // steps_per_epoch`` (ENAS: x0.96 per epoch from epoch 15,
  counting from 0; ``lr_decay_start_epoch`` 16 is the authors' code's SGD
  timing, carpedm20's, which decays after each epoch from index 15 on).
  Adam: constant ``adam_lr`` (the authors' practice).
  """
  s = setup.shared
  if s.optimizer == "adam":
    return lambda step: jnp.asarray(s.adam_lr, jnp.float32)

  def schedule(step):
    epoch = jnp.asarray(step) // s.steps_per_epoch
    exponent = jnp.maximum(0, epoch - s.lr_decay_start_epoch + 1)
    return s.lr * s.lr_decay ** exponent.astype(jnp.float32)

  return schedule


def make_shared_optimizer(setup: Setup) -> optax.GradientTransformation:
  """Global grad-norm clip, weight decay, then SGD (scheduled) or Adam."""
  schedule = shared_learning_rate(setup)
  base = (optax.sgd(schedule) if setup.shared.optimizer == "sgd"
          else optax.adam(schedule))
  return optax.chain(optax.clip_by_global_norm(setup.shared.grad_clip),
                     optax.add_decayed_weights(setup.shared.weight_decay), base)


def make_ctrl_optimizer(setup: Setup) -> optax.GradientTransformation:
  return optax.adam(setup.reinforce.lr)


def init_state(setup: Setup, seed: int) -> TrainState:
  """The state of a new run with ``seed`` (the same every time).

  One compiled program per setup (the seed is data), not dozens of eager
  ones: a process that starts a run compiles it once.
  """
  return _init_state(jnp.asarray(seed, jnp.int32), setup=setup)


@functools.partial(jax.jit, static_argnames="setup")
def _init_state(seed: jax.Array, *, setup: Setup) -> TrainState:
  key = jax.random.key(seed)
  k_shared, k_ctrl = jax.random.split(jax.random.fold_in(key, streams.INIT))
  shared = supernet.init(k_shared, setup.model)
  ctrl = controller.init(k_ctrl, setup.ctrl)
  zero = lambda: jnp.zeros((), jnp.int32)
  return TrainState(
      shared=shared,
      shared_opt=make_shared_optimizer(setup).init(shared),
      ctrl=ctrl,
      ctrl_opt=make_ctrl_optimizer(setup).init(ctrl),
      baseline=jnp.zeros(
          (setup.ctrl.num_steps,) if setup.reinforce.entropy_bonus == "step"
          else (), jnp.float32),
      key=key, epoch=zero(), shared_step=zero(), ctrl_step=zero(),
      train_pos=zero(), valid_pos=zero(),
      carry=jnp.zeros((setup.shared.cells_per_step, setup.shared.batch_size,
                       setup.model.hidden_size), jnp.float32),
      buffer=buffer_lib.init(setup.buffer.capacity, setup.ctrl.num_steps))


# ---------------------------------------------------------------------------
# Jitted steps.


def sample_cells(state: TrainState, key: jax.Array, num: int, setup: Setup,
                 mode: str = "train") -> jax.Array:
  """``int32[num, 2N-1]`` cells from the algorithm's sampler."""
  search = setup.search
  if search.algorithm == "fixed":
    cell = jnp.asarray(search.fixed_cell, jnp.int32)
    return jnp.broadcast_to(cell, (num, cell.size))
  if search.algorithm == "random_ws" and search.random_sampler == "uniform":
    return search_space.sample_uniform(key, setup.model.num_nodes, num)
  return controller.sample(state.ctrl, key, num, config=setup.ctrl,
                           mode=mode).tokens


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def shared_step(state: TrainState, train_data: jax.Array, *, setup: Setup
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD/Adam step of the shared weights on the next train window.

  Each of the ``M = cells_per_step`` slots samples a cell and runs it with its
  own carry and dropout key; the loss is the mean over slots (``vmap`` over
  slots only when ``M > 1``).
  """
  bptt, m = setup.shared.bptt, setup.shared.cells_per_step
  k_cells, k_drop = jax.random.split(
      _stream_key(state, streams.SHARED, state.shared_step))
  cells = sample_cells(state, k_cells, m, setup)
  drop_keys = jax.random.split(k_drop, m)

  rows = train_data.shape[0]
  wrap = state.train_pos + bptt + 1 > rows
  pos = jnp.where(wrap, 0, state.train_pos)
  carry = jnp.where(wrap, 0.0, state.carry)
  inputs, targets = data.window(train_data, pos, bptt)

  def loss_fn(params):
    one = lambda cell, c, k: supernet.loss(params, cell, inputs, targets, c,
                                           config=setup.model, key=k,
                                           train=True)
    if m == 1:  # Unbatched, lax.switch runs one activation, not all four.
      loss, c = one(cells[0], carry[0], drop_keys[0])
      return loss, c[None]
    losses, carries = jax.vmap(one)(cells, carry, drop_keys)
    return jnp.mean(losses), carries

  (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.shared)
  updates, opt_state = make_shared_optimizer(setup).update(
      grads, state.shared_opt, state.shared)
  new_state = state._replace(
      shared=optax.apply_updates(state.shared, updates), shared_opt=opt_state,
      shared_step=state.shared_step + 1,
      train_pos=data.next_position(pos, bptt, rows), carry=carry)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                     "lr": shared_learning_rate(setup)(state.shared_step),
                     "cells": cells}


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def controller_step(state: TrainState, valid_data: jax.Array, *, setup: Setup
                    ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One REINFORCE step of the controller on the next validation window.

  ``M`` cells sampled in train mode are scored together on the window (eval
  mode, zero carry, so a reward depends only on its cell), with the
  log-probabilities from the teacher-forced ``controller.score``. With
  ``reinforce.entropy_bonus`` ``"cell"`` (TF ENAS): reward ``c / ppl +
  entropy_weight * entropy`` (entropy summed over the cell's decisions), an
  EMA baseline of the mean reward, loss ``-mean(sum_t log p_t * advantage)``.
  With ``"step"`` (the authors', after carpedm20's ``entropy_mode
  "reward"``): decision ``t`` has its own reward ``c / ppl + entropy_weight
  * H_t`` and EMA baseline, loss ``-mean(sum_t log p_t * advantage_t)``; the
  logged reward and baseline (and ``cell_rewards``) are then means over the
  decisions.
  With ``reinforce.reset_each_phase`` (the authors') the baseline and the
  validation pointer restart at every controller phase's first step.

  With a memory buffer (``setup.buffer.enabled``) the step adds ``weight *
  buffer.replay_loss`` on ``replay_samples`` stored cells from
  ``replay_start_epoch`` on (the replay loss is computed and reported before
  that too, with weight 0). Storing new cells is its own program,
  :func:`store_cells`, which the loop runs when a controller phase starts
  (:func:`store_due`). Its draws use their own PRNG streams, so the
  REINFORCE samples are those of the same run without a buffer.
  """
  r = setup.reinforce
  rollout = controller.sample(
      state.ctrl, _stream_key(state, streams.CONTROLLER, state.ctrl_step),
      r.samples_per_step, config=setup.ctrl, mode="train")
  # A phase's first step: with reset_each_phase (the authors') the baseline
  # restarts from this step's reward and the rewards from the first
  # validation window; otherwise only the run's first step does.
  restart = ((state.ctrl_step % r.steps_per_epoch == 0)
             if r.reset_each_phase and r.steps_per_epoch
             else state.ctrl_step == 0)
  valid_pos = jnp.where(restart, 0, state.valid_pos)
  inputs, targets = data.window(valid_data, valid_pos, setup.shared.bptt)
  log_ppl = evaluation.cell_losses(state.shared, rollout.tokens, inputs,
                                   targets, config=setup.model)
  ppl = jnp.exp(log_ppl)
  entropy = jnp.sum(rollout.entropies, axis=-1)
  per_step = r.entropy_bonus == "step"
  if per_step:  # [M, 2N-1]: a reward per decision.
    reward = r.reward_c / ppl[:, None] + r.entropy_weight * rollout.entropies
  else:  # [M]
    reward = r.reward_c / ppl + r.entropy_weight * entropy
  mean_reward = jnp.mean(reward, axis=0)
  baseline = jnp.where(
      restart, mean_reward,
      r.baseline_decay * state.baseline + (1.0 - r.baseline_decay) * mean_reward)
  advantage = jax.lax.stop_gradient(reward - baseline)
  buf, replay_tokens, replay_mask, replay_weight = _replay_inputs(state, setup)

  def loss_fn(params):
    scored = controller.score(params, rollout.tokens, config=setup.ctrl,
                              mode="train")
    if per_step:
      pg = -jnp.mean(jnp.sum(scored.log_probs * advantage, axis=-1))
    else:
      pg = -jnp.mean(jnp.sum(scored.log_probs, axis=-1) * advantage)
    if not setup.buffer.enabled:
      return pg, jnp.zeros((), jnp.float32)
    replay = buffer_lib.replay_loss(params, replay_tokens, replay_mask,
                                    config=setup.ctrl,
                                    variant=setup.buffer.variant)
    return pg + replay_weight * replay, replay

  (loss, replay), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.ctrl)
  updates, opt_state = make_ctrl_optimizer(setup).update(
      grads, state.ctrl_opt, state.ctrl)
  new_state = state._replace(
      ctrl=optax.apply_updates(state.ctrl, updates), ctrl_opt=opt_state,
      baseline=baseline, ctrl_step=state.ctrl_step + 1,
      valid_pos=data.next_position(valid_pos, setup.shared.bptt,
                                   valid_data.shape[0]),
      buffer=buf)
  return new_state, {
      "loss": loss, "reward": jnp.mean(mean_reward),
      "baseline": jnp.mean(baseline),
      # Mean log ppl, not mean ppl: one overflowing cell (ppl inf in
      # float32 from log ppl ~89) must not make the logged value inf.
      "entropy": jnp.mean(entropy), "log_ppl": jnp.mean(log_ppl),
      "cells": rollout.tokens,
      "cell_rewards": jnp.mean(reward, axis=-1) if per_step else reward,
      "cell_log_ppl": log_ppl,
      "replay_loss": replay, "replay_weight": replay_weight,
      "buffer_size": buf.size}


def _replay_inputs(state: TrainState, setup: Setup):
  """``(buffer, replayed tokens, their mask, weight)``; weight 0 without a
  memory buffer."""
  if not setup.buffer.enabled:
    return state.buffer, None, None, jnp.zeros((), jnp.float32)
  buf = state.buffer
  tokens, mask = buffer_lib.sample(
      buf, _stream_key(state, streams.REPLAY, state.ctrl_step),
      setup.buffer.replay_samples)
  replaying = (state.epoch >= setup.buffer.replay_start_epoch) & (buf.size > 0)
  return buf, tokens, mask, jnp.where(replaying, setup.buffer.weight, 0.0)


def store_due(setup: Setup, *, epoch: int, ctrl_step: int) -> bool:
  """Whether the memory buffer stores cells before controller step
  ``ctrl_step`` of ``epoch``: at the first controller step of every epoch
  from ``store_start_epoch`` on (host-side, from the counters)."""
  cfg = setup.buffer
  return bool(cfg.enabled
              and ctrl_step % setup.reinforce.steps_per_epoch == 0
              and epoch >= cfg.store_start_epoch)


def store(state: TrainState, setup: Setup) -> TrainState:
  """:func:`store_cells`, not jitted (for use inside other programs)."""
  cfg = setup.buffer
  k_sample, k_add = jax.random.split(
      _stream_key(state, streams.STORE, state.epoch))
  cells = controller.sample(state.ctrl, k_sample, cfg.store_per_epoch,
                            config=setup.ctrl, mode="train").tokens
  return state._replace(buffer=buffer_lib.add(
      state.buffer, cells, k_add, policy=cfg.policy,
      replace_rows=cfg.replace_rows))


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def store_cells(state: TrainState, *, setup: Setup) -> TrainState:
  """The memory buffer's store: ``store_per_epoch`` cells sampled (train
  mode) by the controller before the phase's first update, added to the
  buffer by its policy.

  Keyed by the epoch, so a resumed run stores the same cells. A program of
  its own rather than a ``lax.cond`` inside every controller step: under
  ``vmap`` (stacked seeds) a cond becomes a select, which would sample the
  stored cells at every step.
  """
  return store(state, setup)


@functools.partial(jax.jit, static_argnames=("step", "length", "setup"),
                   donate_argnums=0)
def run_window(state: TrainState, data_2d: jax.Array, *, step: Callable,
               length: int, setup: Setup
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """``length`` consecutive ``step``s (:func:`shared_step` or
  :func:`controller_step`) as one program, a ``lax.scan``.

  One dispatch and one host read per window instead of per step: on an
  accelerator, where a step at the CPU-default sizes takes milliseconds,
  per-step dispatch and reads would dominate. Returns the state after the
  window and every metric stacked on a leading ``[length]`` axis, the same
  values as the steps run one by one (to float tolerance). One compilation
  per (step, length).
  """
  return scan_steps(state, data_2d, step=step, length=length, setup=setup)


def scan_steps(state: TrainState, data_2d: jax.Array, *, step: Callable,
               length: int, setup: Setup
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """:func:`run_window`, not jitted (for use inside other programs, e.g.
  ``vmap``-ed over stacked seeds)."""
  return jax.lax.scan(lambda s, _: step(s, data_2d, setup=setup), state, None,
                      length=length)


@functools.partial(jax.jit, static_argnames="setup")
def derive_cells(state: TrainState, valid_data: jax.Array, *, setup: Setup
                 ) -> tuple[jax.Array, jax.Array]:
  """``K`` cells and their ppl on the first validation window (zero carry).

  ENAS samples from the controller in ``derive.mode`` (the authors' search:
  train mode); RS-WS draws from its sampler. The key depends on the epoch,
  so each derive sees new cells.
  """
  cells = sample_cells(state, _stream_key(state, streams.DERIVE, state.epoch),
                       setup.derive.num_cells, setup, mode=setup.derive.mode)
  return cells, evaluation.window_ppl(state.shared, cells, valid_data,
                                      setup=setup)
