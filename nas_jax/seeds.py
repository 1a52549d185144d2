"""Many independent searches in one process: one state, a leading seed axis.

The whole :class:`train.TrainState` of S runs (parameters, optimiser states,
controller, EMA baseline, PRNG keys, data positions, carries, counters) is
stacked on a leading axis of size S, and :func:`shared_steps` /
:func:`controller_steps` advance all S with one compiled, ``vmap``-ed
program: S seeds cost one compilation, and their small per-seed matmuls run
as batched ones. Seed ``s`` of a stacked run follows the same trajectory as a
single run with that seed (same keys, same data order; equal to float
tolerance, as batching may reorder floating-point sums), tested in
``tests/test_seeds.py``; ``benchmarks/stacked_seeds.py`` measures the gain.

All seeds share one :class:`train.Setup` (the config apart from ``seed``)
and the same data. The per-seed host work (logging, derive, checkpoints)
reads a seed's state with :func:`unstack`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from nas_jax import train


def seed_config(config: ml_collections.ConfigDict, seed: int
                ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``seed`` set."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.seed = int(seed)
  return out


def init_states(config: ml_collections.ConfigDict, setup: train.Setup,
                seeds: Sequence[int]) -> train.TrainState:
  """The initial states of ``seeds``, stacked on a leading axis."""
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"seeds must be distinct and non-empty, got {seeds}")
  states = [train.init_state(seed_config(config, s), setup) for s in seeds]
  return stack(states)


def stack(states: Sequence[train.TrainState]) -> train.TrainState:
  """Stacks states of the same structure on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack(states: train.TrainState, index: int) -> train.TrainState:
  """Seed ``index``'s state (a view of row ``index`` of every leaf)."""
  return jax.tree.map(lambda x: x[index], states)


def num_seeds(states: train.TrainState) -> int:
  return int(states.epoch.shape[0])


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def shared_steps(states: train.TrainState, train_data: jax.Array, *,
                 setup: train.Setup):
  """:func:`train.shared_step` for every seed: ``(states, metrics [S, ...])``."""
  return jax.vmap(
      lambda s: train.shared_step(s, train_data, setup=setup))(states)


@functools.partial(jax.jit, static_argnames="setup", donate_argnums=0)
def controller_steps(states: train.TrainState, valid_data: jax.Array, *,
                     setup: train.Setup):
  """:func:`train.controller_step` for every seed: ``(states, metrics)``.

  With a memory buffer the store's ``lax.cond`` becomes a select under
  ``vmap``, so every step pays for sampling the stored cells; use single runs
  (or ``buffer.variant="none"``) where that matters.
  """
  return jax.vmap(
      lambda s: train.controller_step(s, valid_data, setup=setup))(states)


def next_epoch(states: train.TrainState) -> train.TrainState:
  """Every seed's epoch counter + 1 (the host loop's end of an epoch)."""
  return states._replace(epoch=states.epoch + 1)
