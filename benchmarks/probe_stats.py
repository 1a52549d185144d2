"""Wall time of the probe's statistics on synthetic data of the paper's size.

    python -m benchmarks.probe_stats --num-cells 1000

Builds probe data like :func:`nas_jax.probe_sampling.collect` returns (both
arms): ``K`` cells drawn uniformly over the ``--nodes``-node search space with
NumPy, carries ``h`` and ``c`` standard normal ``[K, --carry-dim]``,
shared-weight perplexities log-normal around 300 with ``--num-inf`` of them
``inf`` (overflowed), and random per-step entropies. The settings are the
``probe`` section of the ``paper`` preset (``experiments.probe``), with
``--num-cells``, ``--num-permutations``, ``--num-bootstrap`` and
``--ged-max-pairs`` overriding it. It then runs
:func:`nas_jax.analysis.probe_analysis.analyse` once (report and figures are
not written).

Timing: the parts are measured by wrapping module functions for the duration
of the run (the code under test is not changed):

* ``ged_s``: the networkx edit distances (``edit_distance.topological_ged``
  and ``labelled_ged``, ``--ged-max-pairs`` pairs per arm; ``--stub-ged``
  replaces them by the aligned edit distance at the same pairs, for quick
  runs: the statistics then see the same number of subset pairs);
* ``graph_metrics_s``: the vectorised graph metrics and cell properties;
* ``mantel_s``, ``bootstrap_s``: the Mantel null and cell-bootstrap
  distributions (the functions of :data:`PARTS` that exist: the per-call
  ones of :mod:`nas_jax.analysis.resampling`, the batched ones of
  ``mantel_batch`` and ``bootstrap_batch``; the recency tests' partial
  Mantel nulls are ``mantel_batch``'s too);
* ``neighbours_s``, ``ridge_s``: the nearest-neighbour checks and ridge
  probes of :mod:`nas_jax.analysis.carry_probes`;
* ``analyse_s``: all of ``analyse``;
* ``total_s``: the statistics part, ``analyse_s - ged_s -
  graph_metrics_s``: distances, correlations (naive, Mantel, bootstrap, the
  permuted control), nearest neighbours, ridge probes and verdicts;
  ``other_s`` is what ``total_s`` holds beyond the four parts above.

Progress goes to stderr (every timed call longer than a second, then a
table); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import sys
import time

import numpy as np

from experiments import probe as probe_experiment
from nas_jax import search_space
from nas_jax.analysis import edit_distance
from nas_jax.analysis import graph_metrics
from nas_jax.analysis import probe_analysis

# Functions timed per part, as "module:attribute.path"; the ones missing in
# the code measured are skipped, so the benchmark runs on older and newer
# versions of the analysis.
_A = "nas_jax.analysis."
PARTS = {
    "ged_s": (_A + "edit_distance:topological_ged",
              _A + "edit_distance:labelled_ged"),
    "graph_metrics_s": (_A + "graph_metrics:pairwise_all",
                        _A + "graph_metrics:cell_properties"),
    "mantel_s": (_A + "resampling:mantel_all_pairs",
                 _A + "resampling:mantel_subset",
                 _A + "mantel_batch:AllPairsNulls.__call__",
                 _A + "mantel_batch:CellSubsetNulls.__call__",
                 _A + "mantel_batch:CarryGatherNulls.__call__",
                 _A + "mantel_batch:subset_nulls"),
    "bootstrap_s": (_A + "resampling:PairBootstrap.__call__",
                    _A + "resampling:_PairBootstrap.__call__",
                    _A + "bootstrap_batch:SharedBootstrap.__call__"),
    "neighbours_s": (_A + "carry_probes:nearest_neighbour_check",),
    "ridge_s": (_A + "carry_probes:ridge_cv",
                _A + "carry_probes:ridge_cv_many"),
}


def random_tokens(rng: np.random.Generator, num_nodes: int,
                  num: int) -> np.ndarray:
  """``int64[num, 2N-1]`` cells drawn uniformly: activation, then parent."""
  out = np.empty((num, 2 * num_nodes - 1), dtype=np.int64)
  out[:, 0::2] = rng.integers(0, search_space.NUM_ACTIVATIONS,
                              size=(num, num_nodes))
  for l in range(1, num_nodes):
    out[:, 2 * l - 1] = rng.integers(0, l, size=num)
  return out


def synthetic_raw(args) -> dict[str, np.ndarray]:
  """Probe data of both arms, shaped as ``probe_sampling.collect``'s."""
  rng = np.random.default_rng(args.seed)
  k, steps = args.num_cells, 2 * args.nodes - 1
  raw = {"checkpoint": np.asarray("synthetic"),
         "epochs_trained": np.asarray(0), "ctrl_steps": np.asarray(0)}
  for arm in probe_analysis.ARMS:
    tokens = random_tokens(rng, args.nodes, k)
    search_space.validate_tokens(tokens)
    ppl = np.exp(rng.normal(np.log(300.0), 0.5, size=k))
    ppl[rng.choice(k, size=min(args.num_inf, k), replace=False)] = np.inf
    raw |= {
        f"{arm}/tokens": tokens,
        f"{arm}/h": rng.normal(size=(k, args.carry_dim)),
        f"{arm}/c": rng.normal(size=(k, args.carry_dim)),
        f"{arm}/ppl": ppl,
    }
    for name in ("entropies", "max_prob", "random_init_entropies",
                 "random_init_max_prob"):
      raw[f"{arm}/{name}"] = rng.random((k, steps))
  return raw


