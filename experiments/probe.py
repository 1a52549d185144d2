"""``probe``: the controller probe of a search run.

    python launch.py --experiment=probe --config.run_dir=runs/enas_probe

Reads the run's latest checkpoint and writes report.md, figures/,
results.json and probe.npz into that run directory. :func:`run_probe` is
also the second half of ``enas_probe`` and of every ``memory_buffer`` run.
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


def run_probe(p: ml_collections.ConfigDict, run: rundir.LoadedRun,
              run_dir: str) -> dict:
  """Collects the probe data of ``run`` (settings ``p``, the config's
  ``probe`` section), saves ``probe.npz``, analyses it and writes the report
  into ``run_dir``; returns the results."""
  start = time.perf_counter()
  print(f"probe: sampling {p.num_cells} cells from the trained and untrained "
        f"controller of {run_dir}", flush=True)
  raw = probe_sampling.collect(run, p.num_cells, p.seed)
  files.write_npz(os.path.join(run_dir, files.PROBE_FILE), compressed=True,
                  **raw)
  collect_s = time.perf_counter() - start
  results = probe_analysis.analyse(raw, p, run_dir)
  results["timing"] = {"collect_seconds": collect_s,
                       "total_seconds": time.perf_counter() - start}
  probe_analysis.write_outputs(results, raw, run_dir)
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
