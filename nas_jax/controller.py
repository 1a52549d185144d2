"""The ENAS controller: an LSTM that emits a cell one decision at a time.

For ``N`` nodes the controller makes ``2N - 1`` decisions in the ENAS token
order (``act_0, prev_1, act_1, ..., prev_{N-1}, act_{N-1}``). At step ``t``:

1. the LSTM reads the embedding of the token chosen at step ``t - 1`` (a zero
   vector at step 0; the carry starts at zero unless ``initial_carry`` is
   given);
2. head ``t`` turns the new ``h`` into logits over the step's choices (4
   activations, or the ``l`` earlier nodes for ``prev_l``; impossible choices
   are masked out);
3. logits are divided by ``temperature``; in ``"train"`` mode they then pass
   through ``tanh_constant * tanh(.)`` (ENAS's exploration control). In
   ``"derive"`` mode (every analysis uses it) only the temperature applies.

Decision embeddings are shared within each kind: activation ``a`` uses row
``a`` and "read node ``j``" uses row ``4 + j``.

``sample`` and ``score`` are one jitted ``lax.scan`` each and return the same
:class:`Rollout`: per-step tokens, log-probabilities, entropies and the LSTM
carry ``(c, h)`` from which that step's logits came. ``score`` is the
teacher-forced twin of ``sample``: fed ``sample(...).tokens`` it reproduces the
log-probabilities and carries, which is what REINFORCE and the replay loss use.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax import search_space

Params = dict[str, jax.Array]
MODES = ("train", "derive")
# Masked logits: finite, so that 0 * log p stays 0 (and its gradient finite).
_MASKED = -1e9


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
  num_nodes: int = 12
  hidden_size: int = 100
  temperature: float = 5.0
  tanh_constant: float = 2.5
  init_range: float = 0.1

  def __post_init__(self):
    if self.num_nodes < 1 or self.hidden_size < 1:
      raise ValueError(
          f"num_nodes and hidden_size must be >= 1, got {self.num_nodes} and "
          f"{self.hidden_size}")
    if self.temperature <= 0 or self.tanh_constant <= 0:
      raise ValueError("temperature and tanh_constant must be > 0")

  @property
  def num_steps(self) -> int:
    return search_space.num_tokens(self.num_nodes)

  @property
  def num_choices(self) -> int:
    """Width of the padded heads: the largest decision size."""
    return int(search_space.decision_sizes(self.num_nodes).max())

  @property
  def num_embeddings(self) -> int:
    return search_space.NUM_ACTIVATIONS + self.num_nodes - 1


class Rollout(NamedTuple):
  """Per-sample, per-step record of one pass of the controller.

  ``c`` and ``h`` are the carry after the LSTM read step ``t``'s input, i.e.
  the state step ``t``'s logits came from: ``h[:, -1]`` has not seen the last
  activation token.
  """
  tokens: jax.Array  # int32[num, 2N-1]
  log_probs: jax.Array  # float32[num, 2N-1]
  entropies: jax.Array  # float32[num, 2N-1]
  c: jax.Array  # float32[num, 2N-1, H]
  h: jax.Array  # float32[num, 2N-1, H]


@functools.partial(jax.jit, static_argnames="config")
def init(key: jax.Array, config: ControllerConfig) -> Params:
  """Parameters, all ``U(-init_range, init_range)``."""
  h, k, r = config.hidden_size, config.num_choices, config.init_range
  keys = jax.random.split(key, 5)

  def uniform(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, -r, r)

  return {
      "embedding": uniform(keys[0], (config.num_embeddings, h)),
      "lstm_w": uniform(keys[1], (2 * h, 4 * h)),  # [input; h] -> i, f, g, o
      "lstm_b": uniform(keys[2], (4 * h,)),
      "head_w": uniform(keys[3], (config.num_steps, h, k)),
      "head_b": uniform(keys[4], (config.num_steps, k)),
  }


def step_tables(config: ControllerConfig):
  """Per-step constants ``(valid bool[2N-1, K], offset int32[2N-1])``.

  ``valid[t]`` masks step ``t``'s impossible choices (pass it to
  :func:`step_logits`); ``offset[t]`` is the embedding row of choice 0.
  """
  sizes = search_space.decision_sizes(config.num_nodes)
  valid = np.arange(config.num_choices)[None, :] < sizes[:, None]
  offset = np.where(np.arange(config.num_steps) % 2 == 0, 0,
                    search_space.NUM_ACTIVATIONS).astype(np.int32)
  return jnp.asarray(valid), jnp.asarray(offset)


def lstm_cell(params: Params, x: jax.Array, carry: tuple[jax.Array, jax.Array]
              ) -> tuple[jax.Array, jax.Array]:
  """One LSTM step: ``x [.., H]``, ``carry (c, h)`` -> new ``(c, h)``."""
  c, h = carry
  gates = jnp.concatenate([x, h], axis=-1) @ params["lstm_w"] + params["lstm_b"]
  i, f, g, o = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return c, jax.nn.sigmoid(o) * jnp.tanh(c)


def step_logits(params: Params, h: jax.Array, t: jax.Array, valid: jax.Array,
                *, config: ControllerConfig, mode: str) -> jax.Array:
  """Head ``t``'s logits from ``h [.., H]``, transformed for ``mode``, masked."""
  logits = h @ params["head_w"][t] + params["head_b"][t]
  logits = logits / config.temperature
  if mode == "train":
    logits = config.tanh_constant * jnp.tanh(logits)
  return jnp.where(valid, logits, _MASKED)


