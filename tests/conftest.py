"""Fixtures shared by the test modules."""

import atexit
import json
import os
import shutil
import tempfile

# Launched processes (launch.py in subprocesses) and this one share a
# compilation cache for the session, outside the user's own cache.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _CACHE = tempfile.mkdtemp(prefix="nas_jax_test_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from nas_jax.analysis import pairwise  # pylint: disable=g-import-not-at-top

# The vocabulary of ``toy_data``: tests build their setups with it.
TOY_VOCAB = 50


@pytest.fixture(scope="session")
def toy_data():
  """``int32[30, 8]``: batchified toy text, ids below :data:`TOY_VOCAB`."""
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.integers(0, TOY_VOCAB, (30, 8), dtype=np.int32))


def run_outputs(workdir):
  """A search run's logs (timings dropped) and best cell, as data."""
  from nas_jax import metrics  # pylint: disable=import-outside-toplevel

  def lines(name):
    with open(os.path.join(workdir, name), encoding="utf-8") as f:
      return [json.loads(line) for line in f]
  with open(os.path.join(workdir, "best_arch.json"), encoding="utf-8") as f:
    best = json.load(f)
  return {
      "metrics": [{k: v for k, v in r.items() if not metrics.is_timing(k)}
                  for r in lines("metrics.jsonl")],
      "archs": lines("archs.jsonl"), "derived": lines("derived.jsonl"),
      "best": best}


def assert_same_run(workdir, reference):
  """Same logs, cells and best cell: cells and counters exactly, numbers to
  float tolerance (stacking seeds or splitting the batch over devices may
  reorder floating-point sums)."""
  a, b = run_outputs(workdir), run_outputs(reference)
  assert a["best"]["arch"] == b["best"]["arch"]
  assert a["best"]["valid_ppl"] == pytest.approx(b["best"]["valid_ppl"],
                                                 rel=1e-4)
  for name in ("metrics", "archs", "derived"):
    assert len(a[name]) == len(b[name]), name
    for row, ref in zip(a[name], b[name]):
      assert row.keys() == ref.keys(), name
      for key, value in row.items():
        if key in ("cells", "tokens", "step", "epoch", "arch", "best"):
          assert value == ref[key], (name, key)
        elif value is not None:
          np.testing.assert_allclose(value, ref[key], rtol=1e-3, atol=1e-4,
                                     err_msg=f"{name}/{key}")


def interrupt_window(monkeypatch, stop_at, only_step=None):
  """Makes the search loop's ``stop_at``-th window of steps (counting only
  windows of ``only_step``, e.g. ``steps.controller_step``, if given) raise
  ``KeyboardInterrupt`` before it runs, as a hard stop would; returns the
  list of counted calls. ``monkeypatch.undo()`` restores the loop."""
  from nas_jax import devices  # pylint: disable=import-outside-toplevel
  real, calls = devices.Placement.window, []

  def window(self, step, length, setup, state):
    program = real(self, step, length, setup, state)
    if only_step is not None and step is not only_step:
      return program

    def run(*args):
      calls.append(1)
      if len(calls) == stop_at:
        raise KeyboardInterrupt
      return program(*args)
    return run

  monkeypatch.setattr(devices.Placement, "window", window)
  return calls


def random_tokens(rng, num_nodes, num):
  """int[num, 2N-1] valid cells drawn with numpy (independent of the module)."""
  out = np.empty((num, 2 * num_nodes - 1), dtype=np.int64)
  out[:, 0::2] = rng.integers(0, 4, size=(num, num_nodes))
  for l in range(1, num_nodes):
    out[:, 2 * l - 1] = rng.integers(0, l, size=num)
  return out


def structured_carries(k, noise, seed=0, dim=16):
  """Cells with a 3-d 'graph feature'; hidden states are a noisy copy.

  Returns ``(hidden float[k, dim], graph_distance float[k, k])``.
  """
  rng = np.random.default_rng(seed)
  feature = rng.normal(size=(k, 3))
  hidden = feature @ rng.normal(size=(3, dim)) + noise * rng.normal(
      size=(k, dim))
  return hidden, pairwise.pairwise_l2(feature)


def integer_metric(k, seed):
  """A symmetric integer 'common connections'-like matrix, with many ties."""
  rng = np.random.default_rng(seed)
  m = rng.integers(0, 6, size=(k, k)).astype(float)
  m = np.triu(m, 1)
  return m + m.T
