"""Throughput of S seeds stacked in one program vs S separate runs.

    python -m benchmarks.stacked_seeds --seeds 1 4 8 --hidden 64 128

For each hidden size and S: the S states of ``nas_jax.seeds`` advanced by
fused, ``vmap``-ed windows (``seeds.run_windows``: ``--window`` shared
steps, then as many controller steps, one program each), against the same S
seeds advanced one at a time by the single-run windows
(``steps.run_window``, what S separate runs do, one after another in this
process so they do not compete for the cores). Sizes are the ``enas_probe``
CPU defaults (12 nodes, batch 32, BPTT 35) on random tokens of a
10,000-word vocabulary. Rates are seed-steps per second (median window
time; the first ``--warmup`` windows compile and are not timed).

The last line printed is one JSON object; ``speedup_h{H}_s{S}`` is the time
of S separate runs over the stacked time for one shared and one controller
window of every seed (> 1: stacking is faster).
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
import experiments
from experiments import common
from nas_jax import runtime
from nas_jax import seeds
from nas_jax import settings
from nas_jax import steps

def _row(setup, data, s, args) -> dict:
  window = lambda run, step: lambda st: run(st, data, step=step,
                                            length=args.window, setup=setup)
  # Stacked: one program per phase for all S seeds.
  states = seeds.init_states(setup, list(range(s)))
  timed = lambda run, step, st: timing.median_time(
      window(run, step), st, args.repeats, args.warmup)
  states, shared_s = timed(seeds.run_windows, steps.shared_step, states)
  states, ctrl_s = timed(seeds.run_windows, steps.controller_step, states)
  # Separate: each seed's own state through the single-run windows.
  sep_shared = sep_ctrl = 0.0
  for seed in range(s):
    state = steps.init_state(setup, seed)
    state, t = timed(steps.run_window, steps.shared_step, state)
    sep_shared += t
    state, t = timed(steps.run_window, steps.controller_step, state)
    sep_ctrl += t
  n = s * args.window
  return {
      "hidden": setup.model.hidden_size, "seeds": s,
      "stacked_shared_seed_steps_per_s": n / shared_s,
      "separate_shared_seed_steps_per_s": n / sep_shared,
      "stacked_ctrl_seed_steps_per_s": n / ctrl_s,
      "separate_ctrl_seed_steps_per_s": n / sep_ctrl,
      "shared_speedup": sep_shared / shared_s,
      "ctrl_speedup": sep_ctrl / ctrl_s,
      "speedup": (sep_shared + sep_ctrl) / (shared_s + ctrl_s),
  }


def run(args) -> dict:
  rng = np.random.default_rng(0)
  data = jnp.asarray(rng.integers(0, args.vocab, (args.bptt * 4 + 1, args.batch),
                                  dtype=np.int32))
  rows = []
  for hidden in args.hidden:
    config = common.apply_overrides(experiments.get_config("enas_probe")[1], {
        "model.hidden_size": hidden, "model.num_nodes": args.nodes,
        "train.batch_size": args.batch, "train.bptt": args.bptt})
    setup = settings.make_setup(config, args.vocab)
    for s in args.seeds:
      rows.append(_row(setup, data, s, args))
      print(f"stacked_seeds: hidden {hidden}, S={s}: speedup "
            f"{rows[-1]['speedup']:.3f}", file=sys.stderr, flush=True)
  out = {"nodes": args.nodes, "batch": args.batch, "bptt": args.bptt,
         "vocab": args.vocab, "window": args.window, "repeats": args.repeats,
         "backend": jax.default_backend(),
         "allocator_tuned": runtime.allocator_tuned()}
  out.update({f"speedup_h{r['hidden']}_s{r['seeds']}": r["speedup"]
              for r in rows})
  out["rows"] = rows
  return out


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8])
  parser.add_argument("--hidden", type=int, nargs="+", default=[64, 128])
  parser.add_argument("--nodes", type=int, default=12)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--bptt", type=int, default=35)
  parser.add_argument("--vocab", type=int, default=10_000)
  parser.add_argument("--window", type=int, default=5,
                      help="steps per fused window")
  parser.add_argument("--repeats", type=int, default=3,
                      help="timed windows per phase")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed windows first (the first one compiles)")
  return parser.parse_args(argv)


def main(argv=None):
  result = run(parse_args(argv))
  print(f"{'H':>4} {'S':>3} | {'shared: stacked':>16} {'separate':>9} "
        f"{'x':>5} | {'ctrl: stacked':>14} {'separate':>9} {'x':>5} | "
        f"{'x both':>6}   (seed-steps/s)", file=sys.stderr)
  for r in result["rows"]:
    print(f"{r['hidden']:>4} {r['seeds']:>3} | "
          f"{r['stacked_shared_seed_steps_per_s']:>16.2f} "
          f"{r['separate_shared_seed_steps_per_s']:>9.2f} "
          f"{r['shared_speedup']:>5.2f} | "
          f"{r['stacked_ctrl_seed_steps_per_s']:>14.2f} "
          f"{r['separate_ctrl_seed_steps_per_s']:>9.2f} "
          f"{r['ctrl_speedup']:>5.2f} | {r['speedup']:>6.2f}", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  runtime.reexec_with_tuned_allocator()  # As launch.py does.
  main()
