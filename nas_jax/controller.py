"""The ENAS controller: an LSTM that emits a cell one decision at a time.

For ``N`` nodes the controller makes ``2N - 1`` decisions in the ENAS token
order (``act_0, prev_1, act_1, ..., prev_{N-1}, act_{N-1}``). At step ``t``:

1. the LSTM reads the embedding of the token chosen at step ``t - 1`` (at
   step 0 a zero vector unless ``initial_input`` is given; the carry starts
   at zero unless ``initial_carry`` is given);
2. head ``t`` turns the new ``h`` into logits over the step's choices (4
   activations, or the ``l`` earlier nodes for ``prev_l``; impossible choices
   are masked out);
3. logits are divided by ``temperature``; in ``"train"`` mode they then pass
   through ``tanh_constant * tanh(.)`` (ENAS's exploration control). In
   ``"derive"`` mode (every analysis uses it) only the temperature applies.

Decision embeddings are shared within each kind: activation ``a`` uses row
``a`` and "read node ``j``" uses row ``4 + j``.

``sample`` and ``score`` are jitted and return the same :class:`Rollout`:
per-step tokens, log-probabilities, entropies and the LSTM carry ``(c, h)``
from which that step's logits came. ``score`` is the teacher-forced twin of
``sample``: fed ``sample(...).tokens`` it reproduces the log-probabilities and
carries, which is what REINFORCE and the replay loss use.

Both compute exactly that (same tokens for the same key as a plain per-step
``jax.random.categorical``, the rest to float rounding), with less work:
``[x; h] @ W`` is split into ``h @ W_h`` plus a row of a per-call table of
the embeddings' input projections (step 0's zero input needs none, a given
one is projected once); the sampler runs the LSTM once per distinct token
prefix while there are fewer prefixes than cells (and they share step 0's
carry and input), draws all steps' Gumbel noise at once, and leaves
log-probabilities and entropies to after the loop; the scorer runs only the
recurrence in its loop and all heads as one batched matmul after it.
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
  """Parameters ``U(-init_range, init_range)``, except the heads' biases: 0,
  as in the authors' code (their heads start unbiased)."""
  h, k, r = config.hidden_size, config.num_choices, config.init_range
  keys = jax.random.split(key, 5)

  def uniform(key, shape):
    return jax.random.uniform(key, shape, jnp.float32, -r, r)

  return {
      "embedding": uniform(keys[0], (config.num_embeddings, h)),
      "lstm_w": uniform(keys[1], (2 * h, 4 * h)),  # [input; h] -> i, f, g, o
      "lstm_b": uniform(keys[2], (4 * h,)),
      "head_w": uniform(keys[3], (config.num_steps, h, k)),
      "head_b": jnp.zeros((config.num_steps, k), jnp.float32),
  }


def _offsets(config: ControllerConfig) -> np.ndarray:
  """``int32[2N-1]``: the embedding row of each step's choice 0."""
  return np.where(np.arange(config.num_steps) % 2 == 0, 0,
                  search_space.NUM_ACTIVATIONS).astype(np.int32)


def step_tables(config: ControllerConfig):
  """Per-step constants ``(valid bool[2N-1, K], offset int32[2N-1])``.

  ``valid[t]`` masks step ``t``'s impossible choices (pass it to
  :func:`step_logits`); ``offset[t]`` is the embedding row of choice 0.
  """
  sizes = search_space.decision_sizes(config.num_nodes)
  valid = np.arange(config.num_choices)[None, :] < sizes[:, None]
  return jnp.asarray(valid), jnp.asarray(_offsets(config))


