"""Tests for nas_jax.supernet: maths against a plain reference, one compile."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nas_jax import search_space
from nas_jax import supernet

CFG = supernet.SupernetConfig(vocab_size=37, hidden_size=16, num_nodes=6)
T, B = 5, 3
# Jitted once for the module: eager op-by-op execution of a scan is slow.
apply = jax.jit(supernet.apply, static_argnames=("config", "train"))
loss = jax.jit(supernet.loss, static_argnames=("config", "train"))


def _np_act(index, x):
  return [np.tanh, lambda v: np.maximum(v, 0.0), lambda v: v,
          lambda v: 1.0 / (1.0 + np.exp(-v))][index](x)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _pair_rows(num_nodes):
  """Row of w_pairs for each edge (j, l), by enumeration (l = 1, 2, ...; j < l)."""
  rows = {}
  for l in range(1, num_nodes):
    for j in range(l):
      rows[(j, l)] = len(rows)
  return rows


def reference_apply(params, arch, inputs, carry, masks=None, clip=None):
  """Straightforward per-time-step, per-node evaluation in float64 numpy.

  ``masks`` (from ``supernet.dropout_masks``) and ``clip`` give train mode.
  """
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.asarray(v, np.float64) for k, v in (masks or {}).items()}
  h_size = p["w_x"].shape[0]
  arch = search_space.Architecture.from_tokens(np.asarray(arch))
  loose = arch.loose_ends()
  rows = _pair_rows(arch.num_nodes)
  h_prev = np.asarray(carry, np.float64)
  w_h = p["w_h"] * m["w_h"] if masks else p["w_h"]
  logits = []
  for t in range(inputs.shape[0]):
    ids = np.asarray(inputs[t])
    x = p["embedding"][ids]
    if masks:
      x = x * m["embed_rows"][ids][:, None] * m["input"][0]
    pre = x @ p["w_x"] + h_prev @ w_h
    c0 = _sigmoid(pre[:, :h_size])
    nodes = [c0 * _np_act(arch.acts[0], pre[:, h_size:]) + (1 - c0) * h_prev]
    for l in range(1, arch.num_nodes):
      j = arch.prevs[l - 1]
      w = p["w_pairs"][rows[(j, l)]]
      pre = nodes[j] @ w
      c = _sigmoid(pre[:, :h_size])
      nodes.append(c * _np_act(arch.acts[l], pre[:, h_size:]) + (1 - c) * nodes[j])
    out = np.mean([nodes[l] for l in loose], axis=0)
    if masks:
      out = out * m["output"][0]
    logits.append(out @ p["embedding"].T + p["decoder_bias"])
    h_prev = nodes[-1]
    if clip is not None:
      norms = np.linalg.norm(h_prev, axis=-1, keepdims=True)
      h_prev = h_prev * np.minimum(1.0, clip / norms)
  return np.stack(logits), h_prev


@pytest.fixture(scope="module")
def params():
  p = supernet.init(jax.random.key(0), CFG)
  # A non-zero output bias so that the test also covers it.
  p["decoder_bias"] = jax.random.normal(jax.random.key(1), (CFG.vocab_size,))
  return p


@pytest.fixture(scope="module")
def batch():
  inputs = jax.random.randint(jax.random.key(2), (T, B), 0, CFG.vocab_size)
  carry = 0.5 * jax.random.normal(jax.random.key(3), (B, CFG.hidden_size))
  return inputs, carry


def _test_cells():
  n = CFG.num_nodes
  cells = [search_space.chain(n, a) for a in range(4)]
  # Star: every node reads node 0, so nodes 1..N-1 are all loose ends.
  cells.append(search_space.Architecture(acts=(0, 1, 2, 3, 0, 1),
                                         prevs=(0,) * (n - 1)))
  random = np.asarray(search_space.sample_uniform(jax.random.key(4), n, 6))
  cells += [search_space.Architecture.from_tokens(r) for r in random]
  return cells


@pytest.mark.parametrize("cell", _test_cells(), ids=str)
def test_apply_matches_per_node_reference(params, batch, cell):
  """Logits and next carry agree with the plain float64 reference to 1e-5.

  Covers chains of each activation, a star (all nodes but 0 loose) and random
  cells.
  """
  inputs, carry = batch
  logits, new_carry = apply(
      params, jnp.asarray(cell.tokens()), inputs, carry, config=CFG)
  ref_logits, ref_carry = reference_apply(params, cell.tokens(), inputs, carry)
  chex.assert_shape(logits, (T, B, CFG.vocab_size))
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(new_carry, ref_carry, atol=1e-5, rtol=1e-5)


def test_loose_end_mean_includes_non_final_loose_ends(params, batch):
  """Cells differing only in a loose end's activation give different logits."""
  inputs, carry = batch
  star = search_space.Architecture(acts=(0, 0, 0, 0, 0, 0), prevs=(0,) * 5)
  other = search_space.Architecture(acts=(0, 0, 3, 0, 0, 0), prevs=(0,) * 5)
  a, carry_a = apply(params, jnp.asarray(star.tokens()), inputs,
                              carry, config=CFG)
  b, carry_b = apply(params, jnp.asarray(other.tokens()), inputs,
                              carry, config=CFG)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
  # Node 2 is not the last node, so the next state does not change.
  np.testing.assert_allclose(carry_a, carry_b, atol=1e-6)


