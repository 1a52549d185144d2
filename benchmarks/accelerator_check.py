"""One-shot accelerator check: speeds at the paper sizes, in minutes.

    python -m benchmarks.accelerator_check            # real sizes, one GPU
    python -m benchmarks.accelerator_check --tiny     # ~1 minute on a CPU

Meant to run in under 8 minutes on one GPU; prints progress to stderr and,
as the last stdout line, one JSON object. In order (each step's programs
compiled once, then reused):

1. **Device**: ``device_kind``, ``device_count``, ``platform``,
   ``jax_version``, ``activation_form`` (``switch`` on a CPU, ``select``
   elsewhere: ``supernet.activation``).
2. **Paper size** (required): ``steps.run_window`` of ``--window`` fused
   ``steps.shared_step``s, then of as many ``steps.controller_step``s, on the
   ``enas_probe:paper`` setup (hidden ``--paper_hidden`` 1000, batch 64, BPTT
   35, 12 nodes, controller hidden 100, one cell per step); one untimed
   window compiles, then the median of ``--repeats`` windows. Timing inputs
   are *random token ids* of the PTB vocabulary size (``--vocab`` 10,000), so
   the timings need no dataset (a step's cost does not depend on the text).
   ``supernet_tokens_per_s[H]`` is ``batch * bptt`` per shared step;
   ``controller_step_ms[H]`` includes scoring the sampled cell with the
   supernet at hidden H.
3. **Real search steps** (required): ``experiments.get_config(
   "enas_probe:paper")`` (with the size flags applied by
   ``common.apply_overrides`` when they differ from the paper's), the
   bundled PTB (``data.load_corpus``, ``data.batchify``; the first rows, as
   many as the timing inputs have, so the programs of step 2 are reused),
   a fresh ``steps.init_state`` and one window of shared and one of
   controller steps. ``real_steps_finite`` says whether every loss, reward and
   gradient norm is finite (if not, the command exits with status 1 after
   printing the JSON); ``real_steps_losses`` lists the losses.
4. Optional, each skipped (and listed in ``skipped``) when it would end
   past ``--budget_s`` seconds (predicted from the last comparable step's
   wall time; checked between steps, so one step may overrun it):
   sampling of ``--sample_cells`` cells by ``controller.sample``
   (``sample_1000_cells_ms``, the median, whatever the count); the windows
   of step 2 at hidden ``--hidden`` 256 (once only when it equals
   ``--paper_hidden``); stacked seeds (``seeds.run_windows``, the seeds'
   states ``vmap``-ed) at hidden ``--hidden`` for each S of ``--seeds``
   (1 4 16): ``stacked_seed_steps_per_s[S]`` holds shared and controller
   seed-steps/s, or a string when S ran out of device memory (larger S are
   then not tried).

``--compute_dtype bfloat16`` runs every measurement with the supernet's
matmuls in bfloat16 (``model.compute_dtype``); run it twice to compare.

``compile_count`` counts XLA compilations (JAX's backend-compile event, a
program loaded from the persistent compilation cache included; those are
also counted in ``compile_cache_hits``); ``sections`` gives each step's wall
time, compilations and compile seconds. ``peak_memory_bytes`` is the
device's ``memory_stats()["peak_bytes_in_use"]`` at the end, ``null`` where
the backend reports none (the CPU). Estimates (``estimated_*`` keys) are
arithmetic on the paper-size medians: an epoch is ``train.steps_per_epoch``
(400) shared plus ``controller.steps_per_epoch`` (2000) controller steps of
the paper preset, the search ``train.epochs`` (150) of them -- derive,
evaluation, checkpoints, logs and compilation excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import monitoring

from benchmarks import timing
import experiments
from experiments import common
from nas_jax import controller
from nas_jax import data
from nas_jax import runtime
from nas_jax import seeds as seeds_lib
from nas_jax import settings
from nas_jax import steps
from nas_jax import supernet

PAPER = "enas_probe:paper"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

# --tiny: sizes for the CPU test. The vocabulary stays PTB's, so the real
# steps reuse the compiled timing programs there too. One hidden size and
# S = 1 keep it to the fewest compilations (XLA's compiles are most of its
# time: about 35 CPU-seconds on the 2-core development machine).
TINY = {"paper_hidden": 8, "hidden": 8, "batch": 2, "bptt": 4, "nodes": 3,
        "ctrl_hidden": 8, "seeds": [1], "window": 2, "repeats": 1,
        "sample_cells": 16}


class Recorder:
  """Wall time, XLA compilations and compile seconds per named section."""

  def __init__(self):
    self.sections: dict[str, dict] = {}
    self.compiles = 0
    self.compile_s = 0.0
    self.cache_hits = 0
    self._current = None

  def _on_duration(self, event, duration, **kwargs):
    del kwargs
    if event == COMPILE_EVENT:
      self.compiles += 1
      self.compile_s += duration
      if self._current is not None:
        self._current["compiles"] += 1
        self._current["compile_s"] += duration

  def _on_event(self, event, **kwargs):
    del kwargs
    if event == CACHE_HIT_EVENT:
      self.cache_hits += 1

  @contextlib.contextmanager
  def listening(self):
    monitoring.register_event_duration_secs_listener(self._on_duration)
    monitoring.register_event_listener(self._on_event)
    try:
      yield self
    finally:
      monitoring.unregister_event_duration_listener(self._on_duration)
      monitoring.unregister_event_listener(self._on_event)

  @contextlib.contextmanager
  def section(self, name: str):
    self._current = {"wall_s": 0.0, "compiles": 0, "compile_s": 0.0}
    self.sections[name] = self._current
    start = time.perf_counter()
    print(f"accelerator_check: {name} ...", file=sys.stderr, flush=True)
    try:
      yield self._current
    finally:
      self._current["wall_s"] = time.perf_counter() - start
      print(f"accelerator_check: {name} done in "
            f"{self._current['wall_s']:.1f}s "
            f"({self._current['compiles']} compilations)", file=sys.stderr,
            flush=True)
      self._current = None


def is_oom(error: BaseException) -> bool:
  """Whether ``error`` is XLA running out of device memory."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def guarded(fn, *args, **kwargs):
  """``fn(...)``, or ``"out of memory: <first line>"`` when it runs out of
  device memory (any other error propagates)."""
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    if not is_oom(e):
      raise
    return "out of memory: " + str(e).strip().splitlines()[0][:300]


