"""Memory buffer of sampled cells and the replay loss (DESIGN "Memory buffer").

The paper's proposed fix for a controller whose carry forgets its past
decisions: store token sequences the controller sampled, and at every
REINFORCE step add the controller's teacher-forced cross-entropy on a batch
of stored sequences, so that its LSTM must carry what it decided.

:class:`Buffer` is a pytree of arrays (it lives in ``train.TrainState`` and
in every checkpoint) with pure, jittable :func:`init`, :func:`add` and
:func:`sample`. Fill policies of :func:`add`:

* ``"authors"``: append while not full; once full, the first
  ``replace_rows`` sequences of each batch overwrite the buffer's last
  ``replace_rows`` rows and the rest are dropped (what the authors' code did:
  only the last 100 rows ever changed again);
* ``"fifo"``: a ring, the oldest row is overwritten;
* ``"reservoir"``: Algorithm R, every sequence offered so far is in the
  buffer with equal probability ``capacity / seen``.

:func:`replay_loss` has two variants:

* ``"clean"``: every token predicted in the same context as sampling
  (:func:`controller.score` in train mode: zero state, zero step-0 input),
  cross-entropy on the logits, i.e. the negative mean of ``score``'s
  log-probabilities;
* ``"faithful"``: the authors' quirks: the LSTM reads the first stored token
  as its first input (one step earlier than when sampling), so the first
  token is never predicted and every later one is predicted from a context
  shifted by one step; stored tokens are fed as *raw ids* (embedding row
  ``token``, so a parent choice ``j < 4`` reads activation ``j``'s row, where
  sampling reads row ``4 + j``); the cross-entropy is applied to the
  *softmax outputs* (probabilities treated as logits, over each decision's
  valid choices).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nas_jax import controller

VARIANTS = ("none", "faithful", "clean")
POLICIES = ("authors", "fifo", "reservoir")


@dataclasses.dataclass(frozen=True)
class BufferConfig:
  """Static settings of the buffer and its replay loss (epochs count from 0).

  ``variant="none"`` turns the buffer off. Sequences are stored at the start
  of every controller phase from epoch ``store_start_epoch`` on, and the
  replay loss (weight ``weight``) joins the REINFORCE loss from epoch
  ``replay_start_epoch`` on. DESIGN's (the authors') schedule: 5, 10, 1000
  stored per epoch, 100 replayed per step, weight 1.0, capacity 10,000.
  """
  variant: str = "none"
  policy: str = "fifo"
  capacity: int = 10_000
  store_per_epoch: int = 1000
  store_start_epoch: int = 5
  replay_start_epoch: int = 10
  replay_samples: int = 100
  weight: float = 1.0
  replace_rows: int = 100  # "authors" policy only.

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
    if self.policy not in POLICIES:
      raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
    for name in ("capacity", "store_per_epoch", "replay_samples",
                 "replace_rows"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("store_start_epoch", "replay_start_epoch"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.replay_samples > self.capacity:
      raise ValueError(
          f"replay_samples ({self.replay_samples}) must be <= capacity "
          f"({self.capacity}): sampling is without replacement")
    if self.replace_rows > self.capacity:
      raise ValueError(
          f"replace_rows ({self.replace_rows}) must be <= capacity "
          f"({self.capacity})")
    if not self.weight >= 0:  # Also rejects NaN.
      raise ValueError(f"weight must be >= 0, got {self.weight}")

  @property
  def enabled(self) -> bool:
    return self.variant != "none"


class Buffer(NamedTuple):
  """Rows ``[0, size)`` of ``tokens`` hold stored cells."""
  tokens: jax.Array  # int32[capacity, 2N-1]
  size: jax.Array  # int32[]: filled rows
  seen: jax.Array  # int32[]: sequences offered to add() so far


def init(capacity: int, num_tokens: int) -> Buffer:
  """An empty buffer of ``capacity`` rows of ``num_tokens`` tokens."""
  if capacity < 1 or num_tokens < 1:
    raise ValueError(
        f"capacity and num_tokens must be >= 1, got {capacity}, {num_tokens}")
  return Buffer(tokens=jnp.zeros((capacity, num_tokens), jnp.int32),
                size=jnp.zeros((), jnp.int32), seen=jnp.zeros((), jnp.int32))


def _slot(policy, buf, overflow, key, capacity, replace_rows):
  """Row for the next sequence; ``capacity`` (out of range) drops it."""
  full = buf.size >= capacity
  if policy == "fifo":
    return buf.seen % capacity
  if policy == "authors":
    replace = jnp.where(overflow < replace_rows,
                        capacity - replace_rows + overflow, capacity)
    return jnp.where(full, replace, buf.size)
  # Reservoir: the i-th sequence (from 0) replaces a uniform row with
  # probability capacity / (i + 1).
  j = jax.random.randint(key, (), 0, buf.seen + 1)
  return jnp.where(full, jnp.where(j < capacity, j, capacity), buf.size)


@functools.partial(jax.jit, static_argnames=("policy", "replace_rows"))
def add(buffer: Buffer, tokens: jax.Array, key: jax.Array, *, policy: str,
        replace_rows: int = 100) -> Buffer:
  """Offers ``tokens [n, 2N-1]`` to the buffer, row by row in order.

  ``key`` is used by the ``"reservoir"`` policy only. For ``"authors"`` the
  batch matters: once the buffer is full, a batch's first ``replace_rows``
  rows replace its last ``replace_rows`` rows.
  """
  if policy not in POLICIES:
    raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
  if tokens.ndim != 2 or tokens.shape[1] != buffer.tokens.shape[1]:
    raise ValueError(
        f"tokens must be [n, {buffer.tokens.shape[1]}], got {tokens.shape}")
  capacity = buffer.tokens.shape[0]
  keys = jax.random.split(key, tokens.shape[0])

  def body(carry, xs):
    buf, overflow = carry
    row, k = xs
    slot = _slot(policy, buf, overflow, k, capacity, replace_rows)
    overflow = overflow + (buf.size >= capacity).astype(jnp.int32)
    buf = Buffer(tokens=buf.tokens.at[slot].set(row, mode="drop"),
                 size=jnp.minimum(buf.size + 1, capacity), seen=buf.seen + 1)
    return (buf, overflow), None

  (buffer, _), _ = jax.lax.scan(
      body, (buffer, jnp.zeros((), jnp.int32)),
      (tokens.astype(jnp.int32), keys))
  return buffer


def sample(buffer: Buffer, key: jax.Array, num: int
           ) -> tuple[jax.Array, jax.Array]:
  """``num`` stored rows drawn uniformly without replacement.

  Returns ``(tokens int32[num, 2N-1], mask bool[num])``: when the buffer
  holds fewer than ``num`` rows, only the first ``size`` draws are real
  (``mask``); the others are placeholders that losses must ignore.
  """
  capacity = buffer.tokens.shape[0]
  if num > capacity:
    raise ValueError(f"num ({num}) must be <= capacity ({capacity})")
  rows = jnp.arange(capacity)
  scores = jnp.where(rows < buffer.size,
                     jax.random.gumbel(key, (capacity,)), -jnp.inf)
  _, index = jax.lax.top_k(scores, num)  # Filled rows first, in random order.
  return buffer.tokens[index], jnp.arange(num) < buffer.size


# ---------------------------------------------------------------------------
# The replay loss.


def _faithful_cross_entropy(params, tokens, config):
  """Per-sequence mean CE ``[n]`` of the authors' replay (see module doc)."""
  valid, _ = controller.step_tables(config)
  n = tokens.shape[0]
  zeros = jnp.zeros((n, config.hidden_size), jnp.float32)
  # Raw ids, as the authors fed them (no per-kind offset).
  x0 = params["embedding"][tokens[:, 0]]

  def body(state, xs):
    c, h, x = state
    t, token = xs
    c, h = controller.lstm_cell(params, x, (c, h))
    logits = controller.step_logits(params, h, t, valid[t], config=config,
                                    mode="train")
    probs = jax.nn.softmax(logits)  # What the authors fed to the CE.
    z = jnp.where(valid[t], probs, -jnp.inf)
    chosen = jnp.take_along_axis(probs, token[:, None], axis=-1)[:, 0]
    ce = jax.nn.logsumexp(z, axis=-1) - chosen
    return (c, h, params["embedding"][token]), ce

  steps = jnp.arange(1, config.num_steps)
  _, ce = jax.lax.scan(body, (zeros, zeros, x0), (steps, tokens[:, 1:].T))
  return jnp.mean(ce, axis=0)


def replay_loss(params: controller.Params, tokens: jax.Array, mask: jax.Array,
                *, config: controller.ControllerConfig, variant: str
                ) -> jax.Array:
  """Mean teacher-forced cross-entropy of the controller on stored cells.

  ``tokens [n, 2N-1]`` and ``mask bool[n]`` as :func:`sample` returns them;
  masked rows do not count (zero when none is real). ``"clean"`` equals
  ``-mean(controller.score(params, tokens, mode="train").log_probs)`` over
  the real rows; ``"faithful"`` is the authors' version (module doc).
  Differentiable in ``params``.
  """
  if variant == "clean":
    scored = controller.score(params, tokens, config=config, mode="train")
    per_sequence = -jnp.mean(scored.log_probs, axis=-1)
  elif variant == "faithful":
    if config.num_steps < 2:
      raise ValueError("the faithful replay loss needs num_nodes >= 2 (it "
                       "never predicts the first token)")
    per_sequence = _faithful_cross_entropy(params, tokens, config)
  else:
    raise ValueError(f"variant must be 'clean' or 'faithful', got {variant!r}")
  weight = mask.astype(jnp.float32)
  return jnp.sum(per_sequence * weight) / jnp.maximum(jnp.sum(weight), 1.0)
