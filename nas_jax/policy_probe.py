"""Does the controller's policy condition on its past decisions? (claim 4)

The paper claims that "the controller does not condition on its past
decisions". Correlations between the LSTM carry and the cell's structure
cannot settle this (a carry always holds its most recent inputs; DESIGN, "The
analyses"), so this module tests the policy itself, under teacher forcing:

* take a cell ``x`` (tokens ``[a_0, p_1, a_1, ..., p_{N-1}, a_{N-1}]``) and a
  position ``j`` before the last one, and build ``x'``: ``x`` with token ``j``
  replaced by another valid choice, drawn uniformly from the others, and every
  other token kept. Every position's range of valid choices is fixed, so
  ``x'`` is a valid cell;
* score both with :func:`controller.score` and compare, at every later step
  ``t > j``, the step-``t`` distributions (over the step's valid choices):

      KL_t(j) = KL(p(. | x_<t) || p(. | x'_<t))
              = sum_k p(k | x_<t) * (log p(k | x_<t) - log p(k | x'_<t)),

  in nats, the original prefix's distribution first. The *distance* of the
  pair is ``d = t - j >= 1``.

At ``d = 1`` step ``t`` reads token ``j`` as its input, so any controller
shows a KL there; ``d >= 2`` can only come through the LSTM carry, i.e. from
memory of earlier decisions. The curve of mean KL against ``d``
(:func:`kl_by_distance`) says how far back the policy conditions, and is
compared between the trained and the untrained controller.

Conventions:

* Position ``1`` (``p_1``, node 1's parent) has a single valid choice (node 0)
  and cannot be changed: :func:`changed_positions` lists the positions that
  are (``0, 2, 3, ..., 2N-3``; ``P = 2N-3`` of them for ``N >= 2``), and
  every ``[.., P, ..]`` axis follows that list.
* Step ``1`` is deterministic under any prefix, so its KL is exactly 0 (it
  is the pair ``j = 0, d = 1``, kept in the averages).
* Invalid choices have probability exactly 0 (see
  :func:`controller.step_log_probs`) and are excluded from the KL sum
  explicitly. The KL is computed in a form that is non-negative and free of
  the log-probabilities' normalisation rounding (see :func:`_kl`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax import controller
from nas_jax import search_space


def changed_positions(num_nodes: int) -> np.ndarray:
  """``int[P]``: the positions ``0 .. 2N-3`` that have more than one choice."""
  sizes = search_space.decision_sizes(num_nodes)[:-1]
  return np.flatnonzero(sizes > 1).astype(np.int32)


def changed_cells(tokens, key: jax.Array) -> tuple[jax.Array, np.ndarray]:
  """Every cell with one earlier decision changed.

  Args:
    tokens: valid cells ``int[K, 2N-1]``.
    key: PRNG key; the replacement of cell ``i`` at ``positions[p]`` is
      uniform over that position's other valid choices, all drawn at once
      from ``key`` (deterministic given it).

  Returns:
    ``(changed int32[K, P, 2N-1], positions int32[P])``: ``changed[i, p]``
    is ``tokens[i]`` with token ``positions[p]`` replaced; ``positions`` is
    :func:`changed_positions` (single-choice positions are skipped).
  """
  tokens = jnp.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [K, 2N-1], got shape {tokens.shape}")
  num_nodes = search_space.num_nodes_from_tokens(tokens.shape[1])
  return (_changed_cells(tokens.astype(jnp.int32), key),
          changed_positions(num_nodes))


@jax.jit
def _changed_cells(tokens, key):
  """``int32[K, P, 2N-1]`` (see :func:`changed_cells`)."""
  num_nodes = search_space.num_nodes_from_tokens(tokens.shape[1])
  positions = changed_positions(num_nodes)
  sizes = search_space.decision_sizes(num_nodes)[positions]
  old = tokens[:, positions]  # [K, P]
  # Uniform over the size - 1 other choices: draw below size - 1 and skip
  # the old one.
  draw = jax.random.randint(key, old.shape, 0, jnp.asarray(sizes - 1),
                            dtype=jnp.int32)
  new = draw + (draw >= old).astype(jnp.int32)
  changed = jnp.repeat(tokens[:, None], len(positions), axis=1)
  return changed.at[:, np.arange(len(positions)), positions].set(new)


@jax.jit
def _kl(log_p: jax.Array, log_q: jax.Array, valid: jax.Array) -> jax.Array:
  """``KL(p || q)`` over the last axis and the ``valid`` choices only, from
  log-probabilities as :func:`controller.step_log_probs` gives them (each
  side is taken as normalised over the valid choices).

  Not ``sum p * (log p - log q)``: float32 log-probabilities are normalised
  only to ~1e-7, which that sum turns into a first-order error (a noise floor
  ~3e-8 nats, the size of an untrained controller's KL at distance >= 2).
  With ``w`` the normalised ``p`` and ``x = (log p - log q) - E_w[log p -
  log q]``, exactly

      KL = log E_w[exp(-x)] = log1p(E_w[f(x)]),  f(x) = exp(-x) - 1 + x >= 0,

  which does not depend on either side's normalising constant, is 0 for
  identical inputs and >= 0 by construction, and is accurate to second order
  (``f`` by its series for ``|x| < 0.1``, where ``expm1`` would cancel).
  """
  log_p = jnp.where(valid, log_p, -jnp.inf)
  log_w = log_p - jax.nn.logsumexp(log_p, axis=-1, keepdims=True)
  w = jnp.exp(log_w)  # 0 for invalid choices.
  diff = jnp.where(valid, log_p - log_q, 0.0)
  x = diff - jnp.sum(w * diff, axis=-1, keepdims=True)
  series = 0.5 * x * x * (1 - x / 3 * (1 - x / 4 * (1 - x / 5 * (1 - x / 6))))
  # w * (exp(-x) - 1 + x), with w * exp(-x) as one exp (no overflow).
  direct = jnp.exp(log_w - x) - w + w * x
  terms = jnp.where(jnp.abs(x) < 0.1, w * series, direct)
  return jnp.log1p(jnp.sum(jnp.where(valid, terms, 0.0), axis=-1))


def conditioning_kl(params: controller.Params, tokens, key: jax.Array, *,
                    config: controller.ControllerConfig, mode: str = "derive",
                    chunk: int = 1024) -> jax.Array:
  """KL of each later step's policy when one earlier decision changes.

  Args:
    params: controller parameters (:func:`controller.init`).
    tokens: valid cells ``int[K, 2N-1]``.
    key: PRNG key for the replacements (:func:`changed_cells`).
    config: the controller's static settings.
    mode: ``"derive"`` (temperature only; the analyses' mode) or ``"train"``.
    chunk: at most this many changed cells are scored at once (bounds memory:
      ``chunk * (2N-1) * H`` floats of carries); the result does not depend
      on it.

  Returns:
    ``float32[K, P, 2N-1]``: ``[i, p, t]`` is ``KL(p_orig(t) ||
    p_changed(t))`` for cell ``i`` with token ``changed_positions(N)[p]``
    changed, NaN where ``t <= positions[p]``.
  """
  if jnp.ndim(tokens) != 2 or jnp.shape(tokens)[1] != config.num_steps:
    raise ValueError(
        f"tokens must be [K, {config.num_steps}], got {jnp.shape(tokens)}")
  if mode not in controller.MODES:
    raise ValueError(f"mode must be one of {controller.MODES}, got {mode!r}")
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be a positive int, got {chunk!r}")
  if not isinstance(tokens, jax.core.Tracer):
    search_space.validate_tokens(np.asarray(tokens))
  changed, positions = changed_cells(tokens, key)
  return _changed_kl(params, jnp.asarray(tokens, jnp.int32), changed,
                     positions, config=config, mode=mode, chunk=chunk)


@functools.partial(jax.jit, static_argnames=("config", "mode", "chunk"))
def _changed_kl(params, tokens, changed, positions, *, config, mode, chunk):
  """:func:`conditioning_kl` for given ``changed int[K, P, 2N-1]`` cells."""
  num, num_pos, steps = changed.shape
  valid = controller.step_tables(config)[0]

  def log_probs(cells):  # [n, 2N-1] -> [n, 2N-1, C]
    rollout = controller.score(params, cells, config=config, mode=mode)
    return controller.step_log_probs(params, rollout.h, config=config,
                                     mode=mode)

  later = jnp.arange(steps)[None, :] > jnp.asarray(positions)[:, None]
  total = num * num_pos
  if total == 0:
    return jnp.full(changed.shape, jnp.nan, jnp.float32)
  orig = log_probs(tokens)  # [K, 2N-1, C]
  # Equal chunks of at most `chunk` cells, padded with copies of the last.
  num_chunks = -(-total // chunk)
  size = -(-total // num_chunks)
  pad = num_chunks * size - total
  flat = jnp.pad(changed.reshape(total, steps), ((0, pad), (0, 0)),
                 mode="edge")
  cell = np.minimum(np.arange(num_chunks * size) // num_pos, num - 1)

  def one_chunk(args):
    cells, rows = args
    return _kl(orig[rows], log_probs(cells), valid)

  kl = jax.lax.map(one_chunk, (flat.reshape(num_chunks, size, steps),
                               cell.reshape(num_chunks, size)))
  kl = kl.reshape(-1, steps)[:total].reshape(num, num_pos, steps)
  return jnp.where(later[None], kl, jnp.nan)


def kl_by_distance(kl, positions) -> dict[str, np.ndarray]:
  """Mean KL against the distance ``d = t - j``, cells as the unit.

  For each distance ``d = 1 .. T-1`` (``T = 2N-1``): per cell, the mean of
  ``kl[i, p, t]`` over the pairs with ``t - positions[p] = d`` (so every cell
  counts once), then the mean and standard error over cells.

  Args:
    kl: ``float[K, P, T]`` from :func:`conditioning_kl`.
    positions: ``int[P]``, the changed position of each ``P`` row.

  Returns:
    ``{"distance": int[D], "mean": float[D], "sem": float[D], "n": int[D],
    "pairs": int[D]}`` with ``D = T - 1``: ``sem`` is the standard deviation
    of the per-cell means (ddof 1) over ``sqrt(n)`` (NaN for one cell),
    ``n`` the number of cells (0 where no pair has that distance; then
    ``mean`` is NaN) and ``pairs`` the number of ``(j, t)`` pairs per cell.
  """
  kl = np.asarray(kl, np.float64)
  positions = np.asarray(positions)
  if kl.ndim != 3 or positions.shape != (kl.shape[1],):
    raise ValueError(
        f"kl must be [K, P, T] and positions [P], got {kl.shape} and "
        f"{positions.shape}")
  num, _, steps = kl.shape
  dist = np.arange(steps)[None, :] - positions[:, None]  # [P, T]
  distances = np.arange(1, steps)
  mean = np.full(len(distances), np.nan)
  sem = np.full(len(distances), np.nan)
  n = np.zeros(len(distances), np.int64)
  pairs = np.array([np.sum(dist == d) for d in distances], np.int64)
  for i, d in enumerate(distances):
    if pairs[i] == 0 or num == 0:
      continue
    per_cell = kl[:, dist == d].mean(axis=1)  # [K]
    n[i] = num
    mean[i] = per_cell.mean()
    if num > 1:
      sem[i] = per_cell.std(ddof=1) / np.sqrt(num)
  return {"distance": distances, "mean": mean, "sem": sem, "n": n,
          "pairs": pairs}