def _gate_update(gates: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The LSTM's new ``(c, h)`` from its pre-activations ``gates [.., 4H]``.

  ``sigmoid(x) = (1 + tanh(x / 2)) / 2``: one ``tanh`` over all four gates
  (the i, f, o blocks scaled by 1/2), which XLA fuses into one pass; three
  ``sigmoid`` calls and a ``tanh`` made two passes and ~10% slower sampling.
  """
  quarter = gates.shape[-1] // 4
  scale = np.concatenate([np.full(2 * quarter, 0.5), np.ones(quarter),
                          np.full(quarter, 0.5)])
  i, f, g, o = jnp.split(jnp.tanh(gates * scale.astype(gates.dtype)), 4,
                         axis=-1)
  c = (0.5 * f + 0.5) * c + (0.5 * i + 0.5) * g
  return c, (0.5 * o + 0.5) * jnp.tanh(c)


def lstm_cell(params: Params, x: jax.Array, carry: tuple[jax.Array, jax.Array]
              ) -> tuple[jax.Array, jax.Array]:
  """One LSTM step: ``x [.., H]``, ``carry (c, h)`` -> new ``(c, h)``."""
  c, h = carry
  gates = jnp.concatenate([x, h], axis=-1) @ params["lstm_w"] + params["lstm_b"]
  return _gate_update(gates, c)


def _transform(logits: jax.Array, config: ControllerConfig, mode: str
               ) -> jax.Array:
  """Temperature, then (``"train"``) ``tanh_constant * tanh``."""
  logits = logits / config.temperature
  if mode == "train":
    logits = config.tanh_constant * jnp.tanh(logits)
  return logits


def step_logits(params: Params, h: jax.Array, t: jax.Array, valid: jax.Array,
                *, config: ControllerConfig, mode: str) -> jax.Array:
  """Head ``t``'s logits from ``h [.., H]``, transformed for ``mode``, masked."""
  logits = h @ params["head_w"][t] + params["head_b"][t]
  return jnp.where(valid, _transform(logits, config, mode), _MASKED)


def _input_table(params: Params, config: ControllerConfig) -> jax.Array:
  """``[num_embeddings, 4H]``: each embedding row's input projection + bias.

  The LSTM's input at step ``t > 0`` is always one embedding row, so
  ``x @ W_x`` is a lookup in this table (computed once per call) instead of
  a ``[num, H] x [H, 4H]`` matmul per step.
  """
  w_x = params["lstm_w"][:config.hidden_size]
  return params["embedding"] @ w_x + params["lstm_b"]


def _check(config, mode, params, initial_carry, num, initial_input=None):
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
  if (initial_input is not None
      and jnp.shape(initial_input) not in ((h,), (num, h))):
    raise ValueError(
        f"initial_input must have shape ({h},) or ({num}, {h}), got "
        f"{jnp.shape(initial_input)}")


def _initial_carry(initial_carry, num, config):
  """``(c, h)``, each ``[1, H]`` when every cell starts from the same carry
  (zeros by default, or ``[H]`` parts), else ``[num, H]``."""
  if initial_carry is None:
    zeros = jnp.zeros((1, config.hidden_size), jnp.float32)
    return zeros, zeros
  c, h = (jnp.asarray(part, jnp.float32) for part in initial_carry)
  if c.ndim == h.ndim == 1:
    return c[None], h[None]
  shape = (num, config.hidden_size)
  return jnp.broadcast_to(c, shape), jnp.broadcast_to(h, shape)


def _first_input(params, initial_input, config):
  """Step 0's input projection plus bias: ``[1, 4H]`` when every cell reads
  the same input (the bias alone for the default zero input), else ``[num,
  4H]``."""
  if initial_input is None:
    return params["lstm_b"][None]
  x = jnp.asarray(initial_input, jnp.float32)
  x = x[None] if x.ndim == 1 else x
  return x @ params["lstm_w"][:config.hidden_size] + params["lstm_b"]


def _gumbel_noise(key: jax.Array, num: int, config: ControllerConfig
                  ) -> jax.Array:
  """``[2N-1, num, K]``: the Gumbel noise of every step, drawn at once.

  Step ``t``'s slice is bitwise what ``jax.random.categorical(fold_in(key,
  t), logits [num, K])`` adds to the logits, so the tokens are that call's.
  """
  shape = (num, config.num_choices)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(
      key, jnp.arange(config.num_steps))
  if (str(jax.random.key_impl(key)) == "threefry2x32"
      and jax.config.jax_threefry_partitionable
      and not jax.config.jax_high_dynamic_range_gumbel):
    return _threefry_gumbel(jax.random.key_data(keys), shape)
  # A loop, not vmap: a batched draw of other generators (rbg) differs.
  return jax.lax.map(lambda k: jax.random.gumbel(k, shape), keys)


def _threefry_gumbel(key_data: jax.Array, shape: tuple[int, ...]
                     ) -> jax.Array:
  """``jax.random.gumbel(k, shape)`` for each threefry key ``k`` of
  ``key_data uint32[T, 2]``, bitwise: ``[T, *shape]``.

  The same computation as JAX's (partitionable threefry bits of the flat
  index, its uniform in ``[tiny, 1)``, ``-log(-log(u))``), written out: XLA
  on the CPU runs JAX's threefry as a rolled loop, 3x slower than this one
  fused kernel. Tests check it against ``jax.random.gumbel``.
  """
  def rotate_left(x, r):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))

  expand = (slice(None),) + (None,) * len(shape)
  k1, k2 = key_data[:, 0][expand], key_data[:, 1][expand]
  keys = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  # The flat index as a 64-bit counter: high word 0, low word the index.
  x2 = jax.lax.iota(np.uint32, int(np.prod(shape))).reshape(shape)[None]
  x1, x2 = jnp.zeros_like(x2) + keys[0], x2 + keys[1]
  for i in range(5):
    for r in ((13, 15, 26, 6), (17, 29, 16, 24))[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ rotate_left(x2, r)
    x1 = x1 + keys[(i + 1) % 3]
    x2 = x2 + keys[(i + 2) % 3] + np.uint32(i + 1)
  bits = x1 ^ x2
  # jax.random.uniform(minval=tiny, maxval=1): 23 random mantissa bits.
  floats = jax.lax.bitcast_convert_type(
      (bits >> np.uint32(9)) | np.float32(1.0).view(np.uint32),
      jnp.float32) - jnp.float32(1.0)
  tiny, one = jnp.float32(np.finfo(np.float32).tiny), jnp.float32(1.0)
  uniform = jax.lax.max(tiny, floats * (one - tiny) + tiny)
  return -jnp.log(-jnp.log(uniform))


def _logits(params, h, t, config, mode):
  """Step ``t``'s masked logits ``[R, K]`` from ``h [R, H]``.

  ``t`` is a step (an int or a traced scalar), or a static ``int[R]`` array
  giving each row's step.
  """
  valid = step_tables(config)[0][t]
  if np.ndim(t) == 1:  # All the steps' heads, then each row's.
    logits = jnp.einsum("rh,thk->rtk", h, params["head_w"][:t.max() + 1])
    logits = jnp.take_along_axis(logits, t[:, None, None], axis=1)[:, 0]
  else:
    logits = h @ params["head_w"][t]
  logits = _transform(logits + params["head_b"][t], config, mode)
  return jnp.where(valid, logits, _MASKED)


def _draw(noise, logits):
  """``jax.random.categorical``: the Gumbel argmax, as ``int32``."""
  return jnp.argmax(noise + logits, axis=-1).astype(jnp.int32)


def _prefix_tree(params, carry, first, num, config, mode):
  """The LSTM on every distinct token prefix while there are fewer than
  ``num`` of them, for cells that share their initial carry ``[1, H]`` and
  step 0's input (its projection ``first``, ``[1, 4H]``).

  These states do not depend on the draws: step ``t`` has one row per
  prefix of ``t`` tokens (``1, 4, 4, 16, 32, ...`` rows), row ``u * size +
  j`` extending row ``u`` of step ``t - 1`` by choice ``j``.

  Returns the number ``k`` of such steps, the first row of each step in the
  stacked rows, and their stacked ``c``, ``h`` and logits.
  """
  hidden = config.hidden_size
  sizes = search_space.decision_sizes(config.num_nodes)
  offsets = _offsets(config)
  w_h = params["lstm_w"][hidden:]
  table = _input_table(params, config)
  c, h = carry
  gates = h @ w_h + first  # Step 0's input.
  cs, hs = [], []
  while True:
    c, h = _gate_update(gates, c)
    cs.append(c)
    hs.append(h)
    k, size = len(hs), sizes[len(hs) - 1]
    if k == config.num_steps or c.shape[0] * size >= num:
      break
    inputs = table[offsets[k - 1]:offsets[k - 1] + size]
    gates = ((h @ w_h)[:, None] + inputs[None]).reshape(-1, 4 * hidden)
    c = jnp.repeat(c, size, axis=0)
  counts = [a.shape[0] for a in hs]
  steps = np.repeat(np.arange(k), counts)
  c, h = jnp.concatenate(cs), jnp.concatenate(hs)
  return (k, np.cumsum([0] + counts[:-1]),
          (c, h, _logits(params, h, steps, config, mode)))


def _sample_steps(params, key, num, config, mode, carry, first):
  """The sampler: the plain per-step LSTM's tokens, with exact savings.

  * An input's projection is a row of :func:`_input_table`; more rows,
    ``first`` (:func:`_first_input`), are step 0's input (the bias alone
    for the default zero input).
  * Cells that share their initial carry (the default zero carry, or
    ``[H]`` parts) and step 0's input share their first states:
    :func:`_prefix_tree` computes them once per distinct prefix, and each
    cell's draws pick its rows; the next step's ``h @ W_h`` is taken on the
    tree's last rows (fewer than the cells) and then picked too.
  * Then one row per cell in a ``lax.scan`` that does only what the next
    step needs (the draw, the next ``h @ W_h``) and writes the carries
    straight into their ``[num, 2N-1, H]`` place (no stacking and
    transposing after the loop); the last step, which needs no next
    ``h @ W_h``, runs after the loop. Log-probabilities and entropies come
    after the loop, for all steps at once: fewer small kernels per step made
    the sampler ~15% faster.
  """
  hidden, steps = config.hidden_size, config.num_steps
  sizes = search_space.decision_sizes(config.num_nodes)
  offsets = _offsets(config)
  noise = _gumbel_noise(key, num, config)
  w_h = params["lstm_w"][hidden:]
  c, h = carry
  k = 0
  # The input row of the first scanned step: table[num_embeddings + i] is
  # row i of first (step 0's input).
  row = config.num_embeddings + (
      jnp.arange(num, dtype=jnp.int32) if first.shape[0] > 1
      else jnp.zeros((num,), jnp.int32))
  tokens, logits = [], []  # Parts, [num, steps of the part (, K)].
  if c.shape[0] == 1 and first.shape[0] == 1 and num > 1:
    k, starts, (tree_c, tree_h, tree_logits) = _prefix_tree(
        params, carry, first, num, config, mode)
    idx = jnp.zeros((num,), jnp.int32)
    rows = []
    for t in range(k):
      rows.append(starts[t] + idx)
      tokens.append(_draw(noise[t], tree_logits[rows[-1]]))
      idx = idx * sizes[t] + tokens[-1]
    tokens, rows = [jnp.stack(tokens, axis=1)], jnp.stack(rows, axis=1)
    logits = [tree_logits[rows]]
    last, start = rows[:, -1], int(starts[-1])
    c = tree_c[last]
    h_w = (tree_h[start:] @ w_h)[last - start]  # Step k's h @ W_h.
    row = tokens[0][:, -1] + offsets[k - 1]
    pad = jnp.zeros((num, steps - k, hidden), jnp.float32)
    cs = jnp.concatenate([tree_c[rows], pad], axis=1)
    hs = jnp.concatenate([tree_h[rows], pad], axis=1)
  else:
    c = jnp.broadcast_to(c, (num, hidden))
    h_w = jnp.broadcast_to(h @ w_h, (num, 4 * hidden))  # Before broadcasting.
    cs = hs = jnp.zeros((num, steps, hidden), jnp.float32)

  if k < steps:
    table = jnp.concatenate([_input_table(params, config), first])
    offsets = jnp.asarray(offsets)

    def step(c, h_w, row, cs, hs, t):
      c, h = _gate_update(h_w + table[row], c)
      step_logits = _logits(params, h, t, config, mode)
      token = _draw(noise[t], step_logits)
      cs = jax.lax.dynamic_update_slice_in_dim(cs, c[:, None], t, axis=1)
      hs = jax.lax.dynamic_update_slice_in_dim(hs, h[:, None], t, axis=1)
      return c, h, token, step_logits, cs, hs

    def body(state, t):
      c, h_w, row, cs, hs = state
      c, h, token, step_logits, cs, hs = step(c, h_w, row, cs, hs, t)
      return (c, h @ w_h, token + offsets[t], cs, hs), (token, step_logits)

    (c, h_w, row, cs, hs), (scan_tokens, scan_logits) = jax.lax.scan(
        body, (c, h_w, row, cs, hs), jnp.arange(k, steps - 1))
    *_, token, step_logits, cs, hs = step(c, h_w, row, cs, hs, steps - 1)
    tokens += [scan_tokens.T, token[:, None]]
    logits += [jnp.swapaxes(scan_logits, 0, 1), step_logits[:, None]]
  tokens = jnp.concatenate(tokens, axis=1)
  valid = step_tables(config)[0]
  log_p = jax.nn.log_softmax(jnp.concatenate(logits, axis=1))
  return Rollout(
      tokens=tokens,
      log_probs=jnp.take_along_axis(log_p, tokens[..., None], axis=-1)[..., 0],
      entropies=-jnp.sum(jnp.where(valid, jnp.exp(log_p) * log_p, 0.0), -1),
      c=cs, h=hs)


def sample(params: Params, key: jax.Array, num: int, *,
           config: ControllerConfig, mode: str = "train",
           initial_carry: tuple[jax.Array, jax.Array] | None = None,
           initial_input: jax.Array | None = None) -> Rollout:
  """Samples ``num`` cells in one batched call, driven only by ``key``.

  Args:
    params: from :func:`init`.
    key: PRNG key; step ``t`` draws with ``fold_in(key, t)``.
    num: number of cells (static).
    config: the controller's static settings.
    mode: ``"train"`` (temperature and tanh) or ``"derive"`` (temperature).
    initial_carry: optional ``(c, h)``, each ``[H]`` or ``[num, H]``;
      zeros by default.
    initial_input: optional input of step 0, ``[H]`` or ``[num, H]`` (the
      LSTM's input space, not a token); zeros by default.

  Returns:
    A :class:`Rollout` whose ``tokens`` are valid ``int32[num, 2N-1]`` cells.
  """
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"num must be a positive int, got {num!r}")
  _check(config, mode, params, initial_carry, num, initial_input)
  return _sample(params, key, num, config=config, mode=mode,
                 initial_carry=initial_carry, initial_input=initial_input)


