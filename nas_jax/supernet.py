"""The weight-shared ENAS language model (the *supernet*), as pure functions.

Every cell of the search space runs through the same parameters:

* node 0 owns ``w_x`` and ``w_h`` (input and recurrent weights, each producing
  the gate ``c`` and the candidate ``h`` side by side: ``[H, 2H]``);
* every ordered pair ``(j, l)`` with ``j < l`` owns ``w_pairs[pair_index(j, l)]``
  (``[H, 2H]``), used when node ``l`` reads node ``j``.

The architecture is an ``int32[2N-1]`` array *argument*, never a static one:
the per-pair weights are gathered by index, the activation is selected by
index and the loose-end mean is a mask, so one compiled program serves every
cell and ``jax.vmap`` scores a batch of cells on the same data.

Cell equations (DESIGN.md), per time step with input ``x`` and state ``h_prev``::

    c0 = sigmoid(x W_xc + h_prev W_hc);  h0 = c0 * f0(x W_xh + h_prev W_hh) + (1 - c0) * h_prev
    cl = sigmoid(h_j W^c_jl);             hl = cl * fl(h_j W^h_jl) + (1 - cl) * h_j
    output = mean of the loose ends;      next state = h_{N-1}

Regularisation (``train=True``, needs a ``key``): embedding dropout (whole
word rows), locked dropout on the cell inputs and outputs (one mask per
sequence) and DropConnect on node 0's recurrent weights (one mask per call).
The per-example clip of the next state's L2 norm (``hidden_clip``) applies
in training *and* evaluation, as in the authors' code: without it in
evaluation, a chain of identity nodes at hidden 1000 overflows to NaN
within one BPTT window.

Mixed precision (``compute_dtype="bfloat16"``, for accelerators): the four
large matmuls (node 0's input projection ``x W_x``, the recurrent
``h_prev W_h``, every node's ``h_j W_jl`` and the tied decoder
``outputs E^T``) take bfloat16 operands and accumulate and return float32,
and so do the two backward matmuls of each (custom VJPs: ``_mm_bf16`` and
the recurrence's, :func:`_recurrence`). The parameters
(master weights), the optimiser state, the hidden state and carry, the
gates' elementwise maths, the norm clip, the log-softmax and the loss stay
float32. ``"float32"`` (the default) runs exactly the float32
program. The controller (``nas_jax.controller``) is small and always float32.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nas_jax import search_space

Params = dict[str, jax.Array]

# Matmul operand dtypes of :class:`SupernetConfig`; accumulation is float32.
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
  """Static sizes and regularisation of the supernet (hashable).

  ``hidden_size`` is both the embedding and the hidden size: the input
  embedding is tied to the output projection.
  """
  vocab_size: int = 10_000
  hidden_size: int = 1000
  num_nodes: int = 12
  embed_dropout: float = 0.1
  input_dropout: float = 0.65
  output_dropout: float = 0.4
  recurrent_dropconnect: float = 0.5
  hidden_clip: float = 25.0
  init_range: float = 0.1
  compute_dtype: str = "float32"  # Or "bfloat16": see the module docstring.

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_nodes"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("embed_dropout", "input_dropout", "output_dropout",
                 "recurrent_dropconnect"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
    if self.hidden_clip <= 0:
      raise ValueError(f"hidden_clip must be > 0, got {self.hidden_clip}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(
          f"compute_dtype must be one of {COMPUTE_DTYPES}, got "
          f"{self.compute_dtype!r}")

  @property
  def num_pairs(self) -> int:
    return self.num_nodes * (self.num_nodes - 1) // 2


def pair_index(j, l):
  """Row of ``w_pairs`` for the edge ``j -> l`` (``0 <= j < l``)."""
  return l * (l - 1) // 2 + j


@functools.partial(jax.jit, static_argnames="config")
def init(key: jax.Array, config: SupernetConfig) -> Params:
  """Parameters, all ``U(-init_range, init_range)`` except a zero output bias."""
  v, h, r = config.vocab_size, config.hidden_size, config.init_range
  k_emb, k_x, k_h, k_pairs = jax.random.split(key, 4)

  def uniform(k, shape):
    return jax.random.uniform(k, shape, jnp.float32, -r, r)

  return {
      "embedding": uniform(k_emb, (v, h)),
      "decoder_bias": jnp.zeros((v,), jnp.float32),
      "w_x": uniform(k_x, (h, 2 * h)),
      "w_h": uniform(k_h, (h, 2 * h)),
      "w_pairs": uniform(k_pairs, (config.num_pairs, h, 2 * h)),
  }


def init_carry(batch_size: int, config: SupernetConfig) -> jax.Array:
  """The zero hidden state ``float32[B, H]``."""
  return jnp.zeros((batch_size, config.hidden_size), jnp.float32)


def num_params(params: Params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


_ACTIVATION_FNS = (jnp.tanh, jax.nn.relu, lambda x: x, jax.nn.sigmoid)


def selects_activation() -> bool:
  """Whether :func:`activation` selects by default: on every backend but
  the CPU."""
  return jax.default_backend() != "cpu"


def activation(index: jax.Array, x: jax.Array, *,
               select: bool | None = None) -> jax.Array:
  """``ACTIVATIONS[index](x)`` with ``index`` a traced int32 scalar.

  Two programs, the same values: ``lax.switch`` runs only the chosen branch
  (measured ~5-10% faster per training step on the CPU than selecting among
  all four); ``select`` computes all four and selects, with no conditional
  in the program. On an H200 the conditional form was the slow one: a
  single search's shared step at hidden 256 took 24 ms, the same step
  ``vmap``-ed over one seed (where the switch becomes a select) 9.4 ms
  (``benchmarks.accelerator_check``, 2026-11-29); the likely cause is the
  step's 12 nodes x 35 time steps of conditionals, which the GPU runs one
  branch decision at a time.

  Args:
    index: the activation's index, an int32 scalar.
    x: the pre-activation.
    select: ``True`` selects, ``False`` switches; ``None`` (the default):
      :func:`selects_activation`.
  """
  if select is None:
    select = selects_activation()
  if select:
    return jax.lax.select_n(index, *(fn(x) for fn in _ACTIVATION_FNS))
  return jax.lax.switch(index, _ACTIVATION_FNS, x)


def _dropout_mask(key, shape, rate):
  keep = 1.0 - rate
  return jax.random.bernoulli(key, keep, shape).astype(jnp.float32) / keep


def dropout_masks(key: jax.Array, batch_size: int, config: SupernetConfig
                  ) -> dict[str, jax.Array]:
  """The scaled keep-masks one training call of :func:`apply` draws from ``key``.

  * ``embed_rows [V]``: embedding dropout drops whole word rows, so every
    occurrence of a word in the segment is dropped together;
  * ``input [1, B, H]`` and ``output [1, B, H]``: locked (variational)
    dropout, one mask per sequence shared over all time steps;
  * ``w_h [H, 2H]``: DropConnect on node 0's recurrent weights, one mask per
    call shared over time and batch.

  Kept entries equal ``1 / (1 - rate)``, dropped ones 0.
  """
  k_emb, k_in, k_out, k_w = jax.random.split(key, 4)
  h = config.hidden_size
  return {
      "embed_rows": _dropout_mask(k_emb, (config.vocab_size,),
                                  config.embed_dropout),
      "input": _dropout_mask(k_in, (1, batch_size, h), config.input_dropout),
      "output": _dropout_mask(k_out, (1, batch_size, h), config.output_dropout),
      "w_h": _dropout_mask(k_w, (h, 2 * h), config.recurrent_dropconnect),
  }


def _check_concrete(arch, inputs, config):
  """Host-side validation of values, when they are concrete (not traced).

  Under ``jit``/``vmap`` the values are unknown at trace time and the caller
  is responsible for passing valid cells (e.g. from the controller or
  :func:`search_space.sample_uniform`) and token ids ``< vocab_size``.
  """
  if not isinstance(arch, jax.core.Tracer):
    search_space.validate_tokens(np.asarray(arch))
  if not isinstance(inputs, jax.core.Tracer):
    ids = np.asarray(inputs)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
      raise ValueError(
          f"inputs hold token ids in [{ids.min()}, {ids.max()}], outside "
          f"[0, {config.vocab_size}) of the vocabulary")


def _mm(a, b, config):
  """``a [..., K] @ b [K, N]`` in the config's ``compute_dtype``.

  ``"float32"``: plain ``a @ b``. ``"bfloat16"``: :func:`_mm_bf16`, float32
  in and out.
  """
  if config.compute_dtype == "float32":
    return a @ b
  return _mm_bf16(a.astype(jnp.float32), b.astype(jnp.float32))


def _mm_t(a, g, compute_dtype):
  """``sum over leading axes of a^T g``: ``a [..., K]``, ``g [..., N]`` ->
  ``[K, N]`` (a weight's gradient) in ``compute_dtype``, like :func:`_mm`
  (``"bfloat16"``: bfloat16 operands, float32 accumulation and result)."""
  a2, g2 = a.reshape(-1, a.shape[-1]), g.reshape(-1, g.shape[-1])
  if compute_dtype == "float32":
    return a2.T @ g2
  # As a 2-D a^T g: XLA:CPU has no bf16 x bf16 -> f32 kernel for the
  # dot_general contracting a's and g's leading axes directly.
  return jnp.matmul(a2.T.astype(jnp.bfloat16), g2.astype(jnp.bfloat16),
                    preferred_element_type=jnp.float32)


@jax.custom_vjp
def _mm_bf16(a, b):
  """``a [..., K] @ b [K, N]`` of float32 arrays on bfloat16 operands with
  float32 accumulation and result, forward and backward.

  The custom VJP keeps the two backward matmuls in bfloat16 too (JAX's own
  transpose of a mixed-precision ``dot_general`` runs them in float32) and
  saves the bfloat16 operands as residuals. The cotangents it returns are
  float32, so a weight's gradient sums over time steps in float32.
  """
  return _mm_bf16_fwd(a, b)[0]


def _mm_bf16_fwd(a, b):
  a16, b16 = a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)
  return jnp.matmul(a16, b16, preferred_element_type=jnp.float32), (a16, b16)


def _mm_bf16_bwd(residuals, g):
  a16, b16 = residuals
  g16 = g.astype(jnp.bfloat16)
  da = jnp.matmul(g16, b16.T, preferred_element_type=jnp.float32)
  return da, _mm_t(a16, g16, "bfloat16")


_mm_bf16.defvjp(_mm_bf16_fwd, _mm_bf16_bwd)


def _highway(gate_and_candidate, act, h_in):
  c, candidate = jnp.split(gate_and_candidate, 2, axis=-1)
  c = jax.nn.sigmoid(c)
  return c * activation(act, candidate) + (1.0 - c) * h_in


def _clip_norm(h, max_norm):
  # Scale rows with ||h|| > max_norm down to max_norm. Working on the squared
  # norm keeps the gradient finite when a row is exactly zero.
  sq = jnp.sum(h * h, axis=-1, keepdims=True)
  return h * (max_norm * jax.lax.rsqrt(jnp.maximum(sq, max_norm * max_norm)))


def _recurrence_scan(xw, carry, w_all, acts, prevs, loose, config, *,
                     residuals):
  """The cell over all time steps: ``(carry [B, H], (outputs [T, B, H],
  residuals))``.

  ``w_all [N, H, 2H]`` holds node 0's recurrent weights, then node ``l``'s
  ``W_{prev_l, l}``. With ``residuals``, each step also returns what the
  backward pass needs: every node's pre-activations ``z_l [B, 2H]`` and
  input ``[B, H]`` (``h_prev`` for node 0, ``h_{prev_l}`` for node ``l``),
  as tuples of ``N`` arrays (so the scan stacks each node's apart, ready
  for its weight-gradient matmul); otherwise ``None``.
  """
  n = config.num_nodes

  def step(h_prev, xw_t):
    zs = [xw_t + _mm(h_prev, w_all[0], config)]
    ins = [h_prev]
    nodes = [_highway(zs[0], acts[0], h_prev)]
    out = loose[0] * nodes[0]
    for l in range(1, n):
      ins.append(jax.lax.select_n(prevs[l - 1], *nodes))
      zs.append(_mm(ins[l], w_all[l], config))
      nodes.append(_highway(zs[l], acts[l], ins[l]))
      out = out + loose[l] * nodes[l]
    saved = (tuple(zs), tuple(ins)) if residuals else None
    return _clip_norm(nodes[-1], config.hidden_clip), (out, saved)

  return jax.lax.scan(step, carry, xw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _recurrence(xw, carry, w_all, acts, prevs, loose, config):
  """:func:`_recurrence_scan` without residuals: ``(carry, outputs)``.

  Its VJP (:func:`_recurrence_bwd`) is the same maths as autodiff's with the
  weight gradients taken out of the time loop: the reverse scan carries only
  ``dh`` and returns each step's pre-activation gradients ``dz``; then one
  matmul per node, ``[H, T B] x [T B, 2H]``, sums ``h_in^T dz`` over all
  time steps at once. Autodiff instead adds a ``[H, B] x [B, 2H]`` product
  to every node's weight gradient at every step. The residuals are stacked
  per node, so each weight-gradient matmul reads contiguous rows, and the
  weights are transposed once for the ``dz W^T`` products. On the 2-core
  CPU at hidden 256 the whole training step went from 0.54 to 0.49 s
  (``benchmarks.supernet_step``, medians of four alternated runs; README).
  ``tests/test_supernet.py`` checks it against autodiff of
  :func:`_recurrence_scan`.
  """
  carry, (outputs, _) = _recurrence_scan(xw, carry, w_all, acts, prevs, loose,
                                         config, residuals=False)
  return carry, outputs


def _recurrence_fwd(xw, carry, w_all, acts, prevs, loose, config):
  carry, (outputs, saved) = _recurrence_scan(
      xw, carry, w_all, acts, prevs, loose, config, residuals=True)
  return (carry, outputs), (saved, w_all, acts, prevs, loose)


def _recurrence_bwd(config, residuals, cotangents):
  (zs, ins), w_all, acts, prevs, loose = residuals
  d_carry, d_outputs = cotangents
  n = config.num_nodes
  w_all_t = jnp.swapaxes(w_all, 1, 2)  # [N, 2H, H], transposed once

  def step(dh_next, xs):
    z, h_in, d_out = xs  # N x [B, 2H], N x [B, H], [B, H]
    # d_nodes[l]: the gradient reaching node l's output, complete once every
    # later node (the only readers of node l) has been visited.
    d_nodes = [loose[l] * d_out for l in range(n)]
    dz = [None] * n
    for l in reversed(range(n)):
      node, highway_vjp = jax.vjp(
          lambda z_l, h, l=l: _highway(z_l, acts[l], h), z[l], h_in[l])
      if l == n - 1:  # The next state is the last node, clipped.
        _, clip_vjp = jax.vjp(
            lambda h: _clip_norm(h, config.hidden_clip), node)
        d_nodes[l] = d_nodes[l] + clip_vjp(dh_next)[0]
      dz[l], dh = highway_vjp(d_nodes[l])
      dh = dh + _mm(dz[l], w_all_t[l], config)
      if l == 0:
        dh_prev = dh
      else:
        for j in range(l):  # node l read node prevs[l - 1]
          d_nodes[j] = d_nodes[j] + jnp.where(prevs[l - 1] == j, dh, 0.0)
    return dh_prev, tuple(dz)

  d_carry, dzs = jax.lax.scan(step, d_carry, (zs, ins, d_outputs),
                              reverse=True)  # dzs: N x [T, B, 2H]
  d_w_all = jnp.stack([_mm_t(ins[l], dzs[l], config.compute_dtype)
                       for l in range(n)])
  return dzs[0], d_carry, d_w_all, None, None, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def apply(params: Params, arch: jax.Array, inputs: jax.Array, carry: jax.Array,
          *, config: SupernetConfig, key: jax.Array | None = None,
          train: bool = False) -> tuple[jax.Array, jax.Array]:
  """Runs the language model with cell ``arch`` over a sequence.

  Args:
    params: from :func:`init`.
    arch: ``int32[2N-1]`` cell tokens (ENAS order); a traced array. Concrete
      values are validated (``ValueError`` naming the bad position); traced
      ones cannot be and must be valid cells.
    inputs: ``int32[T, B]`` token ids, checked against the vocabulary when
      concrete.
    carry: ``float32[B, H]`` hidden state from the previous segment.
    config: the static sizes, regularisation and matmul ``compute_dtype``.
    key: PRNG key for the dropouts (see :func:`dropout_masks`); required
      when ``train``.
    train: apply the dropouts (the hidden-norm clip applies always).

  Returns:
    ``(logits float32[T, B, V], carry float32[B, H])``.
  """
  n = config.num_nodes
  if arch.shape != (search_space.num_tokens(n),):
    raise ValueError(
        f"arch must have shape ({search_space.num_tokens(n)},) for "
        f"{n} nodes, got {arch.shape}")
  if inputs.ndim != 2 or carry.shape != (inputs.shape[1], config.hidden_size):
    raise ValueError(
        f"expected inputs [T, B] and carry [B, {config.hidden_size}], got "
        f"{inputs.shape} and {carry.shape}")
  if train and key is None:
    raise ValueError("train=True needs a PRNG key for the dropouts")
  _check_concrete(arch, inputs, config)

  acts = arch[0::2]
  prevs = arch[1::2]
  loose = search_space.loose_end_mask(arch).astype(jnp.float32)
  loose = loose / jnp.sum(loose)
  # The weights this cell uses, gathered once per call: [N-1, H, 2H].
  w_nodes = params["w_pairs"][pair_index(prevs, jnp.arange(1, n))]

  embedding = params["embedding"]
  w_h = params["w_h"]
  x = embedding[inputs]  # [T, B, H]
  if train:
    masks = dropout_masks(key, inputs.shape[1], config)
    x = x * masks["embed_rows"][inputs][..., None]
    x = x * masks["input"]
    w_h = w_h * masks["w_h"]
  # Node 0's input projection for all time steps as one large matmul.
  xw = _mm(x, params["w_x"], config)  # [T, B, 2H], float32
  # Each node's weights, node 0's recurrent ones first: [N, H, 2H].
  w_all = jnp.concatenate([w_h[None], w_nodes])
  carry, outputs = _recurrence(xw, carry, w_all, acts, prevs, loose, config)
  if train:
    outputs = outputs * masks["output"]
  logits = _mm(outputs, embedding.T, config) + params["decoder_bias"]
  return logits, carry


def loss(params: Params, arch: jax.Array, inputs: jax.Array,
         targets: jax.Array, carry: jax.Array, *, config: SupernetConfig,
         key: jax.Array | None = None, train: bool = False
         ) -> tuple[jax.Array, jax.Array]:
  """Mean token cross-entropy (nats) and the next carry (gradient stopped).

  ``exp(loss)`` is the perplexity of the segment.
  """
  logits, carry = apply(params, arch, inputs, carry, config=config, key=key,
                        train=train)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.mean(ce), jax.lax.stop_gradient(carry)
