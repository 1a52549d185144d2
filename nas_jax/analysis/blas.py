"""One BLAS thread for the analyses' many small linear-algebra calls.

OpenBLAS wakes its worker threads for every call above a small size. The
analyses make thousands of medium-sized calls (ridge SVDs of ``[640, 200]``
matrices, one matrix product per block of pairs), and on a machine whose
cores are busy each wake-up can cost far more than the call: a ``[640, 200]``
SVD took 47 ms on one thread and 2.2 s with OpenBLAS's two on the 2-core
development machine under load. :func:`single_threaded` sets OpenBLAS's
thread count for the *calling thread only* (``openblas_set_num_threads_local``,
OpenBLAS >= 0.3.27, as bundled in numpy's wheels) and restores it on exit;
the analyses get their parallelism from their own worker threads instead
(:mod:`nas_jax.analysis.mantel_batch`). Where numpy uses another BLAS, or an
older OpenBLAS, it does nothing.

The numbers do not depend on it beyond rounding: OpenBLAS splits a product's
output between threads, not its sums.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os

import numpy as np


@functools.cache
def _set_threads_local():
  """``openblas_set_num_threads_local`` of numpy's OpenBLAS, or None."""
  base = os.path.dirname(os.path.abspath(np.__file__))
  candidates = (glob.glob(os.path.join(base + ".libs", "*openblas*.so*"))
                + glob.glob(os.path.join(base, ".dylibs", "*openblas*")))
  for path in candidates:
    try:
      fn = ctypes.CDLL(path).openblas_set_num_threads_local
    except (OSError, AttributeError):
      continue
    fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
    return fn
  return None


@contextlib.contextmanager
def single_threaded():
  """Inside the block, this thread's OpenBLAS calls run on one thread."""
  fn = _set_threads_local()
  if fn is None:
    yield
    return
  previous = fn(1)
  try:
    yield
  finally:
    fn(previous)
