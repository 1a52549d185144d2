"""Run directories: the config they are bound to, orbax checkpoints of the
state, and loading a finished or partial run.

A run directory is bound to one config: ``config.json`` is written when the
run starts, and opening the directory with a different config raises
:class:`WorkdirMismatch` listing the differing keys, so a run is never
silently continued with other settings.

Checkpoints (``checkpoints/<tick>/``) hold the whole :class:`TrainState`
(typed PRNG keys are stored as their raw ``uint32`` data) and a small JSON
``meta`` (file offsets of the JSON-lines logs, the best cell so far, whether
the run finished). Orbax writes each checkpoint to a temporary directory and
renames it when complete, so a run killed mid-save resumes from the previous
one. ``tick = epoch + shared_step + controller_step`` grows at every save.

:func:`load_run` rebuilds a run from its directory (config, corpus, setup,
latest and initial state) for the probe and the experiments' analyses; the
search loop hands over the same :class:`LoadedRun` when it finishes. File
names and atomic writes are :mod:`nas_jax.files`'.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from nas_jax import data
from nas_jax import devices
from nas_jax import files
from nas_jax import settings
from nas_jax import steps


class WorkdirMismatch(ValueError):
  """The run directory was created with another config."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


# Where a run computes, not what: a run may resume with other values.
PLACEMENT_SECTIONS = ("mesh",)


def config_differences(old: dict, new: dict) -> list[str]:
  """``"key: old -> new"`` for every key whose value differs (or is missing),
  apart from the :data:`PLACEMENT_SECTIONS`."""
  a, b = _identity(old), _identity(new)
  missing = object()
  lines = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, missing), b.get(key, missing)
    if va != vb:
      fmt = lambda v: "(absent)" if v is missing else json.dumps(v)
      lines.append(f"{key}: {fmt(va)} -> {fmt(vb)}")
  return lines


# Keys added after runs existed, with the value that such runs used: a run
# directory without the key resumes, and :func:`load_config` fills it in.
ADDED_KEYS = {"model.compute_dtype": "float32",
              "controller.entropy_bonus": "cell",
              "probe.random_input": False}


def _identity(config: dict) -> dict:
  flat = {**ADDED_KEYS, **flatten(config)}
  return {k: v for k, v in flat.items()
          if k.split(".", 1)[0] not in PLACEMENT_SECTIONS}


def bind_config(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Writes ``config.json`` or checks it; True when the directory is new."""
  path = os.path.join(workdir, files.CONFIG_FILE)
  text = config_to_json(config)
  if not os.path.exists(path):
    if devices.is_writer():  # Multi-host: process 0 writes, all check.
      os.makedirs(workdir, exist_ok=True)
      files.atomic_write_text(path, text)
    return True
  old = files.read_json(path)
  diffs = config_differences(old, json.loads(text))
  if diffs:
    raise WorkdirMismatch(
        f"{workdir} holds a run with another config (workdir -> now): "
        + "; ".join(diffs) + ". Use another --workdir, or the same settings "
        "to resume.")
  return False


def _to_storable(state):
  return jax.tree.map(
      lambda x: jax.random.key_data(x)
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state)


def _from_storable(stored, template):
  return jax.tree.map(
      lambda s, t: jax.random.wrap_key_data(s, impl=jax.random.key_impl(t))
      if jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key) else s,
      stored, template)


class RunDirectory:
  """``config.json`` binding plus an orbax ``CheckpointManager``."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict,
               max_to_keep: int = 2):
    self.workdir = workdir
    self.is_new = bind_config(workdir, config)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, files.CHECKPOINT_DIR)),
        options=options)
    self._last = None

  @staticmethod
  def tick(state) -> int:
    return int(state.epoch) + int(state.shared_step) + int(state.ctrl_step)

  def save(self, state, meta: dict) -> None:
    tick = self.tick(state)
    args = ocp.args.Composite(state=ocp.args.StandardSave(_to_storable(state)),
                              meta=ocp.args.JsonSave(meta))
    if not self.manager.save(tick, args=args):
      raise RuntimeError(
          f"orbax did not save checkpoint {tick} (latest: "
          f"{self.manager.latest_step()}): ticks must grow")
    self.manager.wait_until_finished()
    self._last = (tick, int(state.epoch), int(state.shared_step),
                  int(state.ctrl_step))

  def restore(self, template):
    """``(state, meta)`` from the latest checkpoint, or None if there is none.

    ``template`` is a freshly initialised state: it fixes structure, dtypes,
    the shardings the arrays are restored into (any device count)
    and the PRNG implementation.
    """
    tick = self.manager.latest_step()
    if tick is None:
      return None
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(_to_storable(template)),
        meta=ocp.args.JsonRestore())
    restored = self.manager.restore(tick, args=args)
    state = _from_storable(restored["state"], template)
    self._last = (tick, int(state.epoch), int(state.shared_step),
                  int(state.ctrl_step))
    return state, restored["meta"]

  def latest_description(self) -> str:
    if self._last is None:
      return "none (the run had not saved one)"
    tick, epoch, shared, ctrl = self._last
    path = os.path.join(self.workdir, files.CHECKPOINT_DIR, str(tick))
    return (f"{path} ({epoch} epoch{'' if epoch == 1 else 's'} done, shared "
            f"step {shared}, controller step {ctrl})")

  def close(self) -> None:
    self.manager.close()


# ---------------------------------------------------------------------------
# Loading a run.


class LoadedRun(NamedTuple):
  """A search run as the analyses need it."""
  config: ml_collections.ConfigDict
  corpus: data.Corpus
  setup: settings.Setup
  state: steps.TrainState  # The latest checkpoint (or the loop's end state).
  initial: steps.TrainState  # The run's initial state (same seed).
  description: str  # Which checkpoint ``state`` is.
  best: dict | None  # The best-cell record (best_arch.json once finished).
  finished: bool


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  """The ``config.json`` a run directory is bound to, with the
  :data:`ADDED_KEYS` it was written without (their values then)."""
  path = os.path.join(run_dir, files.CONFIG_FILE)
  if not os.path.exists(path):
    raise settings.ConfigError(
        f"{run_dir}: no {files.CONFIG_FILE}; expected a search run directory")
  config = files.read_json(path)
  for dotted, value in ADDED_KEYS.items():
    *sections, key = dotted.split(".")
    node = config
    for section in sections:
      node = node.setdefault(section, {})
    node.setdefault(key, value)
  return ml_collections.ConfigDict(config)


def load_run(run_dir: str) -> LoadedRun:
  """A finished or partial search run from its directory (latest checkpoint).

  Raises:
    settings.ConfigError: no run, or no checkpoint, in ``run_dir``.
    data.DataError: the run's data directory is missing or corrupt.
  """
  config = load_config(run_dir)
  corpus = data.load_corpus(config.data.dir,
                            verify=config.data.verify_checksums)
  setup = settings.make_setup(config, corpus.vocab_size)
  initial = steps.init_state(setup, config.seed)
  run = RunDirectory(run_dir, config)
  try:
    restored = run.restore(initial)  # Only reads the template.
    description = run.latest_description()
  finally:
    run.close()
  if restored is None:
    raise settings.ConfigError(f"{run_dir}: no checkpoint to load")
  state, meta = restored
  return LoadedRun(config, corpus, setup, state, initial, description,
                   best=meta.get("best"), finished=meta.get("finished", False))
