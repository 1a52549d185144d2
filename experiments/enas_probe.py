"""``enas_probe``: the main job. ENAS search on PTB, then the probe of the
controller's carries (report.md, figures/, results.json, probe.npz in the run
directory)."""

from experiments import common
from experiments import probe
from nas_jax import train


def run(config, workdir):
  return probe.run_probe(config.probe, train.train_and_evaluate(config, workdir),
                         workdir)


def get_config(preset: str = ""):
  return common.with_preset(common.search_config(), preset)
