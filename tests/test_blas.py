"""One BLAS thread inside the block; the numbers are the same."""

import numpy as np

from nas_jax.analysis import blas


def test_single_threaded_gives_the_same_numbers_and_nests():
  x = np.random.default_rng(0).normal(size=(300, 120))
  ref = np.linalg.svd(x, compute_uv=False)
  with blas.single_threaded():
    inside = np.linalg.svd(x, compute_uv=False)
    with blas.single_threaded():
      nested = x.T @ x
  np.testing.assert_allclose(inside, ref, rtol=1e-12)
  np.testing.assert_allclose(nested, x.T @ x, rtol=1e-12)
  fn = blas._set_threads_local()
  if fn is not None:  # numpy's own OpenBLAS: the setting is restored.
    previous = fn(1)
    assert fn(previous) == 1
