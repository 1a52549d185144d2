"""Speed of the controller: sampling cells, scoring them, one search step.

    python -m benchmarks.controller [--num-cells 1000 --repeats 30]

* ``sample``: ``controller.sample`` of ``--num-cells`` cells (train mode,
  zero carry, the ``enas_probe`` controller: ``--nodes 12 --hidden 100``),
  timed after a warm-up call, against :func:`reference_sample` -- the plain
  per-step formulation the controller had before its input table, prefix
  tree and batched noise -- in the same process, the two alternated
  ``--repeats`` times (timings on a shared 2-core machine drift by 25% and
  more; the ratio of medians is the number to read). The first call of each
  also checks that both give the same tokens.
* ``score_grad``: the gradient of a REINFORCE-style loss through
  ``controller.score`` of ``--score-cells`` cells (the replay loss's size),
  against the reference scorer, alternated the same way.
* ``step``: ``steps.controller_step`` of the search at the CPU defaults of
  ``experiments.get_config("enas_probe")`` (hidden 128, batch 32; one cell
  per step, scored on a BPTT window of the PTB validation split), its state
  fed back (the step donates it); median of ``--steps`` steps after
  ``--warmup``. Most of it is the supernet scoring the cell, not the
  controller. ``--preset smoke`` shrinks it for tests.

Times are milliseconds: medians, with the quartiles in the table. Prints a
table to stderr and, as the last stdout line, one JSON object with
``sample_1000_ms`` (the median for ``--num-cells`` cells, 1000 by default),
``sample_1000_ms_reference``, ``score_grad_ms`` (and ``_reference``),
``step_ms``, ``tokens_match`` and ``backend``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import experiments
from nas_jax import controller
from nas_jax import data
from nas_jax import runtime
from nas_jax import settings
from nas_jax import steps


# ---------------------------------------------------------------------------
# The reference: the controller's plain formulation, as it was before the
# speed-ups (same tokens for the same key, same outputs to float tolerance).


def _reference_unroll(params, config, mode, carry, num, key=None, tokens=None):
  """One ``lax.scan`` over the steps: the LSTM on ``[x; h]``, every head
  padded and masked, ``jax.random.categorical`` at every step."""
  valid, offset = controller.step_tables(config)
  steps_ = jnp.arange(config.num_steps)
  xs = steps_ if tokens is None else (steps_, tokens.T)

  def body(state, xs):
    c, h, x = state
    t, given = (xs, None) if tokens is None else xs
    c, h = controller.lstm_cell(params, x, (c, h))
    logits = controller.step_logits(params, h, t, valid[t], config=config,
                                    mode=mode)
    log_p = jax.nn.log_softmax(logits)
    if given is None:
      token = jax.random.categorical(jax.random.fold_in(key, t), logits)
    else:
      token = given
    token = token.astype(jnp.int32)
    log_prob = jnp.take_along_axis(log_p, token[:, None], axis=-1)[:, 0]
    entropy = -jnp.sum(jnp.where(valid[t], jnp.exp(log_p) * log_p, 0.0), -1)
    x_next = params["embedding"][token + offset[t]]
    return (c, h, x_next), (token, log_prob, entropy, c, h)

  x0 = jnp.zeros((num, config.hidden_size), jnp.float32)
  _, (tok, lp, ent, cs, hs) = jax.lax.scan(body, (*carry, x0), xs)
  swap = lambda a: jnp.swapaxes(a, 0, 1)
  return controller.Rollout(tokens=swap(tok), log_probs=swap(lp),
                            entropies=swap(ent), c=swap(cs), h=swap(hs))


@functools.partial(jax.jit, static_argnames=("num", "config", "mode"))
def reference_sample(params, key, num, *, config, mode="train"):
  """The reference of ``controller.sample`` (zero initial carry)."""
  zeros = jnp.zeros((num, config.hidden_size), jnp.float32)
  return _reference_unroll(params, config, mode, (zeros, zeros), num, key=key)


@functools.partial(jax.jit, static_argnames=("config", "mode"))
def reference_score(params, tokens, *, config, mode="train"):
  """The reference of ``controller.score`` (zero initial carry)."""
  zeros = jnp.zeros((tokens.shape[0], config.hidden_size), jnp.float32)
  return _reference_unroll(params, config, mode, (zeros, zeros),
                           tokens.shape[0], tokens=tokens)


# ---------------------------------------------------------------------------


def _quartiles(times: list[float]) -> dict:
  ms = [1e3 * t for t in times]
  q1, median, q3 = (statistics.quantiles(ms, n=4, method="inclusive")
                    if len(ms) > 1 else ms * 3)
  return {"median": statistics.median(ms), "q1": q1, "q3": q3, "min": min(ms)}


def _alternate(fns: dict, args_for, repeats: int) -> dict:
  """Times each of ``fns`` (already compiled) ``repeats`` times, in turn."""
  times = {name: [] for name in fns}
  for r in range(repeats):
    for name, fn in fns.items():
      args = args_for(r)
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: _quartiles(t) for name, t in times.items()}


def _controller_config(args) -> controller.ControllerConfig:
  return controller.ControllerConfig(num_nodes=args.nodes,
                                     hidden_size=args.hidden)


def time_sampling(args) -> tuple[dict, bool]:
  config = _controller_config(args)
  params = controller.init(jax.random.key(args.seed), config)
  num = args.num_cells
  fns = {
      "sample": lambda key: controller.sample(params, key, num, config=config),
      "sample_reference": lambda key: reference_sample(params, key, num,
                                                       config=config),
  }
  key = jax.random.key(args.seed + 1)
  new, ref = (jax.block_until_ready(fn(key)) for fn in fns.values())
  match = bool(jnp.all(new.tokens == ref.tokens))
  keys = [jax.random.key(args.seed + 2 + r) for r in range(args.repeats)]
  return _alternate(fns, lambda r: (keys[r],), args.repeats), match


def time_score_grad(args) -> dict:
  config = _controller_config(args)
  params = controller.init(jax.random.key(args.seed), config)
  tokens = controller.sample(params, jax.random.key(args.seed + 1),
                             args.score_cells, config=config).tokens
  advantage = jax.random.normal(jax.random.key(args.seed + 2),
                                (args.score_cells,))

  def grad_of(score):
    return jax.jit(jax.grad(lambda p: -jnp.mean(
        jnp.sum(score(p, tokens, config=config).log_probs, -1) * advantage)))

  fns = {"score_grad": grad_of(controller.score),
         "score_grad_reference": grad_of(reference_score)}
  for fn in fns.values():
    jax.block_until_ready(fn(params))
  return _alternate(fns, lambda r: (params,), args.repeats)


def time_controller_step(args) -> dict:
  _, config = experiments.get_config(
      "enas_probe" + (f":{args.preset}" if args.preset else ""))
  corpus = data.load_corpus(config.data.dir)
  setup = settings.make_setup(config, corpus.vocab_size)
  valid_data = jnp.asarray(
      data.batchify(corpus.valid, setup.shared.batch_size))
  state = steps.init_state(setup, args.seed)
  for _ in range(args.warmup):  # The first one compiles.
    state, metrics = steps.controller_step(state, valid_data, setup=setup)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = steps.controller_step(state, valid_data, setup=setup)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  out = _quartiles(times)
  out.update(model_hidden=setup.model.hidden_size,
             batch=setup.shared.batch_size,
             samples_per_step=setup.reinforce.samples_per_step)
  return out


def run(args) -> dict:
  start = time.perf_counter()
  sampling, match = time_sampling(args)
  scoring = time_score_grad(args)
  middle = time.perf_counter()
  step = time_controller_step(args)
  print(f"controller: {middle - start:.1f}s sampling and scoring, "
        f"{time.perf_counter() - middle:.1f}s the step", file=sys.stderr)
  return {
      "num_cells": args.num_cells, "score_cells": args.score_cells,
      "nodes": args.nodes, "hidden": args.hidden,
      "repeats": args.repeats, "backend": jax.default_backend(),
      "allocator_tuned": runtime.allocator_tuned(),
      "tokens_match": match,
      "sample_1000_ms": sampling["sample"]["median"],
      "sample_1000_ms_reference": sampling["sample_reference"]["median"],
      "sample_speedup": (sampling["sample_reference"]["median"]
                         / sampling["sample"]["median"]),
      "score_grad_ms": scoring["score_grad"]["median"],
      "score_grad_ms_reference": scoring["score_grad_reference"]["median"],
      "step_ms": step["median"],
      "timings_ms": {**sampling, **scoring, "step": step},
  }


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num-cells", type=int, default=1000,
                      help="cells per sample call")
  parser.add_argument("--nodes", type=int, default=12,
                      help="controller's nodes, for sample and score")
  parser.add_argument("--hidden", type=int, default=100,
                      help="controller's hidden size, for sample and score")
  parser.add_argument("--score-cells", type=int, default=100,
                      help="cells per scored batch (the replay loss's size)")
  parser.add_argument("--repeats", type=int, default=30,
                      help="timed calls of each sampler and scorer")
  parser.add_argument("--steps", type=int, default=10,
                      help="timed controller steps")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed controller steps first")
  parser.add_argument("--preset", default="",
                      help="enas_probe preset for the step ('' = CPU "
                      "defaults, 'smoke' = tiny)")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None):
  result = run(parse_args(argv))
  print(f"{'ms':>22} | {'median':>8} {'q1':>8} {'q3':>8} {'min':>8}",
        file=sys.stderr)
  for name, t in result["timings_ms"].items():
    print(f"{name:>22} | {t['median']:>8.2f} {t['q1']:>8.2f} {t['q3']:>8.2f} "
          f"{t['min']:>8.2f}", file=sys.stderr)
  print(f"{'sample speed-up':>22} | {result['sample_speedup']:>8.2f}x "
        f"(tokens match: {result['tokens_match']})", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  runtime.reexec_with_tuned_allocator()  # As launch.py does.
  main()
