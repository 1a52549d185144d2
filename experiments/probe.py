"""``probe``: the controller probe on an existing search run.

    python launch.py --experiment=probe --config.run_dir=runs/enas_probe

Reads the run's latest checkpoint and writes report.md, figures/,
results.json and probe.npz into that run directory.
"""

import ml_collections

from experiments import common
from nas_jax import probe
from nas_jax import train


def run(config, workdir):
  del workdir  # The outputs go into the probed run's directory.
  if not config.run_dir:
    raise train.ConfigError("config run_dir: pass --config.run_dir=DIR, a "
                            "search run directory")
  return probe.run_probe(config, config.run_dir)


def get_config():
  config = ml_collections.ConfigDict()
  config.run_dir = ""
  config.probe = common.probe_config()
  return config