def paper_config(args, hidden: int):
  """The ``enas_probe:paper`` config with the size flags that differ."""
  config = experiments.get_config(PAPER)[1]
  wanted = {"model.hidden_size": hidden, "model.num_nodes": args.nodes,
            "controller.hidden_size": args.ctrl_hidden,
            "train.batch_size": args.batch, "train.bptt": args.bptt,
            "model.compute_dtype": args.compute_dtype}
  changed = {}
  for dotted, value in wanted.items():
    section, key = dotted.split(".")
    if config[section][key] != value:
      changed[dotted] = value
  return common.apply_overrides(config, changed), changed


def timing_rows(args) -> int:
  """Rows of the ``[rows, batch]`` inputs: a window of BPTT windows and one
  more, so the pointers move through fresh rows before they wrap."""
  return args.bptt * (args.window + 1) + 1


def random_tokens(args, seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(0, args.vocab, (timing_rows(args), args.batch),
                                  dtype=np.int32))


def time_windows(setup, tokens, args, window_fn=steps.run_window,
                 init=None) -> dict:
  """Median seconds of a shared and of a controller window (fused steps)."""
  state = init() if init is not None else steps.init_state(setup, 0)
  jax.block_until_ready(state)
  run = lambda step: lambda st: window_fn(st, tokens, step=step,
                                          length=args.window, setup=setup)
  state, shared_s = timing.median_time(run(steps.shared_step), state, args.repeats)
  state, ctrl_s = timing.median_time(run(steps.controller_step), state, args.repeats)
  del state
  return {"shared_window_s": shared_s, "ctrl_window_s": ctrl_s}


