"""``probe``: the controller probe of a search run.

    python launch.py --experiment=probe --config.run_dir=runs/enas_probe/seed_0

Reads the run's latest checkpoint and writes report.md (the search's
section, :mod:`nas_jax.analysis.search_report`, then the probe's), figures/,
results.json and probe.npz into that run directory, whether or not the
probe of that checkpoint exists: this experiment is how to re-analyse.
:func:`run_probe` is also the second half of ``enas_probe`` and of every
``memory_buffer`` run, which reuse a probe of the same checkpoint
(:func:`previous_results`) instead of redoing it.
"""

import os
import time

import ml_collections

from experiments import common
from nas_jax import files
from nas_jax import probe_sampling
from nas_jax import rundir
from nas_jax import settings
from nas_jax.analysis import probe_analysis
from nas_jax.analysis import search_report


def previous_results(run: rundir.LoadedRun, run_dir: str) -> dict | None:
  """The ``results.json`` of a finished probe of ``run``'s checkpoint in
  ``run_dir``, or None (no probe, or one of another checkpoint)."""
  path = os.path.join(run_dir, files.RESULTS_FILE)
  if not (os.path.exists(path)
          and os.path.exists(os.path.join(run_dir, files.REPORT_FILE))):
    return None
  results = files.read_json(path)
  return results if results.get("checkpoint") == run.description else None


def run_probe(p: ml_collections.ConfigDict, run: rundir.LoadedRun,
              run_dir: str, *, reuse: bool = False) -> dict:
  """Collects the probe data of ``run`` (settings ``p``, the config's
  ``probe`` section), saves ``probe.npz``, analyses it and writes the report
  into ``run_dir``; returns the results. With ``reuse``, a finished probe of
  the same checkpoint (:func:`previous_results`) is returned instead."""
  if reuse:
    previous = previous_results(run, run_dir)
    if previous is not None:
      print(f"probe: already done for this checkpoint (report in "
            f"{os.path.join(run_dir, files.REPORT_FILE)}); to redo it: "
            f"python launch.py --experiment=probe --config.run_dir={run_dir}",
            flush=True)
      return previous
  start = time.perf_counter()
  print(f"probe: sampling {p.num_cells} cells from the trained and untrained "
        f"controller of {run_dir}", flush=True)
  raw = probe_sampling.collect(run, p.num_cells, p.seed, p.random_input)
  files.write_npz(os.path.join(run_dir, files.PROBE_FILE), compressed=True,
                  **raw)
  collect_s = time.perf_counter() - start
  print(f"probe: sampled in {collect_s:.0f} s", flush=True)
  results = probe_analysis.analyse(raw, p, run_dir)
  results["timing"] = {"collect_seconds": collect_s,
                       "total_seconds": time.perf_counter() - start}
  print("probe: figures and report", flush=True)
  preface = search_report.section(run_dir, run.config)
  probe_analysis.write_outputs(results, raw, run_dir, preface=preface)
  print(f"probe: report in {os.path.join(run_dir, files.REPORT_FILE)} "
        f"({time.perf_counter() - start:.0f} s)", flush=True)
  return results


def run(config, workdir):
  del workdir  # The outputs go into the probed run's directory.
  if not config.run_dir:
    raise settings.ConfigError("config run_dir: pass --config.run_dir=DIR, a "
                               "search run directory")
  return run_probe(config.probe, rundir.load_run(config.run_dir),
                   config.run_dir)


def get_config(preset: str = ""):
  config = ml_collections.ConfigDict()
  config.run_dir = ""
  config.probe = common.probe_config()
  return common.with_preset(config, preset, presets=common.PROBE_PRESETS)
