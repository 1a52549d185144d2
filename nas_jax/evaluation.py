"""Scoring cells with the shared weights: on one window, and exactly on a
whole split.

* :func:`cell_losses`: eval-mode cross-entropy of many cells on one window
  from a zero carry (the controller's reward, the derive score, the probe);
* :func:`window_ppl`: that as perplexity on the first validation window,
  jitted (the derive score);
* :func:`evaluate_cell`: one cell's exact perplexity on a whole split.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax import data
from nas_jax import settings
from nas_jax import supernet


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
  if cells.shape[0] == 1:  # Unbatched, lax.switch runs one activation.
    return one(cells[0])[None]
  if chunk_size is None or chunk_size >= cells.shape[0]:
    return jax.vmap(one)(cells)
  return jax.lax.map(one, cells, batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames="setup")
def window_ppl(params: supernet.Params, cells: jax.Array, valid_data: jax.Array,
               *, setup: settings.Setup) -> jax.Array:
  """Shared-weight ppl ``[K]`` of ``cells`` on the first validation window
  (zero carry), ``setup.derive.chunk_size`` cells at a time: the derive
  score."""
  inputs, targets = data.window(valid_data, 0, setup.shared.bptt)
  return jnp.exp(cell_losses(params, cells, inputs, targets,
                             config=setup.model,
                             chunk_size=setup.derive.chunk_size))


@functools.partial(jax.jit, static_argnames=("config", "bptt"))
def _eval_window(params, cell, padded, start, carry, num_rows, *, config, bptt):
  """Summed CE over the first ``num_rows`` target rows of the window at
  ``start`` of ``padded [L + T, B]``, and the carry after it."""
  inputs, targets = data.window(padded, start, bptt)
  logits, carry = supernet.apply(params, cell, inputs, carry, config=config)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  rows = jnp.arange(ce.shape[0])[:, None] < num_rows
  return jnp.sum(jnp.where(rows, ce, 0.0)), carry


def evaluate_cell(params: supernet.Params, cell: jax.Array, split: np.ndarray,
                  *, config: supernet.SupernetConfig, bptt: int,
                  batch_size: int, max_windows: int = 0) -> tuple[float, int]:
  """Perplexity of ``cell`` on a whole split (every target once, exact).

  The split is batchified into ``batch_size`` columns and run window by
  window (:func:`data.windows`) with the carry passed along, from a zero
  state. The last, shorter window is padded and masked, so every split shares
  one compilation. ``max_windows > 0`` stops after that many windows (a
  partial evaluation: the returned token count says how much was seen).

  Returns:
    ``(perplexity, number of target tokens evaluated)``.
  """
  columns = data.batchify(split, batch_size)
  spans = data.windows(columns.shape[0], bptt, max_windows)
  padded = jnp.asarray(data.pad_rows(columns, bptt))
  carry = supernet.init_carry(batch_size, config)
  sums = []
  for start, num_rows in spans:
    s, carry = _eval_window(params, cell, padded, start, carry, num_rows,
                            config=config, bptt=bptt)
    sums.append(s)
  targets = sum(n for _, n in spans)
  total = float(np.sum(jax.device_get(sums), dtype=np.float64))
  return math.exp(total / (targets * batch_size)), targets * batch_size
