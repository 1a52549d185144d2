"""``enas_probe``: the main job. ENAS search on PTB, then the probe of the
controller's carries (report.md, figures/, results.json, probe.npz in the run
directory)."""

from experiments import common
from nas_jax import probe
from nas_jax import train


def run(config, workdir):
  train.train_and_evaluate(config, workdir)
  return probe.run_probe(config, workdir)


def get_config():
  return common.search_config()
