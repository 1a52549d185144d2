"""Throughput of S seeds stacked in one program vs S separate runs.

    python -m benchmarks.stacked_seeds --seeds 1 2 4

For each S: the S states of ``nas_jax.seeds`` advanced by the ``vmap``-ed
shared and controller steps (one compiled program each), against the same S
seeds advanced one at a time by the single-run steps (what S separate runs
do, sequentially in this process so they do not compete for the cores).
Sizes are the ``enas_probe`` CPU defaults (hidden 128, 12 nodes, batch 32,
BPTT 35) on random tokens of a 10,000-word vocabulary; ``--hidden`` etc.
change them. Rates are seed-steps per second (median step time; the first
``--warmup`` calls compile and are not timed). The last line printed is one
JSON object.
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

import experiments
from experiments import common
from nas_jax import runtime
from nas_jax import seeds
from nas_jax import settings
from nas_jax import steps


def _time(fn, state, steps, warmup):
  for _ in range(warmup):
    state, m = fn(state)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, m = fn(state)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  return state, statistics.median(times)


def run(args) -> dict:
  config = common.apply_overrides(experiments.get_config("enas_probe")[1], {
      "model.hidden_size": args.hidden, "model.num_nodes": args.nodes,
      "train.batch_size": args.batch, "train.bptt": args.bptt})
  setup = settings.make_setup(config, args.vocab)
  rng = np.random.default_rng(0)
  data = jnp.asarray(rng.integers(0, args.vocab, (args.bptt * 4 + 1, args.batch),
                                  dtype=np.int32))
  rows = []
  for s in args.seeds:
    ids = list(range(s))
    # Stacked: one program for all S seeds.
    states = seeds.init_states(setup, ids)
    states, shared_s = _time(
        lambda st: seeds.shared_steps(st, data, setup=setup), states,
        args.steps, args.warmup)
    states, ctrl_s = _time(
        lambda st: seeds.controller_steps(st, data, setup=setup), states,
        args.ctrl_steps, args.warmup)
    # Separate: each seed's own state through the single-run steps.
    sep_shared, sep_ctrl = 0.0, 0.0
    for seed in ids:
      state = steps.init_state(setup, seed)
      state, t = _time(lambda st: steps.shared_step(st, data, setup=setup),
                       state, args.steps, args.warmup)
      sep_shared += t
      state, t = _time(lambda st: steps.controller_step(st, data, setup=setup),
                       state, args.ctrl_steps, args.warmup)
      sep_ctrl += t
    rows.append({
        "seeds": s,
        "stacked_shared_seed_steps_per_s": s / shared_s,
        "separate_shared_seed_steps_per_s": s / sep_shared,
        "stacked_ctrl_seed_steps_per_s": s / ctrl_s,
        "separate_ctrl_seed_steps_per_s": s / sep_ctrl,
        "shared_speedup": sep_shared / shared_s,
        "ctrl_speedup": sep_ctrl / ctrl_s,
    })
  return {"hidden": args.hidden, "nodes": args.nodes, "batch": args.batch,
          "bptt": args.bptt, "vocab": args.vocab, "steps": args.steps,
          "ctrl_steps": args.ctrl_steps, "backend": jax.default_backend(),
          "rows": rows}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--nodes", type=int, default=12)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--bptt", type=int, default=35)
  parser.add_argument("--vocab", type=int, default=10_000)
  parser.add_argument("--steps", type=int, default=5, help="timed shared steps")
  parser.add_argument("--ctrl-steps", type=int, default=10,
                      help="timed controller steps")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed calls first (the first one compiles)")
  return parser.parse_args(argv)


def main(argv=None):
  result = run(parse_args(argv))
  print(f"{'S':>3} | {'shared: stacked':>16} {'separate':>9} {'x':>5} | "
        f"{'ctrl: stacked':>14} {'separate':>9} {'x':>5}   (seed-steps/s)",
        file=sys.stderr)
  for r in result["rows"]:
    print(f"{r['seeds']:>3} | {r['stacked_shared_seed_steps_per_s']:>16.2f} "
          f"{r['separate_shared_seed_steps_per_s']:>9.2f} "
          f"{r['shared_speedup']:>5.2f} | "
          f"{r['stacked_ctrl_seed_steps_per_s']:>14.2f} "
          f"{r['separate_ctrl_seed_steps_per_s']:>9.2f} "
          f"{r['ctrl_speedup']:>5.2f}", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  runtime.reexec_with_tuned_allocator()  # As launch.py does.
  main()
