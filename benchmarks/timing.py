"""What the benchmarks share: timing a state-passing program."""

from __future__ import annotations

import statistics
import time

import jax


def median_time(fn, state, repeats: int, warmup: int = 1):
  """``warmup`` untimed calls (the first compiles), then the median seconds
  of ``repeats`` calls; ``fn(state) -> (state, metrics)`` may donate its
  state. Returns ``(state, seconds)``."""
  for _ in range(warmup):
    state, metrics = fn(state)
    jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = fn(state)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return state, statistics.median(times)
