"""Throughput of the shared-weight training step, one new cell per step.

    python -m benchmarks.supernet_step --hidden 256 --nodes 12 --batch 64 \
        --bptt 35 --vocab 10000 --steps 20

Each step samples a fresh cell uniformly on the host (numpy) and runs the
jitted step: forward with training regularisation (dropouts, hidden clip),
mean cross-entropy, backward, global grad-norm clip 0.25 and an SGD update
(lr 20). Inputs are random token ids (the step's cost does not depend on the
text). The last line printed is one JSON object.

FLOP count (analytic, matmuls only; elementwise work, the softmax and the
optimiser are left out, so the count slightly understates the real work).
Per token, forward:

    node 0:      2 * H * 2H   (x W_x, input projection)
               + 2 * H * 2H   (h_prev W_h)
    nodes 1..N-1: (N - 1) * 2 * H * 2H
    decoder:     2 * H * V    (tied output projection)

i.e. ``4 H^2 (N + 1) + 2 H V``. The backward pass costs two matmuls of the
same size per forward matmul (gradient wrt the input and wrt the weight), so
one step is ``3 * T * B * (4 H^2 (N + 1) + 2 H V)`` FLOPs.

``matmul_peak_gflops_per_s`` is the median rate of a large dense fp32 matmul
(``--peak-size``, 10 repeats) timed in the same process, and
``peak_fraction`` the step's median rate over it; ``peak_fraction_best``
divides the best step by the best matmul (the same statistic on both sides
either way; timings on a shared 2-core machine vary by +-25%). ``compiles`` counts XLA compilations during warm-up and the
timed steps (1 means every cell ran through one program). ``--breakdown``
adds the parts timed alone (see :func:`breakdown`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import monitoring

from nas_jax import runtime
from nas_jax import search_space
from nas_jax import supernet

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
  """Counts XLA backend compilations inside a ``with`` block."""

  def __init__(self):
    self.count = 0

  def __enter__(self):
    monitoring.register_event_duration_secs_listener(self._on_event)
    return self

  def __exit__(self, *exc):
    monitoring.unregister_event_duration_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if event == _COMPILE_EVENT:
      self.count += 1


def step_flops(hidden: int, nodes: int, vocab: int, batch: int, bptt: int) -> int:
  """Analytic matmul FLOPs of one training step (see the module docstring)."""
  per_token = 4 * hidden * hidden * (nodes + 1) + 2 * hidden * vocab
  return 3 * bptt * batch * per_token


def make_train_step(config: supernet.SupernetConfig, lr: float = 20.0,
                    clip: float = 0.25):
  optimizer = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr))

  def train_step(params, opt_state, arch, inputs, targets, carry, root, step):
    key = jax.random.fold_in(root, step)
    (loss, carry), grads = jax.value_and_grad(supernet.loss, has_aux=True)(
        params, arch, inputs, targets, carry, config=config, key=key,
        train=True)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, carry, loss

  return optimizer, jax.jit(train_step, donate_argnums=(0, 1, 5))


def matmul_peak(size: int, repeats: int = 10) -> tuple[float, float]:
  """Median and best GFLOP/s of a ``size``-square fp32 matmul."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    mm(a, b).block_until_ready()
    times.append(time.perf_counter() - start)
  flops = 2 * size**3 / 1e9
  return flops / statistics.median(times), flops / min(times)


def _best_time(fn, *args, repeats=5) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def breakdown(args) -> dict:
  """Where the step's time goes: the parts timed alone (best of 5).

  * ``decoder``: tied output projection + softmax cross-entropy, forward and
    backward (``3 * T * B * 2 H V`` FLOPs);
  * ``cell``: the supernet with a 2-word vocabulary, i.e. embedding, the
    recurrence over T steps of N sequential nodes, forward and backward
    (``3 * T * B * 4 H^2 (N + 1)`` FLOPs);
  * ``small_matmul``: one ``[B, H] x [H, 2H]`` matmul (a node's) repeated in a
    sequential loop, the building block of the recurrence.
  """
  t, b, h, v, n = args.bptt, args.batch, args.hidden, args.vocab, args.nodes
  k = jax.random.split(jax.random.key(args.seed), 4)
  outputs = jax.random.normal(k[0], (t, b, h))
  embedding = 0.1 * jax.random.normal(k[1], (v, h))
  targets = jax.random.randint(k[2], (t, b), 0, v)

  def decoder_loss(embedding, outputs):
    logits = outputs @ embedding.T
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  decoder = jax.jit(jax.grad(decoder_loss, argnums=(0, 1)))
  decoder_s = _best_time(decoder, embedding, outputs)

  config = supernet.SupernetConfig(vocab_size=2, hidden_size=h, num_nodes=n)
  params = supernet.init(k[3], config)
  arch = jnp.asarray(search_space.sample_uniform(k[3], n, 1)[0])
  tokens = jnp.zeros((t, b), jnp.int32)
  carry = supernet.init_carry(b, config)
  # The cell is an argument, as in training: a constant would let XLA fold
  # the activation switches and the input selects away.
  cell = jax.jit(jax.grad(lambda p, a: supernet.loss(
      p, a, tokens, tokens, carry, config=config, key=k[0], train=True)[0]))
  cell_s = _best_time(cell, params, arch)

  steps = 200
  w = 0.01 * jax.random.normal(k[1], (h, 2 * h))
  small = jax.jit(lambda x: jax.lax.fori_loop(
      0, steps, lambda i, x: jnp.tanh(x @ w)[:, :h], x))
  small_s = _best_time(small, outputs[0])
  return {
      "decoder_s": decoder_s,
      "decoder_gflops_per_s": 3 * t * b * 2 * h * v / decoder_s / 1e9,
      "cell_s": cell_s,
      "cell_gflops_per_s": 3 * t * b * 4 * h * h * (n + 1) / cell_s / 1e9,
      "small_matmul_gflops_per_s": steps * b * h * 2 * h * 2 / small_s / 1e9,
  }