def test_apply_compiles_once_for_many_cells(params, batch):
  """One compiled program serves >= 10 distinct cells (arch is data)."""
  inputs, carry = batch
  cells = np.asarray(search_space.sample_uniform(jax.random.key(5),
                                                 CFG.num_nodes, 12))
  assert len({tuple(c) for c in cells}) >= 10

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(params, arch, inputs, carry):
    return supernet.apply(params, arch, inputs, carry, config=CFG)

  outs = [run(params, jnp.asarray(c), inputs, carry)[0] for c in cells]
  assert run._cache_size() == 1
  # Different cells really produced different outputs.
  assert np.abs(np.asarray(outs[0]) - np.asarray(outs[1])).max() > 1e-5


def test_gradient_step_compiles_once_for_many_cells(params, batch):
  """A jitted SGD step with clipping compiles once over >= 10 cells."""
  inputs, carry = batch
  targets = jnp.roll(inputs, -1, axis=0)
  cells = np.asarray(search_space.sample_uniform(jax.random.key(6),
                                                 CFG.num_nodes, 12))
  assert len({tuple(c) for c in cells}) >= 10
  clip = optax.clip_by_global_norm(0.25)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(params, arch, carry, key):
    (value, carry), grads = jax.value_and_grad(supernet.loss, has_aux=True)(
        params, arch, inputs, targets, carry, config=CFG, key=key, train=True)
    grads, _ = clip.update(grads, clip.init(params))
    params = jax.tree.map(lambda p, g: p - 20.0 * g, params, grads)
    return params, carry, value

  p = params
  losses = []
  for i, cell in enumerate(cells):
    p, carry, loss = train_step(p, jnp.asarray(cell), carry,
                                jax.random.key(i))
    losses.append(float(loss))
  assert train_step._cache_size() == 1
  assert np.all(np.isfinite(losses))
  assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                       p, params))


