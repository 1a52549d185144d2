"""Experiments by name: an explicit registry, no import side effects.

Each experiment is a module with ``get_config(preset="") -> ConfigDict`` (its
config with a preset of :mod:`experiments.common` applied, ``paper`` or
``smoke``, and locked) and ``run(config, workdir)``; ``NAME:PRESET`` names
both.
"""

from __future__ import annotations

import importlib

import ml_collections

from experiments import common
from nas_jax import rundir

# name -> module (relative to this package), with a one-line description.
_REGISTRY: dict[str, tuple[str, str]] = {
    "enas_probe": (".enas_probe", "ENAS search on PTB, then the probe (the main job)"),
    "enas_vs_random": (".enas_vs_random", "ENAS vs RS-WS over seeds, cells from scratch, proxy tau"),
    "memory_buffer": (".memory_buffer", "ENAS with vs without the replay loss, seeds, probe each"),
    "probe": (".probe", "the controller probe of an existing run (--config.run_dir)"),
    "random_ws": (".random_ws", "random search with weight sharing, same budget"),
    "smoke": (".smoke", "enas_probe:smoke, seconds on a CPU (CI)"),
    "train_fixed": (".train_fixed", "one cell (--config.arch) trained from scratch"),
}


# Experiments that run on several processes (multi-host): one search, then
# an analysis that process 0 runs alone. The others run several searches
# with analyses between them; run their seeds as separate jobs instead.
MULTI_HOST = ("enas_probe", "random_ws", "smoke", "train_fixed")


def names() -> list[str]:
  return sorted(_REGISTRY)


def describe() -> str:
  """One line per experiment and preset, for ``--help``."""
  width = max(map(len, names()))
  lines = [f"  {n:<{width}}  {_REGISTRY[n][1]}" for n in names()]
  lines.append("presets (NAME:PRESET): "
               + ", ".join(sorted(common.SEARCH_PRESETS)))
  return "\n".join(lines)


def get_experiment(name: str):
  """The experiment module called ``name``; ``ValueError`` lists valid names."""
  if name not in _REGISTRY:
    raise ValueError(
        f"unknown experiment {name!r}; valid experiments: {', '.join(names())}")
  return importlib.import_module(_REGISTRY[name][0], __name__)


def get_config(spec: str) -> tuple[object, ml_collections.ConfigDict]:
  """``NAME`` or ``NAME:PRESET`` -> (experiment module, resolved config)."""
  name, _, preset = spec.partition(":")
  experiment = get_experiment(name)
  return experiment, experiment.get_config(preset)


def check_override_keys(config: ml_collections.ConfigDict, argv) -> None:
  """``ValueError`` naming an unknown ``--config.KEY`` and the valid ones.

  Runs before ml_collections parses the overrides, whose own error for an
  unknown key does not say which one.
  """
  valid = set(rundir.flatten(config.to_dict()))
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    if key not in valid:
      section = key.rsplit(".", 1)[0]
      near = sorted(k for k in valid if k.startswith(section + "."))
      sections = sorted({k.split(".")[0] for k in valid if "." in k})
      hint = f"; keys in {section}: {', '.join(near)}" if near else (
          "; sections: " + ", ".join(sections))
      raise ValueError(f"unknown config key {key!r}{hint}")