@functools.partial(jax.jit, static_argnames=("num", "config", "mode"))
def _sample(params, key, num, *, config, mode, initial_carry, initial_input):
  carry = _initial_carry(initial_carry, num, config)
  first = _first_input(params, initial_input, config)
  return _sample_steps(params, key, num, config, mode, carry, first)


def score(params: Params, tokens: jax.Array, *, config: ControllerConfig,
          mode: str = "train",
          initial_carry: tuple[jax.Array, jax.Array] | None = None,
          initial_input: jax.Array | None = None) -> Rollout:
  """Teacher-forced pass over given cells ``int32[num, 2N-1]``.

  Each step's input is the embedding of the *given* previous token, so
  ``score(params, sample(params, key, n).tokens)`` reproduces the sample's
  log-probabilities, entropies and carries (given the same
  ``initial_carry`` and ``initial_input``). Differentiable in ``params``.

  Concrete ``tokens`` are validated (``ValueError`` naming the row and
  position of an invalid choice); traced ones must be valid cells, else the
  masked logits give log-probabilities near ``-1e9``.
  """
  if jnp.ndim(tokens) != 2 or jnp.shape(tokens)[1] != config.num_steps:
    raise ValueError(
        f"tokens must be [num, {config.num_steps}], got {jnp.shape(tokens)}")
  _check(config, mode, params, initial_carry, jnp.shape(tokens)[0],
         initial_input)
  if not isinstance(tokens, jax.core.Tracer):
    search_space.validate_tokens(np.asarray(tokens))
  return _score(params, tokens, config=config, mode=mode,
                initial_carry=initial_carry, initial_input=initial_input)