def test_vmap_over_architectures_matches_per_cell_calls(params, batch):
  """vmap over a batch of cells on the same data equals one call per cell."""
  inputs, carry = batch
  cells = search_space.sample_uniform(jax.random.key(7), CFG.num_nodes, 5)
  batched_logits, batched_carry = jax.jit(jax.vmap(
      lambda a: supernet.apply(params, a, inputs, carry, config=CFG)))(cells)
  chex.assert_shape(batched_logits, (5, T, B, CFG.vocab_size))
  for i in range(5):
    logits, new_carry = apply(params, cells[i], inputs, carry,
                                       config=CFG)
    np.testing.assert_allclose(batched_logits[i], logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(batched_carry[i], new_carry, atol=1e-5, rtol=1e-5)


def test_gradient_reaches_only_the_pairs_the_cell_uses(params, batch):
  """d loss / d w_pairs is non-zero exactly on the cell's (prev, node) rows."""
  inputs, carry = batch
  cell = search_space.Architecture(acts=(0, 1, 0, 3, 2, 0),
                                   prevs=(0, 1, 1, 0, 3))
  targets = jnp.roll(inputs, -1, axis=0)
  grads = jax.jit(jax.grad(lambda p: supernet.loss(
      p, jnp.asarray(cell.tokens()), inputs, targets, carry, config=CFG)[0]))(
          params)
  used = {supernet.pair_index(j, l) for l, j in enumerate(cell.prevs, start=1)}
  row_norms = np.linalg.norm(np.asarray(grads["w_pairs"]).reshape(
      CFG.num_pairs, -1), axis=1)
  assert {int(i) for i in np.nonzero(row_norms)[0]} == used


def test_train_mode_requires_a_key(params, batch):
  """train=True without a key is an error, not silently deterministic."""
  inputs, carry = batch
  arch = jnp.asarray(search_space.chain(CFG.num_nodes).tokens())
  with pytest.raises(ValueError, match="key"):
    supernet.apply(params, arch, inputs, carry, config=CFG, train=True)


def test_train_mode_matches_reference_with_the_same_masks(params, batch):
  """Train mode = reference with dropout_masks(key) applied and clip per step.

  Repeated input words check that embedding dropout drops word rows; the
  masks' [1, B, H] shape means one input/output mask for all time steps.
  """
  inputs, carry = batch
  inputs = inputs.at[3].set(inputs[0])  # The same words at two time steps.
  cfg = supernet.SupernetConfig(vocab_size=CFG.vocab_size,
                                hidden_size=CFG.hidden_size,
                                num_nodes=CFG.num_nodes, embed_dropout=0.3,
                                hidden_clip=0.8)
  key = jax.random.key(11)
  masks = supernet.dropout_masks(key, B, cfg)
  for cell in _test_cells()[3:6]:
    logits, new_carry = apply(params, jnp.asarray(cell.tokens()), inputs,
                              carry, config=cfg, key=key, train=True)
    ref_logits, ref_carry = reference_apply(params, cell.tokens(), inputs,
                                            carry, masks=masks, clip=0.8)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(new_carry, ref_carry, atol=1e-5, rtol=1e-5)
  # The clip was active: unclipped states exceed it.
  _, unclipped = reference_apply(params, _test_cells()[3].tokens(), inputs,
                                 carry, masks=masks)
  assert np.linalg.norm(unclipped, axis=-1).max() > 0.8


def test_dropout_masks_have_the_configured_rates_and_shapes():
  """Masks are 0 or 1/keep, with empirical drop rates near the config's."""
  cfg = supernet.SupernetConfig(vocab_size=20_000, hidden_size=200,
                                num_nodes=3)
  masks = supernet.dropout_masks(jax.random.key(0), 64, cfg)
  expected = {"embed_rows": ((20_000,), 0.1), "input": ((1, 64, 200), 0.65),
              "output": ((1, 64, 200), 0.4), "w_h": ((200, 400), 0.5)}
  for name, (shape, rate) in expected.items():
    mask = np.asarray(masks[name])
    assert mask.shape == shape, name
    np.testing.assert_allclose(np.unique(mask), [0.0, 1.0 / (1.0 - rate)],
                               rtol=1e-6, err_msg=name)
    assert abs(np.mean(mask == 0.0) - rate) < 0.01, name
  other = supernet.dropout_masks(jax.random.key(1), 64, cfg)
  assert np.any(np.asarray(other["input"]) != np.asarray(masks["input"]))


def test_default_config_pins_design_values():
  """The defaults are DESIGN's regularisation and paper sizes."""
  cfg = supernet.SupernetConfig()
  assert (cfg.vocab_size, cfg.hidden_size, cfg.num_nodes) == (10_000, 1000, 12)
  assert (cfg.embed_dropout, cfg.input_dropout, cfg.output_dropout,
          cfg.recurrent_dropconnect, cfg.hidden_clip) == (0.1, 0.65, 0.4,
                                                          0.5, 25.0)


def test_concrete_invalid_cells_and_token_ids_are_rejected(params, batch):
  """Invalid concrete tokens name the position; ids >= vocab are an error."""
  inputs, carry = batch
  arch = search_space.chain(CFG.num_nodes).tokens()
  arch[5] = 3  # prev_3 may only be 0..2.
  with pytest.raises(ValueError, match="token 5"):
    supernet.apply(params, jnp.asarray(arch), inputs, carry, config=CFG)
  good = jnp.asarray(search_space.chain(CFG.num_nodes).tokens())
  with pytest.raises(ValueError, match="vocabulary"):
    supernet.apply(params, good, inputs.at[0, 0].set(CFG.vocab_size), carry,
                   config=CFG)


def test_dropout_is_keyed_and_off_in_eval(params, batch):
  """Training output depends on the key; eval output ignores it."""
  inputs, carry = batch
  arch = jnp.asarray(search_space.ENAS_PTB_CELL.tokens()[:11])
  run = lambda key, train: apply(params, arch, inputs, carry,
                                          config=CFG, key=key, train=train)[0]
  a = run(jax.random.key(0), True)
  b = run(jax.random.key(0), True)
  c = run(jax.random.key(1), True)
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-4
  np.testing.assert_array_equal(run(jax.random.key(0), False),
                                run(jax.random.key(1), False))


def test_zero_dropout_train_equals_eval_below_clip(params, batch):
  """With all dropout rates 0 and a loose clip, train mode equals eval mode."""
  inputs, carry = batch
  cfg = supernet.SupernetConfig(
      vocab_size=CFG.vocab_size, hidden_size=CFG.hidden_size,
      num_nodes=CFG.num_nodes, embed_dropout=0.0, input_dropout=0.0,
      output_dropout=0.0, recurrent_dropconnect=0.0, hidden_clip=1e6)
  arch = jnp.asarray(search_space.chain(CFG.num_nodes, 1).tokens())
  train, _ = apply(params, arch, inputs, carry, config=cfg,
                            key=jax.random.key(0), train=True)
  evaluate, _ = apply(params, arch, inputs, carry, config=cfg)
  np.testing.assert_allclose(train, evaluate, atol=1e-6)


def test_hidden_norm_clip_bounds_each_example_in_train_and_eval(params, batch):
  """The next state's per-example L2 norm is at most hidden_clip in training
  and in evaluation (the authors clip always; an unclipped identity chain
  overflows at hidden 1000 in eval mode)."""
  inputs, _ = batch
  cfg = supernet.SupernetConfig(
      vocab_size=CFG.vocab_size, hidden_size=CFG.hidden_size,
      num_nodes=CFG.num_nodes, hidden_clip=0.5)
  # Large weights and identity activations keep the state large.
  big_params = {k: 10.0 * v for k, v in params.items()}
  arch = jnp.asarray(search_space.chain(CFG.num_nodes, 2).tokens())
  big = 10.0 * jnp.ones((B, CFG.hidden_size))
  loose = dataclasses.replace(cfg, hidden_clip=1e6)
  _, unclipped = apply(big_params, arch, inputs, big, config=loose)
  assert np.linalg.norm(unclipped, axis=-1).min() > 0.5
  for train in (False, True):
    _, clipped = apply(big_params, arch, inputs, big, config=cfg,
                       key=jax.random.key(0), train=train)
    np.testing.assert_allclose(np.linalg.norm(clipped, axis=-1), 0.5,
                               rtol=1e-5, err_msg=f"train={train}")


def test_clip_gradient_is_finite_at_zero_state():
  """The clip's gradient stays finite for an all-zero row."""
  g = jax.grad(lambda h: jnp.sum(supernet._clip_norm(h, 25.0)))(
      jnp.zeros((2, 4)))
  assert np.all(np.isfinite(g))


def test_loss_is_mean_cross_entropy_and_stops_carry_gradient(params, batch):
  """loss = mean CE of the logits; the returned carry carries no gradient."""
  inputs, carry = batch
  targets = jnp.roll(inputs, -1, axis=0)
  arch = jnp.asarray(search_space.chain(CFG.num_nodes).tokens())
  value, new_carry = loss(params, arch, inputs, targets, carry,
                                   config=CFG)
  logits, _ = apply(params, arch, inputs, carry, config=CFG)
  log_p = jax.nn.log_softmax(logits)
  expected = -np.mean(np.take_along_axis(np.asarray(log_p),
                                         np.asarray(targets)[..., None], -1))
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  g = jax.jit(jax.grad(lambda c: jnp.sum(supernet.loss(
      params, arch, inputs, targets, c, config=CFG)[1])))(carry)
  np.testing.assert_array_equal(g, 0.0)


def test_bad_shapes_and_config_raise(params, batch):
  """Wrong arch length or carry width and bad config values are ValueErrors."""
  inputs, carry = batch
  with pytest.raises(ValueError, match="arch must have shape"):
    supernet.apply(params, jnp.zeros((9,), jnp.int32), inputs, carry,
                   config=CFG)
  with pytest.raises(ValueError, match="carry"):
    supernet.apply(params, jnp.zeros((11,), jnp.int32), inputs, carry[:, :3],
                   config=CFG)
  with pytest.raises(ValueError, match="input_dropout"):
    supernet.SupernetConfig(input_dropout=1.0)


def test_parameter_count_follows_the_pair_layout():
  """init allocates 2H*H per (j, l) pair plus node 0, embedding and bias."""
  cfg = supernet.SupernetConfig(vocab_size=11, hidden_size=4, num_nodes=5)
  p = supernet.init(jax.random.key(0), cfg)
  assert p["w_pairs"].shape == (10, 4, 8)
  assert supernet.num_params(p) == 11 * 4 + 11 + 2 * 4 * 8 + 10 * 4 * 8


def test_select_and_switch_activations_are_the_same_function(
    params, batch, monkeypatch):
  """The accelerators' select (all four, no conditional) and the CPU's
  switch give the same activations, loss and gradients; the default picks
  the switch on the CPU and the select elsewhere."""
  x = jnp.linspace(-3.0, 3.0, 13)
  for index in range(4):
    i = jnp.int32(index)
    np.testing.assert_array_equal(supernet.activation(i, x, select=True),
                                  supernet.activation(i, x, select=False))
  inputs, carry = batch
  targets = jnp.roll(inputs, 1, axis=0)
  arch = jnp.asarray(_test_cells()[4].tokens())  # Every activation used.

  def grads():  # A fresh function: traced anew under the patched backend.
    return jax.jit(jax.value_and_grad(lambda p: supernet.loss(
        p, arch, inputs, targets, carry, config=CFG)[0]))(params)

  switched = grads()
  jaxpr = str(jax.make_jaxpr(lambda p: supernet.loss(
      p, arch, inputs, targets, carry, config=CFG))(params))
  assert "cond[" in jaxpr  # The CPU default: lax.switch.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  jaxpr = str(jax.make_jaxpr(lambda p: supernet.loss(
      p, arch, inputs, targets, carry, config=CFG))(params))
  assert "cond[" not in jaxpr and "select_n" in jaxpr
  selected = grads()
  np.testing.assert_allclose(selected[0], switched[0], rtol=1e-6)
  for name in params:
    np.testing.assert_allclose(selected[1][name], switched[1][name],
                               rtol=1e-5, atol=1e-7)


