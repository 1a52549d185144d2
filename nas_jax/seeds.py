"""Many independent searches in one process: one state, a leading seed axis.

The whole :class:`steps.TrainState` of S runs (parameters, optimiser states,
controller, EMA baseline, PRNG keys, data positions, carries, counters) is
stacked on a leading axis of size S, and :func:`shared_steps` /
:func:`controller_steps` advance all S with one compiled, ``vmap``-ed
program: S seeds cost one compilation, and their small per-seed matmuls run
as batched ones. Seed ``s`` of a stacked run follows the same trajectory as a
single run with that seed (same keys, same data order; equal to float
tolerance, as batching may reorder floating-point sums), tested in
``tests/test_seeds.py``; ``benchmarks/stacked_seeds.py`` measures the gain.

All seeds share one :class:`settings.Setup` (the config apart from ``seed``)
and the same data. The search loop (``train.train_many``) runs the same
``vmap``-ed windows through :class:`devices.Placement`, which also lays the
seeds out over devices; these unsharded functions serve the benchmarks and
tests.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from nas_jax import settings
from nas_jax import steps


def init_states(setup: settings.Setup, seeds: Sequence[int]
                ) -> steps.TrainState:
  """The initial states of ``seeds``, stacked on a leading axis."""
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
  return stack([steps.init_state(setup, int(s)) for s in seeds])


def stack(states: Sequence[steps.TrainState]) -> steps.TrainState:
  """Stacks states of the same structure on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(states: steps.TrainState, index: int) -> steps.TrainState:
  """Seed ``index``'s state (a view of row ``index`` of every leaf)."""
  return jax.tree.map(lambda x: x[index], states)


def num_seeds(states: steps.TrainState) -> int:
  return int(states.epoch.shape[0])


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def shared_steps(states: steps.TrainState, train_data: jax.Array, *,
                 setup: settings.Setup):
  """:func:`steps.shared_step` for every seed: ``(states, metrics [S, ...])``."""
  return jax.vmap(
      lambda s: steps.shared_step(s, train_data, setup=setup))(states)


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def controller_steps(states: steps.TrainState, valid_data: jax.Array, *,
                     setup: settings.Setup):
  """:func:`steps.controller_step` for every seed: ``(states, metrics)``
  (the memory buffer's store is :func:`store_cells`, run when a phase starts)."""
  return jax.vmap(
      lambda s: steps.controller_step(s, valid_data, setup=setup))(states)


@functools.partial(jax.jit, static_argnames=("step", "length", "setup"),
                   donate_argnums=0)
def run_windows(states: steps.TrainState, data_2d: jax.Array, *,
                step: Callable, length: int, setup: settings.Setup):
  """:func:`steps.run_window` for every seed: ``length`` steps of ``step``
  as one program; metrics ``[S, length, ...]``."""
  return jax.vmap(lambda s: steps.scan_steps(
      s, data_2d, step=step, length=length, setup=setup))(states)


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def store_cells(states: steps.TrainState, *, setup: settings.Setup
                ) -> steps.TrainState:
  """:func:`steps.store_cells` for every seed (all stacked seeds are at the
  same counters, so it is due for all or none)."""
  return jax.vmap(lambda s: steps.store(s, setup))(states)


def next_epoch(states: steps.TrainState) -> steps.TrainState:
  """Every seed's epoch counter + 1 (the host loop's end of an epoch)."""
  return states._replace(epoch=states.epoch + 1)
