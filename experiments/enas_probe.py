"""``enas_probe``: the main job. ENAS search on PTB, then the probe of the
controller's carries (report.md, figures/, results.json, probe.npz in the run
directory).

Rerunning a finished run prints its summary in seconds: the search resumes
as complete and the probe of its checkpoint is reused (re-analyse with the
``probe`` experiment).
"""

import os

from experiments import common
from experiments import probe
from nas_jax import files
from nas_jax import train


def run(config, workdir):
  loaded = train.train_and_evaluate(config, workdir)
  results = probe.run_probe(config.probe, loaded, workdir, reuse=True)
  print(f"enas_probe: {train.best_summary(loaded.best)} | report: "
        f"{os.path.join(workdir, files.REPORT_FILE)}", flush=True)
  return results


def get_config(preset: str = ""):
  return common.with_preset(common.search_config(), preset)
