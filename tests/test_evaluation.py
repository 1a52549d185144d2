"""Tests for nas_jax.evaluation: exact evaluation of a cell on a split."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax import data
from nas_jax import evaluation
from nas_jax import search_space
from nas_jax import supernet

from conftest import TOY_VOCAB

VOCAB = TOY_VOCAB


_jit_loss = jax.jit(supernet.loss, static_argnames=("config", "train"))


def _reference_windows(columns, bptt):
  """``(inputs, targets)`` of consecutive windows by plain slicing, the last
  one shorter: an implementation independent of ``data.window``."""
  for start in range(0, columns.shape[0] - 1, bptt):
    n = min(bptt, columns.shape[0] - 1 - start)
    yield columns[start:start + n], columns[start + 1:start + 1 + n]


def test_evaluate_cell_matches_a_window_loop():
  """Exact ppl: every target once, carry passed along, tail window included."""
  cfg = supernet.SupernetConfig(vocab_size=VOCAB, hidden_size=8, num_nodes=4)
  params = supernet.init(jax.random.key(0), cfg)
  split = np.random.default_rng(1).integers(0, VOCAB, 500, dtype=np.int32)
  cell = jnp.asarray(search_space.chain(4, 1).tokens())
  got, tokens = evaluation.evaluate_cell(params, cell, split, config=cfg,
                                         bptt=7, batch_size=6)
  columns = data.batchify(split, 6)
  carry = supernet.init_carry(6, cfg)
  total, count = 0.0, 0
  for inputs, targets in _reference_windows(columns, 7):
    loss, carry = _jit_loss(params, cell, jnp.asarray(inputs),
                            jnp.asarray(targets), carry, config=cfg)
    total += float(loss) * targets.size
    count += targets.size
  assert tokens == count == (columns.shape[0] - 1) * 6
  np.testing.assert_allclose(got, math.exp(total / count), rtol=1e-5)
  # A partial evaluation covers the first windows only and says so.
  part, part_tokens = evaluation.evaluate_cell(
      params, cell, split, config=cfg, bptt=7, batch_size=6, max_windows=3)
  assert part_tokens == 3 * 7 * 6
  carry = supernet.init_carry(6, cfg)
  total = 0.0
  for inputs, targets in list(_reference_windows(columns, 7))[:3]:
    loss, carry = _jit_loss(params, cell, jnp.asarray(inputs),
                            jnp.asarray(targets), carry, config=cfg)
    total += float(loss) * targets.size
  np.testing.assert_allclose(part, math.exp(total / part_tokens), rtol=1e-5)
