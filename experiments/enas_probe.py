"""``enas_probe``: the main job. ENAS search on PTB (the probe of the
controller's carries is added by the probe work)."""

from experiments import common
from nas_jax import train

run = train.train_and_evaluate


def get_config():
  return common.search_config()
