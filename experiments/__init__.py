"""Experiments by name: an explicit registry, no import side effects.

Each experiment is a module with ``get_config()``; it is registered here by
name. The search-loop work adds the first ones (``enas_probe``, ``random_ws``,
``smoke``); until then the registry is empty and ``launch.py`` says so.
"""

from __future__ import annotations

import importlib

# name -> module path (relative to this package).
_REGISTRY: dict[str, str] = {}


def names() -> list[str]:
  return sorted(_REGISTRY)


def get_experiment(name: str):
  """The experiment module called ``name``; ``ValueError`` lists valid names."""
  if name not in _REGISTRY:
    valid = ", ".join(names()) or "none registered yet"
    raise ValueError(f"unknown experiment {name!r}; valid experiments: {valid}")
  return importlib.import_module(_REGISTRY[name], __name__)