def run(args) -> dict:
  config = supernet.SupernetConfig(vocab_size=args.vocab,
                                   hidden_size=args.hidden,
                                   num_nodes=args.nodes)
  rng = np.random.default_rng(args.seed)
  # Sample every cell up front with numpy so no JAX work hides in the loop.
  sizes = search_space.decision_sizes(args.nodes)
  total = args.warmup + args.steps
  cells = (rng.random((total, sizes.size)) * sizes).astype(np.int32)
  search_space.validate_tokens(cells)
  tokens = rng.integers(0, args.vocab, (total, args.bptt + 1, args.batch),
                        dtype=np.int32)

  params = supernet.init(jax.random.key(args.seed), config)
  optimizer, train_step = make_train_step(config)
  opt_state = optimizer.init(params)
  carry = supernet.init_carry(args.batch, config)
  root = jax.random.key(args.seed + 1)
  jax.block_until_ready((params, opt_state, carry))

  times = []
  with CompileCounter() as counter:
    for i in range(total):
      arch = jax.device_put(cells[i])
      inputs = jax.device_put(tokens[i, :-1])
      targets = jax.device_put(tokens[i, 1:])
      start = time.perf_counter()
      params, opt_state, carry, loss = train_step(
          params, opt_state, arch, inputs, targets, carry, root,
          np.int32(i))
      loss.block_until_ready()
      if i >= args.warmup:
        times.append(time.perf_counter() - start)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark")

  step_s = statistics.median(times)
  flops = step_flops(args.hidden, args.nodes, args.vocab, args.batch, args.bptt)
  gflops = flops / step_s / 1e9
  peak, peak_best = matmul_peak(args.peak_size)
  return {
      "hidden": args.hidden, "nodes": args.nodes, "batch": args.batch,
      "bptt": args.bptt, "vocab": args.vocab, "steps": args.steps,
      "distinct_cells": len({tuple(c) for c in cells}),
      "backend": jax.default_backend(),
      "allocator_tuned": runtime.allocator_tuned(),
      "tokens_per_s": args.batch * args.bptt / step_s,
      "step_s": step_s,
      "step_s_mean": statistics.fmean(times),
      "compiles": counter.count,
      "gflop_per_step": flops / 1e9,
      "gflops_per_s": gflops,
      "matmul_peak_gflops_per_s": peak,
      "matmul_peak_best_gflops_per_s": peak_best,
      "peak_fraction": gflops / peak,
      "peak_fraction_best": flops / min(times) / 1e9 / peak_best,
      "final_loss": float(loss),
  } | (breakdown(args) if args.breakdown else {})


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--nodes", type=int, default=12)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--bptt", type=int, default=35)
  parser.add_argument("--vocab", type=int, default=10_000)
  parser.add_argument("--steps", type=int, default=20, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps first (the first one compiles)")
  parser.add_argument("--peak-size", type=int, default=2048,
                      help="side of the square matmul that measures the peak")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--breakdown", action="store_true",
                      help="also time the decoder, the cell recurrence and a "
                      "node's matmul alone (adds *_s and *_gflops_per_s keys)")
  return parser.parse_args(argv)


def main(argv=None):
  result = run(parse_args(argv))
  for key in ("tokens_per_s", "step_s", "gflops_per_s",
              "matmul_peak_gflops_per_s", "peak_fraction"):
    print(f"{key:>26}: {result[key]:.4g}", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  runtime.reexec_with_tuned_allocator()  # As launch.py does.
  main()