def _autodiff_recurrence(*args):
  """``supernet._recurrence`` differentiated by JAX's autodiff of its scan."""
  # pylint: disable-next=protected-access
  carry, (outputs, _) = supernet._recurrence_scan(*args, residuals=False)
  return carry, outputs


@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("train", [False, True])
def test_recurrence_vjp_matches_autodiff(params, batch, monkeypatch,
                                         compute_dtype, train):
  """The hand-written backward of the recurrence (weight gradients as one
  matmul per node after the reverse scan) gives autodiff's gradients, for
  every parameter and the incoming carry, per cell and (float32) under
  ``vmap``, with a norm clip that binds so that its VJP is exercised."""
  config = dataclasses.replace(CFG, hidden_clip=0.8,
                               compute_dtype=compute_dtype)
  inputs, carry = batch
  targets = jnp.roll(inputs, -1, axis=0)
  cells = jnp.asarray(np.stack([c.tokens() for c in _test_cells()[3:9]]))

  def make_grad():
    """A new function each call: jit caches traces by function identity."""
    def loss_fn(p, arch, carry):
      return supernet.loss(p, arch, inputs, targets, carry, config=config,
                           key=jax.random.key(5) if train else None,
                           train=train)[0]
    return jax.grad(loss_fn, argnums=(0, 2))

  grad = make_grad()
  # The clip binds: the first step's unclipped state norms exceed it.
  _, state = apply(params, cells[0], inputs[:1], carry,
                   config=dataclasses.replace(config, hidden_clip=1e6))
  assert np.all(np.linalg.norm(state, axis=-1) > config.hidden_clip)
  jitted = jax.jit(grad)
  got = [jax.block_until_ready(jitted(params, cell, carry)) for cell in cells]
  # Under vmap on the CPU, this bfloat16 gradient (parameters and carry)
  # fails before and after the custom VJP: XLA:CPU lacks one of its
  # bf16 x bf16 -> f32 dots ("Unsupported element type for
  # DotThunk::Execute").
  got_vmap = None if compute_dtype == "bfloat16" else jax.block_until_ready(
      jax.jit(jax.vmap(grad, in_axes=(None, 0, None)))(params, cells, carry))
  with monkeypatch.context() as m:
    m.setattr(supernet, "_recurrence", _autodiff_recurrence)
    want = jax.jit(make_grad())
    for i, cell in enumerate(cells):
      expected = jax.block_until_ready(want(params, cell, carry))
      results = [got[i]]
      if got_vmap is not None:
        results.append(jax.tree.map(lambda g, i=i: g[i], got_vmap))
      for result in results:
        for name, g, w in zip(["params", "carry"], result, expected):
          jax.tree.map(
              lambda a, b, name=name: np.testing.assert_allclose(
                  a, b, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(b))),
                  err_msg=name), g, w)
      assert float(jnp.max(jnp.abs(expected[0]["w_pairs"]))) > 0