def _aligned_at_pairs(cells, pairs=None, timeout=None, **kwargs):
  """Stand-in for a networkx edit distance: the aligned one at ``pairs``."""
  del timeout, kwargs
  d = graph_metrics.aligned_edit_distance(cells).astype(np.float64)
  return d[pairs[:, 0], pairs[:, 1]]


@contextlib.contextmanager
def stubbed_ged(enabled: bool):
  """With ``enabled``, the edit distances of :mod:`edit_distance` are
  :func:`_aligned_at_pairs` inside the block."""
  names = ("topological_ged", "labelled_ged") if enabled else ()
  saved = {name: getattr(edit_distance, name) for name in names}
  for name in names:
    setattr(edit_distance, name, _aligned_at_pairs)
  try:
    yield
  finally:
    for name, fn in saved.items():
      setattr(edit_distance, name, fn)


@contextlib.contextmanager
def timed_parts(totals: dict[str, float]):
  """Wraps the functions of :data:`PARTS`, adding their seconds to ``totals``
  (a call inside another call of the same part is not counted twice)."""
  saved, active = [], set()
  for part, specs in PARTS.items():
    totals[part] = 0.0
    for spec in specs:
      found = _resolve(spec)
      if found is not None:
        owner, name, fn = found
        saved.append((owner, name, fn))
        setattr(owner, name, _timer(fn, part, totals, active))
  try:
    yield totals
  finally:
    for owner, name, fn in reversed(saved):
      setattr(owner, name, fn)


def _resolve(spec: str):
  """``(owner, name, function)`` of ``"module:attr.path"``, or None."""
  module_name, path = spec.split(":")
  try:
    owner = importlib.import_module(module_name)
  except ImportError:
    return None
  *parents, name = path.split(".")
  for parent in parents:
    owner = getattr(owner, parent, None)
  fn = getattr(owner, name, None) if owner is not None else None
  return None if fn is None else (owner, name, fn)


def _timer(fn, part, totals, active):
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if part in active:
      return fn(*args, **kwargs)
    active.add(part)
    start = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      seconds = time.perf_counter() - start
      totals[part] += seconds
      active.discard(part)
      if seconds > 1.0:  # Progress: the slow calls as they finish.
        print(f"probe_stats: {fn.__qualname__} {seconds:.1f} s "
              f"({part[:-2]} so far {totals[part]:.1f} s)", file=sys.stderr)
  return wrapper


def probe_settings(args):
  """The ``paper`` preset's probe settings with the command line's sizes."""
  p = probe_experiment.get_config("paper").probe
  with p.unlocked():
    p.num_cells = args.num_cells
    p.num_permutations = args.num_permutations
    p.num_bootstrap = args.num_bootstrap
    p.ged_max_pairs = args.ged_max_pairs
    p.seed = args.seed
  return p


def run(args) -> dict:
  p = probe_settings(args)
  print(f"probe_stats: K = {args.num_cells} cells, "
        f"{args.num_permutations} permutations, {args.num_bootstrap} "
        f"resamples, {args.ged_max_pairs} edit-distance pairs", file=sys.stderr)
  raw = synthetic_raw(args)
  with stubbed_ged(args.stub_ged), timed_parts({}) as parts:
    start = time.perf_counter()
    results = probe_analysis.analyse(raw, p, "synthetic")
    analyse_s = time.perf_counter() - start
  total_s = analyse_s - parts["ged_s"] - parts["graph_metrics_s"]
  main = results["arms"]["trained"]["correlations"]["h/l2"]
  return {
      "num_cells": args.num_cells,
      "num_permutations": args.num_permutations,
      "num_bootstrap": args.num_bootstrap,
      "ged_pairs": results["ged_pairs"],
      "total_s": total_s, "analyse_s": analyse_s, **parts,
      "other_s": total_s - sum(parts[k] for k in (
          "mantel_s", "bootstrap_s", "neighbours_s", "ridge_s")),
      # A fingerprint of the numbers, to compare versions of the code.
      "main_rho": {name: main[name]["spearman"]["rho"] for name in main},
      "main_p_mantel": {name: main[name]["spearman"]["p_mantel"]
                        for name in main},
  }


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--num-cells", type=int, default=1000)
  parser.add_argument("--num-permutations", type=int, default=999)
  parser.add_argument("--num-bootstrap", type=int, default=1000)
  parser.add_argument("--ged-max-pairs", type=int, default=2000,
                      help="edit-distance pairs per arm (paper: 2000, about "
                      "25 s per arm with networkx), at least 3")
  parser.add_argument("--stub-ged", action="store_true",
                      help="replace the networkx edit distances by the "
                      "aligned edit distance at the same pairs (seconds "
                      "instead of about a minute; ged_s is then that)")
  parser.add_argument("--nodes", type=int, default=12)
  parser.add_argument("--carry-dim", type=int, default=100)
  parser.add_argument("--num-inf", type=int, default=5,
                      help="cells per arm whose ppl is inf")
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


def main(argv=None):
  result = run(parse_args(argv))
  for key in ("total_s", "mantel_s", "bootstrap_s", "neighbours_s", "ridge_s",
              "other_s", "ged_s", "graph_metrics_s", "analyse_s"):
    print(f"{key:>16}: {result[key]:9.2f}", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
