"""Collects the controller-probe data from a search run (DESIGN "The analyses").

For the trained controller of a run (its latest checkpoint) and, as a
control, the same run's *untrained* controller (its initial parameters, which
``train.init_state`` re-creates from the seed), this module:

* samples ``K`` cells in derive mode from the identical zero state in one
  batched call and keeps, per cell, the LSTM carry of the last decision step
  (``c``, ``h``; this state produced the last decision's logits, so it has
  **not** seen the last activation token, as in the authors' analysis);
* records per-step log-probabilities, entropies and max probabilities, from
  the zero state and from random initial states;
* scores every cell with the run's shared weights on a fixed validation slice
  (the derive window) to get its shared-weight perplexity.

:func:`run_probe` saves these arrays to ``probe.npz`` and hands them to
:mod:`nas_jax.analysis.probe` (host-side statistics, figures and report).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax import checkpointing
from nas_jax import controller
from nas_jax import data
from nas_jax import train

PROBE_FILE = "probe.npz"
_PROBE_STREAM = 7


def load_run_config(run_dir: str) -> ml_collections.ConfigDict:
  path = os.path.join(run_dir, checkpointing.CONFIG_FILE)
  if not os.path.exists(path):
    raise train.ConfigError(
        f"{run_dir}: no {checkpointing.CONFIG_FILE}; probe.run_dir must be a "
        "search run directory")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _step_distributions(params, hs, setup):
  """Per-step max probability ``[K, S]`` from the carries ``h [K, S, H]``."""
  valid, _ = controller.step_tables(setup.ctrl)
  steps = []
  for t in range(setup.ctrl.num_steps):
    logits = controller.step_logits(params, hs[:, t], t, valid[t],
                                    config=setup.ctrl, mode="derive")
    steps.append(jnp.max(jax.nn.softmax(logits), axis=-1))
  return jnp.stack(steps, axis=1)


@functools.partial(jax.jit, static_argnames=("num", "setup", "chunk_size"))
def _sample_arm(params, shared, key, valid_window, *, num, setup, chunk_size):
  """One compiled program per size: both controllers reuse it."""
  k_zero, k_rand, k_state = jax.random.split(key, 3)
  rollout = controller.sample(params, k_zero, num, config=setup.ctrl,
                              mode="derive")
  h0 = jax.random.normal(k_state, (2, num, setup.ctrl.hidden_size))
  rand = controller.sample(params, k_rand, num, config=setup.ctrl,
                           mode="derive", initial_carry=(h0[0], h0[1]))
  inputs, targets = valid_window
  losses = train.cell_losses(shared, rollout.tokens, inputs, targets,
                             config=setup.model, chunk_size=chunk_size)
  out = {
      "tokens": rollout.tokens,
      "h": rollout.h[:, -1],
      "c": rollout.c[:, -1],
      "log_probs": rollout.log_probs,
      "entropies": rollout.entropies,
      "max_prob": _step_distributions(params, rollout.h, setup),
      "random_init_entropies": rand.entropies,
      "random_init_max_prob": _step_distributions(params, rand.h, setup),
      "ppl": jnp.exp(losses),
  }
  return out


def sample_arm(params, shared, key, num, setup, valid_window, chunk_size):
  """Everything the analysis needs about one controller: a dict of arrays."""
  # Restored and freshly built arrays can differ in placement metadata,
  # which would compile a second program: pass plain host copies.
  params, shared = jax.tree.map(np.asarray, (params, shared))
  out = _sample_arm(params, shared, key, valid_window, num=num, setup=setup,
                    chunk_size=chunk_size)
  return {k: np.asarray(v) for k, v in out.items()}


class LoadedRun(NamedTuple):
  config: ml_collections.ConfigDict
  corpus: Any
  setup: train.Setup
  state: train.TrainState  # The latest checkpoint.
  initial: train.TrainState  # The run's initial state (same seed).
  description: Any  # The latest checkpoint's metadata.


def load_run(run_dir: str) -> LoadedRun:
  """A search run's config, corpus, setup, latest and initial state."""
  config = load_run_config(run_dir)
  corpus = data.load_corpus(config.data.dir,
                            verify=config.data.verify_checksums)
  setup = train.make_setup(config, corpus.vocab_size)
  initial = train.init_state(config, setup)
  run = checkpointing.RunDirectory(run_dir, config)
  try:
    restored = run.restore(initial)  # Only reads the template.
    description = run.latest_description()
  finally:
    run.close()
  if restored is None:
    raise train.ConfigError(f"{run_dir}: no checkpoint to load")
  return LoadedRun(config, corpus, setup, restored[0], initial, description)


def collect(run_dir: str, num_cells: int, seed: int) -> dict[str, np.ndarray]:
  """Probe data of the trained and the untrained controller of ``run_dir``.

  Keys are ``trained/<name>`` and ``untrained/<name>`` (see
  :func:`sample_arm`), plus ``checkpoint`` metadata.
  """
  loaded = load_run(run_dir)
  config, corpus, setup, state = (loaded.config, loaded.corpus, loaded.setup,
                                  loaded.state)
  untrained_ctrl, description = loaded.initial.ctrl, loaded.description
  valid = data.batchify(corpus.valid, config.train.batch_size)
  window = (jnp.asarray(valid[:config.train.bptt]),
            jnp.asarray(valid[1:config.train.bptt + 1]))
  # Both arms see the same keys, so they differ only in the parameters.
  key = jax.random.fold_in(jax.random.key(seed), _PROBE_STREAM)
  chunk = min(num_cells, config.derive.chunk_size)
  while num_cells % chunk:
    chunk -= 1
  result = {"checkpoint": np.asarray(description)}
  for arm, params in (("trained", state.ctrl), ("untrained", untrained_ctrl)):
    for name, value in sample_arm(params, state.shared, key, num_cells, setup,
                                  window, chunk).items():
      result[f"{arm}/{name}"] = value
  result["epochs_trained"] = np.asarray(int(state.epoch))
  result["ctrl_steps"] = np.asarray(int(state.ctrl_step))
  return result


def run_probe(config: ml_collections.ConfigDict, run_dir: str) -> dict:
  """Collects, saves ``probe.npz``, analyses, writes the report; returns results."""
  from nas_jax.analysis import probe as probe_analysis  # Host-side only.
  p = config.probe
  start = time.perf_counter()
  print(f"probe: sampling {p.num_cells} cells from the trained and untrained "
        f"controller of {run_dir}", flush=True)
  raw = collect(run_dir, p.num_cells, p.seed)
  np.savez_compressed(os.path.join(run_dir, PROBE_FILE), **raw)
  collect_s = time.perf_counter() - start
  results = probe_analysis.analyse(raw, p, run_dir)
  results["timing"] = {"collect_seconds": collect_s,
                       "total_seconds": time.perf_counter() - start}
  probe_analysis.write_outputs(results, raw, run_dir)
  print(f"probe: report in {os.path.join(run_dir, 'report.md')} "
        f"({time.perf_counter() - start:.0f} s)", flush=True)
  return results
