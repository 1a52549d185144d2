"""``smoke``: ``enas_probe:smoke``, every phase at tiny sizes (CI uses it)."""

from experiments import common
from experiments import enas_probe

run = enas_probe.run


def get_config(preset: str = ""):
  return common.with_preset(enas_probe.get_config("smoke"), preset)
