"""``smoke``: ``enas_probe:smoke``, every phase at tiny sizes (CI uses it)."""

from experiments import common
from experiments import enas_probe

run = enas_probe.run


def get_config():
  return common.smoke(enas_probe.get_config())