def single_rates(setup, tokens, args) -> dict:
  t = time_windows(setup, tokens, args)
  shared_step_s = t["shared_window_s"] / args.window
  ctrl_step_s = t["ctrl_window_s"] / args.window
  return {"tokens_per_s": args.batch * args.bptt / shared_step_s,
          "shared_step_ms": 1e3 * shared_step_s,
          "controller_step_ms": 1e3 * ctrl_step_s}


def stacked_rates(setup, tokens, args, s: int) -> dict:
  """Seed-steps/s of S stacked seeds (``seeds.run_windows``)."""
  t = time_windows(setup, tokens, args, window_fn=seeds_lib.run_windows,
                   init=lambda: seeds_lib.init_states(setup, list(range(s))))
  n = s * args.window
  return {"shared_seed_steps_per_s": n / t["shared_window_s"],
          "controller_seed_steps_per_s": n / t["ctrl_window_s"]}


def real_steps(args) -> dict:
  """One window of shared and one of controller steps of the paper config
  on the bundled PTB; every loss, reward and gradient norm checked."""
  config, changed = paper_config(args, args.paper_hidden)
  corpus = data.load_corpus(config.data.dir,
                            verify=config.data.verify_checksums)
  setup = settings.make_setup(config, corpus.vocab_size)
  rows = timing_rows(args)  # The timing inputs' shape: the same programs.
  train_2d = jnp.asarray(data.batchify(corpus.train, setup.shared.batch_size)[:rows])
  valid_2d = jnp.asarray(data.batchify(corpus.valid, setup.shared.batch_size)[:rows])
  state = steps.init_state(setup, config.seed)
  state, shared = steps.run_window(state, train_2d, step=steps.shared_step,
                                   length=args.window, setup=setup)
  state, ctrl = steps.run_window(state, valid_2d, step=steps.controller_step,
                                 length=args.window, setup=setup)
  shared, ctrl = jax.device_get((shared, ctrl))
  checked = [shared["loss"], shared["grad_norm"], ctrl["loss"], ctrl["reward"],
             ctrl["log_ppl"]]
  finite = bool(all(np.all(np.isfinite(np.asarray(x))) for x in checked))
  return {"real_steps_finite": finite,
          "real_steps_losses": {"shared": [float(x) for x in shared["loss"]],
                                "controller": [float(x) for x in ctrl["loss"]]},
          "real_steps_log_ppl": [float(x) for x in ctrl["log_ppl"]],
          "real_steps_vocab": corpus.vocab_size,
          "real_steps_overrides": changed}


def sample_ms(args) -> float:
  """Median ms of ``controller.sample`` of ``--sample_cells`` cells."""
  config = controller.ControllerConfig(num_nodes=args.nodes,
                                       hidden_size=args.ctrl_hidden)
  params = controller.init(jax.random.key(0), config)
  fn = lambda key: controller.sample(params, key, args.sample_cells,
                                     config=config).tokens
  jax.block_until_ready(fn(jax.random.key(1)))  # Compiles.
  times = []
  for r in range(max(args.repeats, 3)):
    key = jax.random.key(2 + r)
    start = time.perf_counter()
    jax.block_until_ready(fn(key))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def device_info() -> dict:
  device = jax.devices()[0]
  return {"device_kind": device.device_kind, "device_count": jax.device_count(),
          "platform": device.platform, "backend": jax.default_backend(),
          "jax_version": jax.__version__,
          "allocator_tuned": runtime.allocator_tuned(),
          "activation_form": ("select" if supernet.selects_activation()
                              else "switch")}


def memory() -> dict:
  """The first device's peak and limit in bytes; ``None`` where the backend
  does not report them (never made up)."""
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  (unsupported backend)
    stats = None
  stats = stats or {}
  return {"peak_memory_bytes": stats.get("peak_bytes_in_use"),
          "memory_bytes_limit": stats.get("bytes_limit")}


