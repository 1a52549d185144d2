"""Collects the controller-probe data from a search run (DESIGN "The analyses").

The JAX side of the probe. For the trained controller of a run (a
:class:`rundir.LoadedRun`: the loop's end state or a run directory's latest
checkpoint) and, as a control, the same run's *untrained* controller (its
initial parameters, which ``steps.init_state`` re-creates from the seed),
this module:

* samples ``K`` cells in derive mode from the identical zero state in one
  batched call and keeps, per cell, the LSTM carry of the last decision step
  (``c``, ``h``; this state produced the last decision's logits, so it has
  **not** seen the last activation token, as in the authors' analysis);
* records per-step log-probabilities, entropies and max probabilities, from
  the zero state and from random initial states (``c`` and ``h`` drawn
  ``N(0, 1)`` per cell; step 0's input stays zero unless ``random_input``,
  the authors' probe, draws it ``N(0, 1)`` too);
* scores every cell with the run's shared weights on a fixed validation slice
  (the derive window) to get its shared-weight perplexity;
* changes each earlier decision of each cell in turn and measures, teacher
  forced, the KL divergence of every later step's distribution
  (:mod:`nas_jax.policy_probe`): how far back the policy conditions.

:func:`collect` returns these arrays; ``experiments/probe.py`` saves them to
``probe.npz`` and hands them to :mod:`nas_jax.analysis.probe_analysis`
(host-side statistics, figures and report).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nas_jax import controller
from nas_jax import data
from nas_jax import evaluation
from nas_jax import policy_probe
from nas_jax import rundir
from nas_jax import streams


def _step_distributions(params, hs, setup):
  """Per-step max probability ``[K, S]`` from the carries ``h [K, S, H]``."""
  valid, _ = controller.step_tables(setup.ctrl)
  steps = []
  for t in range(setup.ctrl.num_steps):
    logits = controller.step_logits(params, hs[:, t], t, valid[t],
                                    config=setup.ctrl, mode="derive")
    steps.append(jnp.max(jax.nn.softmax(logits), axis=-1))
  return jnp.stack(steps, axis=1)


@functools.partial(jax.jit, static_argnames=("num", "setup", "chunk_size",
                                             "random_input"))
def _sample_arm(params, shared, key, valid_window, *, num, setup, chunk_size,
                random_input):
  """One compiled program per size: both controllers reuse it."""
  k_zero, k_rand, k_state = jax.random.split(key, 3)
  rollout = controller.sample(params, k_zero, num, config=setup.ctrl,
                              mode="derive")
  h0 = jax.random.normal(k_state, (2, num, setup.ctrl.hidden_size))
  x0 = (jax.random.normal(jax.random.fold_in(k_state, 1),
                          (num, setup.ctrl.hidden_size))
        if random_input else None)
  rand = controller.sample(params, k_rand, num, config=setup.ctrl,
                           mode="derive", initial_carry=(h0[0], h0[1]),
                           initial_input=x0)
  inputs, targets = valid_window
  losses = evaluation.cell_losses(shared, rollout.tokens, inputs, targets,
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


def sample_arm(params, shared, key, num, setup, valid_window, chunk_size,
               random_input=False):
  """Everything the analysis needs about one controller: a dict of arrays.

  ``random_input``: the random-state samples also draw step 0's input (the
  authors' probe); by default it is zero, as in every other sample.
  """
  # Restored and freshly built arrays can differ in placement metadata,
  # which would compile a second program: pass plain host copies.
  params, shared = jax.tree.map(np.asarray, (params, shared))
  out = _sample_arm(params, shared, key, valid_window, num=num, setup=setup,
                    chunk_size=chunk_size, random_input=random_input)
  return {k: np.asarray(v) for k, v in out.items()}


def collect(run: rundir.LoadedRun, num_cells: int, seed: int,
            random_input: bool = False) -> dict[str, np.ndarray]:
  """Probe data of the trained and the untrained controller of ``run``.

  ``random_input`` is the config's ``probe.random_input`` (see
  :func:`sample_arm`).

  Keys are ``trained/<name>`` and ``untrained/<name>`` (see
  :func:`sample_arm`, and ``conditioning_kl`` ``[K, P, 2N-1]`` of
  :func:`policy_probe.conditioning_kl` on the arm's cells), plus
  ``conditioning_positions`` ``[P]`` (the decisions changed),
  ``checkpoint`` metadata, ``epochs_trained`` and ``ctrl_steps``.
  """
  setup, state = run.setup, run.state
  valid = data.batchify(run.corpus.valid, setup.shared.batch_size)
  window = data.window(valid, 0, setup.shared.bptt)
  # Both arms see the same keys, so they differ only in the parameters.
  key = jax.random.fold_in(jax.random.key(seed), streams.PROBE)
  chunk = min(num_cells, setup.derive.chunk_size)
  while num_cells % chunk:
    chunk -= 1
  result = {"checkpoint": np.asarray(run.description)}
  # The changed decisions' draws: the same for both arms.
  change_key = jax.random.fold_in(key, 1)
  for arm, params in (("trained", state.ctrl), ("untrained", run.initial.ctrl)):
    for name, value in sample_arm(params, state.shared, key, num_cells, setup,
                                  window, chunk, random_input).items():
      result[f"{arm}/{name}"] = value
    result[f"{arm}/conditioning_kl"] = np.asarray(policy_probe.conditioning_kl(
        jax.tree.map(np.asarray, params), result[f"{arm}/tokens"],
        change_key, config=setup.ctrl, mode="derive"))
  result["conditioning_positions"] = policy_probe.changed_positions(
      setup.ctrl.num_nodes)
  result["epochs_trained"] = np.asarray(int(state.epoch))
  result["ctrl_steps"] = np.asarray(int(state.ctrl_step))
  return result