@functools.partial(jax.jit, static_argnames=("config", "mode"))
def _score(params, tokens, *, config, mode, initial_carry, initial_input):
  """Teacher forcing: the recurrence alone in the loop, the heads after it.

  Step ``t``'s input projection is row ``tokens[:, t - 1] + offset`` of
  :func:`_input_table`; the ``2N-1`` heads are one batched matmul over the
  stacked states.
  """
  num, hidden = tokens.shape[0], config.hidden_size
  valid, offset = step_tables(config)
  c, h = _initial_carry(initial_carry, num, config)
  w_h = params["lstm_w"][hidden:]
  table = _input_table(params, config)
  rows = tokens[:, :-1].T + offset[:-1, None]  # [2N-2, num]: steps 1..

  def body(carry, row):
    c, h = _gate_update(carry[1] @ w_h + table[row], carry[0])
    return (c, h), (c, h)

  c, h = _gate_update(h @ w_h + _first_input(params, initial_input, config),
                      c)  # Step 0's input.
  c, h = jnp.broadcast_to(c, (num, hidden)), jnp.broadcast_to(h, (num, hidden))
  _, (cs, hs) = jax.lax.scan(body, (c, h), rows)
  # Time-major [2N-1, num, ...] until the outputs.
  cs = jnp.concatenate([c[None], cs])
  hs = jnp.concatenate([h[None], hs])
  logits = jnp.einsum("tnh,thk->tnk", hs, params["head_w"])
  logits = _transform(logits + params["head_b"][:, None], config, mode)
  log_p = jax.nn.log_softmax(jnp.where(valid[:, None], logits, _MASKED))
  log_probs = jnp.take_along_axis(log_p, tokens.T[..., None], axis=-1)[..., 0]
  entropies = -jnp.sum(
      jnp.where(valid[:, None], jnp.exp(log_p) * log_p, 0.0), axis=-1)
  return Rollout(tokens=tokens.astype(jnp.int32), log_probs=log_probs.T,
                 entropies=entropies.T, c=jnp.swapaxes(cs, 0, 1),
                 h=jnp.swapaxes(hs, 0, 1))


