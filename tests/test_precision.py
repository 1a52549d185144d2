"""Tests for the mixed-precision option ``model.compute_dtype``: bfloat16
matmuls with float32 parameters, state and loss, close to float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import experiments
from experiments import common
from nas_jax import settings
from nas_jax import supernet

V, H, N = 100, 32, 4
T, B = 12, 8
NUM_STEPS = 30
ARCH = jnp.array([0, 0, 1, 1, 0, 2, 3], jnp.int32)  # 4 nodes, every activation.
# Measured on CPU (jax 0.10.2) over 4 data/init seeds: max relative loss
# difference bfloat16 vs float32 over the 30 Adam steps 0.04% (this seed:
# 0.01%); the bound leaves a margin of more than 20x.
REL_TOL = 0.01
# Relative L2 error of each parameter's gradient, bfloat16 vs float32, for
# two cells under vmap with dropout (as shared_step with cells_per_step > 1):
# measured at most 3.5% over 3 seeds (w_x: small, cancelling sums; this
# seed 0.5%), under 0.01% for the decoder bias.
GRAD_TOL = 0.1


def _config(dtype):
  return supernet.SupernetConfig(vocab_size=V, hidden_size=H, num_nodes=N,
                                 compute_dtype=dtype)


def _text(seed):
  """``int32[NUM_STEPS, T + 1, B]`` windows of Zipf-distributed tokens: a
  unigram a tiny model learns within the run (loss 4.6 -> about 3.7)."""
  rng = np.random.default_rng(seed)
  p = 1.0 / np.arange(1, V + 1)
  ids = rng.choice(V, size=(NUM_STEPS, T + 1, B), p=p / p.sum())
  return jnp.asarray(ids.astype(np.int32))


@functools.partial(jax.jit, static_argnames="config")
def _train(params, windows, *, config):
  """``NUM_STEPS`` Adam steps (dropout on, carry passed on) in one program;
  returns the per-step losses, the final carry and parameters.

  Adam, not the search's clipped SGD at lr 20: at these tiny sizes that SGD
  is chaotic (its loss swings by 1 nat between steps), so any perturbation,
  bfloat16 or not, moves the trajectory by up to 20% within 30 steps.
  """
  opt = optax.adam(1e-2)

  def step(state, xs):
    params, opt_state, carry = state
    window, i = xs
    (loss, carry), grads = jax.value_and_grad(supernet.loss, has_aux=True)(
        params, ARCH, window[:-1], window[1:], carry, config=config,
        key=jax.random.key(i), train=True)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, carry), loss

  state = (params, opt.init(params), supernet.init_carry(B, config))
  (params, _, carry), losses = jax.lax.scan(
      step, state, (windows, jnp.arange(windows.shape[0])))
  return losses, carry, params


def test_bad_compute_dtype_raises():
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    _config("float16")
  config = common.apply_overrides(experiments.get_config("smoke")[1],
                                  {"model.compute_dtype": "bf16"})
  with pytest.raises(settings.ConfigError) as info:
    settings.make_setup(config, vocab_size=V)
  assert "model" in str(info.value) and "compute_dtype" in str(info.value)


def test_make_setup_reads_the_key_and_defaults_to_float32():
  """The key reaches SupernetConfig; a config.json without it is float32."""
  config = experiments.get_config("smoke")[1]
  assert config.model.compute_dtype == "float32"
  assert settings.make_setup(config, V).model.compute_dtype == "float32"
  config = common.apply_overrides(config, {"model.compute_dtype": "bfloat16"})
  assert settings.make_setup(config, V).model.compute_dtype == "bfloat16"
  old = experiments.get_config("smoke")[1].to_dict()
  del old["model"]["compute_dtype"]  # A run directory from before the key.
  import ml_collections  # pylint: disable=g-import-not-at-top
  setup = settings.make_setup(ml_collections.ConfigDict(old), V)
  assert setup.model.compute_dtype == "float32"


@pytest.mark.parametrize("train", [False, True])
def test_bfloat16_program_computes_in_bfloat16(train):
  """Lowered loss and gradient: with bfloat16 every matmul, forward and
  backward, takes bf16 operands and returns f32; with float32 no bf16."""
  windows = _text(0)
  for dtype in ("float32", "bfloat16"):
    config = _config(dtype)
    params = supernet.init(jax.random.key(0), config)

    def f(params, window, carry, key):
      return jax.value_and_grad(supernet.loss, has_aux=True)(
          params, ARCH, window[:-1], window[1:], carry, config=config,
          key=key, train=train)

    text = jax.jit(f).lower(params, windows[0], supernet.init_carry(B, config),
                            jax.random.key(1)).as_text()
    dots = [line.rsplit(" : ", 1)[-1] for line in text.splitlines()
            if "stablehlo.dot_general" in line]
    # Forward: x W_x, the decoder and one per node; backward: twice that.
    assert len(dots) == 3 * (2 + N), dots
    if dtype == "float32":
      assert "bf16" not in text
    else:
      for dot in dots:
        operands, result = dot.split(" -> ")
        assert operands.count("bf16>") == 2 and result.endswith("xf32>"), dot


@pytest.mark.parametrize("a_shape", [(6, 5), (4, 6, 5)])
def test_bfloat16_matmul_vjp_is_float32_maths_on_rounded_operands(a_shape):
  """The custom VJP's three matmuls equal float32 maths on bf16-rounded
  operands (products of bf16 values are exact in float32)."""
  ka, kb, kg = jax.random.split(jax.random.key(0), 3)
  a = jax.random.normal(ka, a_shape)
  b = jax.random.normal(kb, (5, 3))
  g = jax.random.normal(kg, a_shape[:-1] + (3,))
  r = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  # pylint: disable-next=protected-access
  out, vjp = jax.vjp(supernet._mm_bf16, a, b)
  da, db = vjp(g)
  hi = jax.lax.Precision.HIGHEST
  want_db = jnp.einsum("...k,...n->kn", r(a), r(g), precision=hi)
  for got, want in [(out, jnp.matmul(r(a), r(b), precision=hi)),
                    (da, jnp.matmul(r(g), r(b).T, precision=hi)),
                    (db, want_db)]:
    assert got.dtype == jnp.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_loss_carry_and_params_stay_float32():
  """Output dtypes by abstract evaluation (no compile); the training test
  checks real arrays."""
  config = _config("bfloat16")
  params = supernet.init(jax.random.key(0), config)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  window = _text(0)[0]
  carry = supernet.init_carry(B, config)
  logits, new_carry = jax.eval_shape(
      functools.partial(supernet.apply, config=config),
      params, ARCH, window[:-1], carry)
  assert logits.dtype == jnp.float32 and new_carry.dtype == jnp.float32
  (loss, new_carry), grads = jax.eval_shape(
      jax.value_and_grad(functools.partial(supernet.loss, config=config,
                                           train=True), has_aux=True),
      params, ARCH, window[:-1], window[1:], carry, key=jax.random.key(1))
  assert loss.dtype == jnp.float32 and new_carry.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_bfloat16_training_loss_tracks_float32():
  """30 training steps from the same init on the same data: the bfloat16
  loss is within REL_TOL of float32 at every step, yet not identical."""
  windows = _text(1)
  runs = {}
  for dtype in ("float32", "bfloat16"):
    config = _config(dtype)
    params = supernet.init(jax.random.key(1), config)
    runs[dtype] = _train(params, windows, config=config)
  f32, bf16 = (np.asarray(runs[d][0]) for d in ("float32", "bfloat16"))
  assert np.all(np.isfinite(bf16))
  assert f32[-1] < f32[0] - 0.3  # The run learns.
  rel = np.abs(bf16 - f32) / f32
  assert rel.max() < REL_TOL, (rel.max(), f32, bf16)
  assert rel.max() > 0  # bfloat16 really changes the numbers.
  carry, params = runs["bfloat16"][1:]
  assert carry.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_bfloat16_gradient_under_vmap_matches_float32():
  """Two cells' mean loss under vmap (the custom VJP batched) runs and its
  gradient is close to float32's, parameter by parameter."""
  cells = jnp.stack([ARCH, jnp.array([1, 0, 2, 0, 3, 1, 0], jnp.int32)])
  window = _text(2)[0]
  grads = {}
  for dtype in ("float32", "bfloat16"):
    config = _config(dtype)

    def mean_loss(params, config=config):
      one = lambda cell, key: supernet.loss(
          params, cell, window[:-1], window[1:],
          supernet.init_carry(B, config), config=config, key=key,
          train=True)[0]
      return jnp.mean(jax.vmap(one)(cells, jax.random.split(
          jax.random.key(3), 2)))

    grads[dtype] = jax.jit(jax.grad(mean_loss))(
        supernet.init(jax.random.key(2), config))
  for name, g32 in grads["float32"].items():
    g16 = grads["bfloat16"][name]
    assert g16.dtype == jnp.float32
    err = float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32))
    assert 0 < err < GRAD_TOL, (name, err)