def _check(config, mode, params, initial_carry, num):
  """Validates everything whose shape or value is known at trace time."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  h, k, s = config.hidden_size, config.num_choices, config.num_steps
  expected = {
      "embedding": (config.num_embeddings, h),
      "lstm_w": (2 * h, 4 * h),
      "lstm_b": (4 * h,),
      "head_w": (s, h, k),
      "head_b": (s, k),
  }
  if set(params) != set(expected):
    raise ValueError(
        f"params must have keys {sorted(expected)}, got {sorted(params)}")
  for name, shape in expected.items():
    if params[name].shape != shape:
      raise ValueError(
          f"params[{name!r}] has shape {params[name].shape}, but {config} "
          f"needs {shape}")
  if initial_carry is not None:
    if len(initial_carry) != 2:
      raise ValueError("initial_carry must be a pair (c, h)")
    for name, part in zip("ch", initial_carry):
      if jnp.shape(part) not in ((h,), (num, h)):
        raise ValueError(
            f"initial_carry {name} must have shape ({h},) or ({num}, {h}), "
            f"got {jnp.shape(part)}")


def _initial_carry(initial_carry, num, config):
  if initial_carry is None:
    zeros = jnp.zeros((num, config.hidden_size), jnp.float32)
    return zeros, zeros
  c, h = initial_carry
  shape = (num, config.hidden_size)
  return jnp.broadcast_to(c, shape), jnp.broadcast_to(h, shape)


def _unroll(params, config, mode, carry, num, key=None, tokens=None):
  """Shared scan of ``sample`` (``key``) and ``score`` (``tokens [num, 2N-1]``)."""
  valid, offset = step_tables(config)
  steps = jnp.arange(config.num_steps)
  xs = steps if tokens is None else (steps, tokens.T)

  def body(state, xs):
    c, h, x = state
    t, given = (xs, None) if tokens is None else xs
    c, h = lstm_cell(params, x, (c, h))
    logits = step_logits(params, h, t, valid[t], config=config, mode=mode)
    log_p = jax.nn.log_softmax(logits)
    if given is None:
      token = jax.random.categorical(jax.random.fold_in(key, t), logits)
    else:
      token = given
    token = token.astype(jnp.int32)
    log_prob = jnp.take_along_axis(log_p, token[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.where(valid[t], jnp.exp(log_p) * log_p, 0.0), -1)
    x_next = params["embedding"][token + offset[t]]
    return (c, h, x_next), (token, log_prob, entropy, c, h)

  x0 = jnp.zeros((num, config.hidden_size), jnp.float32)
  _, (tok, lp, ent, cs, hs) = jax.lax.scan(body, (*carry, x0), xs)
  swap = lambda a: jnp.swapaxes(a, 0, 1)  # [2N-1, num, ...] -> [num, 2N-1, ...]
  return Rollout(tokens=swap(tok), log_probs=swap(lp), entropies=swap(ent),
                 c=swap(cs), h=swap(hs))


def sample(params: Params, key: jax.Array, num: int, *,
           config: ControllerConfig, mode: str = "train",
           initial_carry: tuple[jax.Array, jax.Array] | None = None) -> Rollout:
  """Samples ``num`` cells in one batched call, driven only by ``key``.

  Args:
    params: from :func:`init`.
    key: PRNG key; step ``t`` draws with ``fold_in(key, t)``.
    num: number of cells (static).
    config: the controller's static settings.
    mode: ``"train"`` (temperature and tanh) or ``"derive"`` (temperature).
    initial_carry: optional ``(c, h)``, each ``[H]`` or ``[num, H]``;
      zeros by default.

  Returns:
    A :class:`Rollout` whose ``tokens`` are valid ``int32[num, 2N-1]`` cells.
  """
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"num must be a positive int, got {num!r}")
  _check(config, mode, params, initial_carry, num)
  return _sample(params, key, num, config=config, mode=mode,
                 initial_carry=initial_carry)


@functools.partial(jax.jit, static_argnames=("num", "config", "mode"))
def _sample(params, key, num, *, config, mode, initial_carry):
  carry = _initial_carry(initial_carry, num, config)
  return _unroll(params, config, mode, carry, num, key=key)


def score(params: Params, tokens: jax.Array, *, config: ControllerConfig,
          mode: str = "train",
          initial_carry: tuple[jax.Array, jax.Array] | None = None) -> Rollout:
  """Teacher-forced pass over given cells ``int32[num, 2N-1]``.

  Each step's input is the embedding of the *given* previous token, so
  ``score(params, sample(params, key, n).tokens)`` reproduces the sample's
  log-probabilities, entropies and carries. Differentiable in ``params``.

  Concrete ``tokens`` are validated (``ValueError`` naming the row and
  position of an invalid choice); traced ones must be valid cells, else the
  masked logits give log-probabilities near ``-1e9``.
  """
  if jnp.ndim(tokens) != 2 or jnp.shape(tokens)[1] != config.num_steps:
    raise ValueError(
        f"tokens must be [num, {config.num_steps}], got {jnp.shape(tokens)}")
  _check(config, mode, params, initial_carry, jnp.shape(tokens)[0])
  if not isinstance(tokens, jax.core.Tracer):
    search_space.validate_tokens(np.asarray(tokens))
  return _score(params, tokens, config=config, mode=mode,
                initial_carry=initial_carry)


@functools.partial(jax.jit, static_argnames=("config", "mode"))
def _score(params, tokens, *, config, mode, initial_carry):
  carry = _initial_carry(initial_carry, tokens.shape[0], config)
  return _unroll(params, config, mode, carry, tokens.shape[0], tokens=tokens)
