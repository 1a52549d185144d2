"""The real search loop against a bare Python loop of the same jitted steps.

    python -m benchmarks.search_loop [--hidden 128 --steps 40 --ctrl-steps 100]

The *loop* is ``train.train_and_evaluate`` on the bundled PTB at the CPU
default sizes (hidden 128, batch 32), two epochs in a temporary directory,
with everything it does: fused windows of ``log_every`` steps
(``steps.run_window``), per-step finiteness checks and logs, progress bars
and checkpoints at the phase ends. Its rate is the second epoch's
(compiled) steps per second, from the phase's wall time. The *bare* loop
calls the same jitted ``steps.shared_step`` / ``steps.controller_step`` in
a Python loop, reading nothing back until the end. Both run in this
process, alternated ``--repeats`` times; the medians' ratio
``loop_over_bare`` is >= 1 when the loop's fused windows save more per-step
dispatch and host reads than its logs and checks cost.

Prints a table to stderr and one JSON object as the last stdout line, with
``shared_loop_over_bare`` and ``ctrl_loop_over_bare``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

import experiments
from experiments import common
from nas_jax import data
from nas_jax import runtime
from nas_jax import settings
from nas_jax import steps
from nas_jax import train


def _config(args):
  return common.apply_overrides(experiments.get_config("enas_probe")[1], {
      "model.hidden_size": args.hidden, "train.batch_size": args.batch,
      "train.epochs": 2, "train.steps_per_epoch": args.steps,
      "controller.steps_per_epoch": args.ctrl_steps,
      "log_every": args.log_every, "checkpoint_every": args.log_every * 1000,
      "derive.num_cells": 2, "derive.chunk_size": 2,
      "derive.every_epochs": 1000, "eval.max_windows": 1})


def _phase_seconds(workdir, epoch, counter):
  """Wall time of ``epoch``'s phase counted by ``counter`` after its first
  log window: from its first to its last row of metrics.jsonl."""
  with open(f"{workdir}/metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  mine = [r["time"] for r in rows
          if r["epoch"] == epoch and counter in r and "valid/ppl" not in r
          and "test/ppl" not in r]
  return mine[-1] - mine[0]


def _loop(config):
  """Second-epoch shared and controller steps per second of the real loop."""
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    # Timed from the end of each phase's first window to its last.
    shared = config.train.steps_per_epoch - config.log_every
    ctrl = config.controller.steps_per_epoch - config.log_every
    # Epochs are numbered from 1 in the logs: 2 is the second.
    return (shared / _phase_seconds(workdir, 2, "shared_step"),
            ctrl / _phase_seconds(workdir, 2, "ctrl_step"))


def _bare(setup, train_data, valid_data, args):
  """Steps per second of the jitted steps in a plain Python loop."""
  state = steps.init_state(setup, 0)
  rates = []
  for step, data_2d, n in ((steps.shared_step, train_data, args.steps),
                           (steps.controller_step, valid_data,
                            args.ctrl_steps)):
    state, m = step(state, data_2d, setup=setup)  # Compiled already or now.
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(n - args.log_every):
      state, m = step(state, data_2d, setup=setup)
    jax.block_until_ready((state, m))
    rates.append((n - args.log_every) / (time.perf_counter() - start))
  return tuple(rates)


def run(args) -> dict:
  config = _config(args)
  corpus = data.load_corpus(config.data.dir)
  setup = settings.make_setup(config, corpus.vocab_size)
  train_data = jnp.asarray(data.batchify(corpus.train, setup.shared.batch_size))
  valid_data = jnp.asarray(data.batchify(corpus.valid, setup.shared.batch_size))
  loops, bares = [], []
  for r in range(args.repeats):
    print(f"search_loop: repeat {r + 1}/{args.repeats}", file=sys.stderr,
          flush=True)
    loops.append(_loop(config))
    bares.append(_bare(setup, train_data, valid_data, args))
  med = lambda rows, i: statistics.median(row[i] for row in rows)
  out = {"hidden": args.hidden, "batch": args.batch, "steps": args.steps,
         "ctrl_steps": args.ctrl_steps, "log_every": args.log_every,
         "repeats": args.repeats, "backend": jax.default_backend(),
         "allocator_tuned": runtime.allocator_tuned(),
         "loop_shared_steps_per_s": med(loops, 0),
         "bare_shared_steps_per_s": med(bares, 0),
         "loop_ctrl_steps_per_s": med(loops, 1),
         "bare_ctrl_steps_per_s": med(bares, 1),
         "loop_runs": [list(r) for r in loops],
         "bare_runs": [list(r) for r in bares]}
  out["shared_loop_over_bare"] = (out["loop_shared_steps_per_s"]
                                  / out["bare_shared_steps_per_s"])
  out["ctrl_loop_over_bare"] = (out["loop_ctrl_steps_per_s"]
                                / out["bare_ctrl_steps_per_s"])
  return out


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--hidden", type=int, default=128)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=40,
                      help="shared steps per epoch (two epochs)")
  parser.add_argument("--ctrl-steps", type=int, default=100,
                      help="controller steps per epoch")
  parser.add_argument("--log-every", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  return parser.parse_args(argv)


def main(argv=None):
  result = run(parse_args(argv))
  print(f"{'steps/s':>10} | {'loop':>8} {'bare':>8} {'ratio':>6}",
        file=sys.stderr)
  for name in ("shared", "ctrl"):
    print(f"{name:>10} | {result[f'loop_{name}_steps_per_s']:>8.2f} "
          f"{result[f'bare_{name}_steps_per_s']:>8.2f} "
          f"{result[f'{name}_loop_over_bare']:>6.2f}", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  runtime.reexec_with_tuned_allocator()  # As launch.py does.
  main()