def estimates(paper_step: dict) -> dict:
  """An epoch and a search of the paper schedule from the measured medians."""
  config = experiments.get_config(PAPER)[1]
  shared_n = config.train.steps_per_epoch
  ctrl_n = config.controller.steps_per_epoch
  epoch_s = (shared_n * paper_step["shared_step_ms"]
             + ctrl_n * paper_step["controller_step_ms"]) / 1e3
  return {"estimated_paper_epoch_s": epoch_s,
          "estimated_full_search_h_excl_derive": config.train.epochs * epoch_s / 3600,
          "estimate_basis": {"shared_steps_per_epoch": shared_n,
                             "controller_steps_per_epoch": ctrl_n,
                             "epochs": config.train.epochs}}


def _jsonable(value):
  """Non-finite floats as strings ("nan", "inf"), so the line stays JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return repr(value)
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


class Budget:
  """``--budget_s``: which optional measurements still fit."""

  def __init__(self, budget_s: float, clock=time.perf_counter):
    self.budget_s = budget_s
    self.clock = clock
    self.start = clock()
    self.skipped: list[str] = []

  def elapsed(self) -> float:
    return self.clock() - self.start

  def due(self, name: str, predicted_s: float = 0.0) -> bool:
    """Whether ``name``, predicted to take ``predicted_s``, ends within the
    budget; if not, it is listed in :attr:`skipped`."""
    if self.elapsed() + predicted_s <= self.budget_s:
      return True
    self.skipped.append(name)
    print(f"accelerator_check: skipping {name} (budget {self.budget_s:g}s, "
          f"{self.elapsed():.0f}s used, ~{predicted_s:.0f}s predicted)",
          file=sys.stderr, flush=True)
    return False


def stacked_all(seed_counts, measure, budget: Budget, rec: Recorder,
                predicted_s: float = 0.0) -> dict:
  """``measure(S)`` for each S: its rates, or a string when it ran out of
  memory (and for every later S: not tried). Each S is predicted to take as
  long as the one before (the first: ``predicted_s``)."""
  rows, oom = {}, None
  for s in seed_counts:
    name = f"stacked_s{s}"
    if oom is not None:  # Larger S would not fit either.
      rows[str(s)] = f"not tried: S={oom} ran out of memory"
      continue
    if not budget.due(name, predicted_s):
      continue
    start = budget.elapsed()
    with rec.section(name):
      result = guarded(measure, s)
    rows[str(s)] = result
    predicted_s = budget.elapsed() - start
    if isinstance(result, str):
      oom = s
      print(f"accelerator_check: S={s}: {result}", file=sys.stderr, flush=True)
    else:
      print(f"accelerator_check: S={s}: "
            f"{result['shared_seed_steps_per_s']:.1f} shared, "
            f"{result['controller_seed_steps_per_s']:.1f} controller "
            "seed-steps/s", file=sys.stderr, flush=True)
  return rows


def run(args) -> dict:
  budget = Budget(args.budget_s)
  runtime.enable_compilation_cache(args.compilation_cache)
  out = {**device_info(),
         "sizes": {"paper_hidden": args.paper_hidden, "hidden": args.hidden,
                   "batch": args.batch, "bptt": args.bptt, "nodes": args.nodes,
                   "vocab": args.vocab, "ctrl_hidden": args.ctrl_hidden,
                   "window": args.window, "repeats": args.repeats,
                   "seeds": args.seeds, "sample_cells": args.sample_cells,
                   "compute_dtype": args.compute_dtype},
         "budget_s": args.budget_s,
         "supernet_tokens_per_s": {}, "shared_step_ms": {},
         "controller_step_ms": {}, "sample_1000_cells_ms": None,
         "stacked_seed_steps_per_s": {}}
  rec = Recorder()
  tokens = random_tokens(args)

  def record_single(hidden):
    setup = settings.make_setup(paper_config(args, hidden)[0], args.vocab)
    row = single_rates(setup, tokens, args)
    out["supernet_tokens_per_s"][str(hidden)] = row["tokens_per_s"]
    out["shared_step_ms"][str(hidden)] = row["shared_step_ms"]
    out["controller_step_ms"][str(hidden)] = row["controller_step_ms"]
    print(f"accelerator_check: hidden {hidden}: {row['tokens_per_s']:.0f} "
          f"tokens/s, controller step {row['controller_step_ms']:.2f} ms",
          file=sys.stderr, flush=True)
    return row

  with rec.listening():
    with rec.section("paper") as section:
      paper = record_single(args.paper_hidden)
    predicted_s = section["wall_s"]  # A size's compile and timing.
    out["paper_shared_step_ms"] = paper["shared_step_ms"]
    out["paper_controller_step_ms"] = paper["controller_step_ms"]
    out.update(estimates(paper))
    with rec.section("real_steps"):
      out.update(real_steps(args))
    if budget.due("sample_cells"):
      with rec.section("sample_cells"):
        out["sample_1000_cells_ms"] = sample_ms(args)
    name = f"hidden_{args.hidden}"
    if args.hidden != args.paper_hidden and budget.due(name, predicted_s):
      with rec.section(name) as section:
        record_single(args.hidden)
      predicted_s = section["wall_s"]
    setup = settings.make_setup(paper_config(args, args.hidden)[0], args.vocab)
    out["stacked_seed_steps_per_s"] = stacked_all(
        args.seeds, lambda s: stacked_rates(setup, tokens, args, s), budget,
        rec, predicted_s)
  out.update(memory())
  out.update(compile_count=rec.compiles, compile_s=rec.compile_s,
             compile_cache_hits=rec.cache_hits, sections=rec.sections,
             skipped=budget.skipped, total_wall_s=budget.elapsed())
  return _jsonable(out)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--tiny", action="store_true",
                      help="tiny sizes for a CPU test (explicit flags still "
                      f"win): {TINY}")
  parser.add_argument("--paper_hidden", type=int, default=None,
                      help="supernet hidden size of the paper-size step and "
                      "the real steps (default 1000)")
  parser.add_argument("--hidden", type=int, default=None,
                      help="the second hidden size, also the stacked seeds' "
                      "(default 256)")
  parser.add_argument("--batch", type=int, default=None, help="default 64")
  parser.add_argument("--bptt", type=int, default=None, help="default 35")
  parser.add_argument("--nodes", type=int, default=None, help="default 12")
  parser.add_argument("--ctrl_hidden", type=int, default=None,
                      help="controller hidden size (default 100)")
  parser.add_argument("--vocab", type=int, default=10_000,
                      help="vocabulary of the random timing tokens (PTB's)")
  parser.add_argument("--seeds", type=int, nargs="+", default=None,
                      help="stacked seed counts S (default 1 4 16)")
  parser.add_argument("--window", type=int, default=None,
                      help="steps per fused window (default 20)")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed windows per measurement after one untimed "
                      "(default 3)")
  parser.add_argument("--sample_cells", type=int, default=None,
                      help="cells per controller.sample call (default 1000)")
  parser.add_argument("--compute_dtype", default="float32",
                      choices=("float32", "bfloat16"),
                      help="the supernet's matmul dtype (model.compute_dtype)")
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="seconds after which optional measurements are "
                      "skipped (checked between measurements)")
  parser.add_argument("--compilation_cache", default="",
                      help="persistent compilation cache folder ('' leaves "
                      "JAX's setting)")
  args = parser.parse_args(argv)
  defaults = {"paper_hidden": 1000, "hidden": 256, "batch": 64, "bptt": 35,
              "nodes": 12, "ctrl_hidden": 100, "seeds": [1, 4, 16],
              "window": 20, "repeats": 3, "sample_cells": 1000}
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, TINY[key] if args.tiny else value)
  if min(args.seeds) < 1 or args.window < 1 or args.repeats < 1:
    parser.error("--seeds, --window and --repeats must be >= 1")
  return args


def main(argv=None):
  result = run(parse_args(argv))
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  runtime.reexec_with_tuned_allocator()  # As launch.py does.
  sys.exit(0 if main()["real_steps_finite"] else 1)
