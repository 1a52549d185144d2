"""``enas_vs_random``: ENAS against random search with weight sharing.

For every seed of ``config.seeds``: one ENAS and one RS-WS search on the same
budget and data order (``WORKDIR/enas/seed_S``, ``WORKDIR/random_ws/seed_S``);
the shared-weight ppl, on the first validation window, of ``density_cells``
cells from the final ENAS controller under the ENAS supernet and of as many
uniform cells under the RS-WS supernet (the authors' comparison: each
sampler under the supernet trained on its cells) and under the ENAS one
(``enas/seed_S/density.npz``); and each method's derived
cell trained from scratch on the same budget (``train_fixed``, in
``WORKDIR/fixed/METHOD_seed_S``). Then, for ``proxy.num_cells`` uniform cells
(``proxy.num_cells=0`` skips it): their exact validation ppl under the RS-WS
supernet of the first seed against their ppl after training from scratch
(``WORKDIR/proxy/``), ranked with Kendall tau and Spearman.

The comparison (``nas_jax/analysis/enas_vs_random.py``) writes
``WORKDIR/report.md``, ``results.json`` and ``figures/``. Everything is
resumable: the same command skips finished runs. Seeds can run as separate
jobs into one shared WORKDIR (``--config.seeds='(3,)' --config.proxy.num_cells=0``)
and ``--config.report_only=True`` with all seeds merges them (see README).
With ``seeds_mode`` stacked (``"auto"`` on an accelerator) each method's
searches over all seeds train together as one stacked program
(``train.train_many``) before the per-seed steps; the from-scratch runs (a
different cell each) go one after another.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from experiments import train_fixed
from nas_jax import controller
from nas_jax import data
from nas_jax import evaluation
from nas_jax import files
from nas_jax import rundir
from nas_jax import search_space
from nas_jax import settings
from nas_jax import streams
from nas_jax import train
from nas_jax.analysis import enas_vs_random as analysis
from nas_jax.analysis import search_report

METHODS = ("enas", "random_ws")
_OWN_KEYS = ("seeds", "density_cells", "proxy", "report_only", "seeds_mode")


def get_config(preset: str = ""):
  config = common.search_config()
  # Sized for about an hour on a 2-core CPU with 5 seeds (see README).
  common.multi_seed_budget(config)
  config.seeds = (0, 1, 2, 3, 4)
  config.density_cells = 1000  # Per sampler (ENAS controller, uniform).
  config.proxy = ml_collections.ConfigDict({"num_cells": 8, "seed": 0})
  config.report_only = False
  config.seeds_mode = "auto"  # or "stacked", "sequential" (common.stacked_seeds).
  return common.with_preset(config, preset, {"smoke": {"seeds": (0, 1)}})


def _check(config):
  seeds = common.check_seeds(config.seeds)
  if config.density_cells < 1:
    raise settings.ConfigError("config density_cells must be >= 1")
  if config.proxy.num_cells < 0 or config.proxy.num_cells == 1:
    raise settings.ConfigError(
        "config proxy.num_cells must be 0 (skip) or >= 2 (ranks need pairs)")
  if config.search.algorithm != "enas" or config.buffer.variant != "none":
    raise settings.ConfigError(
        "config search.algorithm and buffer.variant are set by this "
        "experiment: leave them 'enas' and 'none'")
  return seeds


def search_config(config, method, seed):
  sub = common.run_config(config, _OWN_KEYS, seed=seed)
  sub.search.algorithm = method
  return sub


def fixed_config(config, arch: str, seed: int):
  """The from-scratch run of ``arch`` on the search budget."""
  return common.apply_overrides(
      train_fixed.fixed_config(config, arch, _OWN_KEYS, seed=seed),
      train_fixed.ONE_CELL)


def _cell_ppl(loaded, cells):
  """Shared-weight ppl of ``cells`` on the first validation window."""
  valid = data.batchify(loaded.corpus.valid, loaded.setup.shared.batch_size)
  return np.asarray(evaluation.window_ppl(
      loaded.state.shared, jnp.asarray(cells), jnp.asarray(valid),
      setup=loaded.setup))


def density(config, workdir, seed):
  """Controller cells under the ENAS supernet, uniform cells under the RS-WS
  and the ENAS supernets (cached; a cache without every array is redone)."""
  path = analysis.density_path(workdir, seed)
  if os.path.exists(path):
    with np.load(path) as cached:
      if set(analysis.DENSITY_ARRAYS) <= set(cached.files):
        return
  loaded = rundir.load_run(files.run_dir(workdir, "enas", seed))
  random_ws = rundir.load_run(files.run_dir(workdir, "random_ws", seed))
  key = jax.random.fold_in(jax.random.key(seed), streams.DENSITY)
  k_ctrl, k_uniform = jax.random.split(key)
  n = config.density_cells
  ctrl_cells = np.asarray(controller.sample(
      loaded.state.ctrl, k_ctrl, n, config=loaded.setup.ctrl,
      mode="derive").tokens)
  uniform_cells = np.asarray(search_space.sample_uniform(
      k_uniform, loaded.setup.model.num_nodes, n))
  out = {"controller_cells": ctrl_cells, "uniform_cells": uniform_cells,
         "controller_ppl": _cell_ppl(loaded, ctrl_cells),
         "uniform_ppl": _cell_ppl(loaded, uniform_cells),
         "uniform_ppl_random_ws": _cell_ppl(random_ws, uniform_cells)}
  files.write_npz(path, **out)


def proxy(config, workdir, seed):
  """R uniform cells: exact valid ppl under the RS-WS supernet of ``seed``
  (cached in ``proxy/shared.json``), then each trained from scratch."""
  path = analysis.proxy_path(workdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if not os.path.exists(path):
    loaded = rundir.load_run(files.run_dir(workdir, "random_ws", seed))
    key = jax.random.fold_in(jax.random.key(config.proxy.seed), streams.PROXY)
    cells = np.asarray(search_space.sample_uniform(
        key, loaded.setup.model.num_nodes, config.proxy.num_cells))
    setup = loaded.setup
    shared = [evaluation.evaluate_cell(
        loaded.state.shared, jnp.asarray(cell), loaded.corpus.valid,
        config=setup.model, bptt=setup.shared.bptt,
        batch_size=setup.eval.batch_size,
        max_windows=setup.eval.max_windows)[0] for cell in cells]
    record = {"supernet": f"random_ws/seed_{seed}",
              "cells": [str(search_space.Architecture.from_tokens(t))
                        for t in cells],
              "shared_valid_ppl": shared}
    files.write_json(path, record, indent=1)
  record = files.read_json(path)
  for i, arch in enumerate(record["cells"]):
    print(f"enas_vs_random: proxy cell {i + 1}/{len(record['cells'])} from "
          "scratch", flush=True)
    train.train_and_evaluate(fixed_config(config, arch, seed),
                             analysis.proxy_cell_dir(workdir, i))


def _searches(config, workdir, method, seeds):
  """The ``method`` searches of ``seeds`` (stacked when several), each with
  its own report.md (the search section)."""
  configs = [search_config(config, method, s) for s in seeds]
  directories = [files.run_dir(workdir, method, s) for s in seeds]
  train.train_many(configs, directories, stacked=len(seeds) > 1)
  for sub, directory in zip(configs, directories):
    search_report.write_report(directory, sub)


def run(config, workdir):
  seeds = _check(config)
  if not config.report_only:
    corpus = data.load_corpus(config.data.dir,
                              verify=config.data.verify_checksums)
    for method in METHODS:
      settings.make_setup(search_config(config, method, seeds[0]),
                          corpus.vocab_size)
    stacked = common.stacked_seeds(config)
    if stacked:
      for method in METHODS:
        print(f"enas_vs_random: {method} searches of seeds "
              f"{', '.join(map(str, seeds))}, stacked", flush=True)
        _searches(config, workdir, method, seeds)
    for i, seed in enumerate(seeds):
      if not stacked:
        for method in METHODS:
          print(f"enas_vs_random: seed {seed} ({i + 1}/{len(seeds)}): "
                f"{method} search", flush=True)
          _searches(config, workdir, method, (seed,))
      print(f"enas_vs_random: seed {seed}: controller vs uniform cells",
            flush=True)
      density(config, workdir, seed)
      for method in METHODS:
        arch = files.read_json(os.path.join(
            files.run_dir(workdir, method, seed), files.BEST_ARCH_FILE))["arch"]
        print(f"enas_vs_random: seed {seed}: {method}'s cell from scratch",
              flush=True)
        sub = fixed_config(config, arch, seed)
        directory = analysis.fixed_dir(workdir, method, seed)
        train.train_and_evaluate(sub, directory)
        search_report.write_report(directory, sub)
    if config.proxy.num_cells:
      proxy(config, workdir, seeds[0])
  results = analysis.compare(workdir, seeds)
  analysis.write_outputs(results, workdir)
  print(f"enas_vs_random: report in {os.path.join(workdir, files.REPORT_FILE)}",
        flush=True)
  print(results["verdict"], flush=True)
  return results