@functools.partial(jax.jit, static_argnames=("config", "mode"))
def step_log_probs(params: Params, h: jax.Array, *, config: ControllerConfig,
                   mode: str = "derive") -> jax.Array:
  """Every step's full log-distribution from the carries ``h [num, 2N-1, H]``.

  The heads as :func:`score` applies them (head ``t`` on ``h[:, t]``, its
  bias, :func:`_transform` for ``mode``, the step's invalid choices masked,
  ``log_softmax``), so ``take_along_axis(step_log_probs(params,
  score(...).h), tokens[..., None], -1)`` is ``score(...).log_probs``.

  Masking: an invalid choice's logit is ``-1e9`` (finite, as in
  :func:`score`), so its log-probability is about ``-1e9``, never ``-inf``
  or NaN, and ``exp`` of it is exactly ``0.0`` in float32. Sums of ``p *
  (...)`` (entropies, KL divergences) therefore get nothing from invalid
  choices; ignore them explicitly with ``step_tables(config)[0]`` when a
  term is not weighted by their zero probability.

  Returns:
    ``float32[num, 2N-1, K]``, ``K = config.num_choices`` (the widest step).
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if h.ndim != 3 or h.shape[1:] != (config.num_steps, config.hidden_size):
    raise ValueError(
        f"h must be [num, {config.num_steps}, {config.hidden_size}], got "
        f"{h.shape}")
  valid = step_tables(config)[0]
  logits = jnp.einsum("nth,thk->ntk", h, params["head_w"])
  logits = _transform(logits + params["head_b"], config, mode)
  return jax.nn.log_softmax(jnp.where(valid, logits, _MASKED))
