"""Does the controller's carry encode the structure of the cells it samples?

Host-side analysis of the arrays :mod:`nas_jax.probe_sampling` collects
(claims 3 and 4 of DESIGN.md). For the trained controller and two controls
(the untrained controller, and the trained one with its cells' pairing
shuffled), it correlates pairwise distances of the carries with every graph
metric of :mod:`nas_jax.analysis.graph_metrics` and
:mod:`nas_jax.analysis.edit_distance`, with Mantel permutation p-values and
bootstrap CIs over cells (:mod:`nas_jax.analysis.pairwise`),
checks nearest neighbours and fits ridge probes from the carry to cell
properties and perplexity (:mod:`nas_jax.analysis.carry_probes`), states the
verdicts (:func:`verdicts`) and writes ``report.md``, ``figures/*.png`` and
``results.json`` (:func:`write_outputs`).

The verdicts control for recency, which an LSTM's carry always has (an
untrained controller passes the raw correlation rules through its last
decision alone): claim 3 rests on partial Mantel tests given the last
decision the carry read, Holm-corrected over the carries h, c, [c, h] and
the whole-matrix metrics (:mod:`nas_jax.analysis.recency`), beside the
correlations with the prefix without the last k decisions; claim 4 on the
policy itself: the KL of later steps' distributions when an earlier decision
changes, teacher forced, trained vs untrained (:mod:`nas_jax.policy_probe`).
Both rest on one search (tests over cells); :mod:`nas_jax.analysis.across_seeds`
compares trained and untrained controllers paired over several searches.

The carry analysed (``h``, and ``c`` and ``[c, h]`` beside it) is the LSTM
state after the last decision step's input: the state the last decision's
logits came from, so it has **not** seen the last activation token.

Every correlation is the dict of one :func:`pairwise.correlate
<nas_jax.analysis.pairwise.correlate>` call (or
:func:`pairwise.permuted_pairs_control`), but they are computed together by
:func:`correlate_batch.correlate_many
<nas_jax.analysis.correlate_batch.correlate_many>`, which shares the
permutations and resamples all those calls draw alike, and the ridge probes
of one carry share their SVDs (:func:`carry_probes.ridge_cv_many`): the same
numbers, an order of magnitude faster at ``K = 1000`` (``python -m
benchmarks.probe_stats``).

``results.json``, top level (keys starting with ``_`` are working data for
the figures and are not written):

* ``run_dir``: the probed search run's directory.
* ``checkpoint``: which checkpoint the trained controller came from (its
  path, epoch, shared and controller step).
* ``epochs_trained``, ``ctrl_steps``: that checkpoint's supernet epochs and
  controller (REINFORCE) steps.
* ``num_cells``: ``K``, the cells sampled per controller.
* ``num_pairs``: ``K (K - 1) / 2``, the pairs of the whole-matrix metrics.
* ``ged_pairs``: the random subset of pairs the networkx edit distances
  (``topological_ged``, ``labelled_ged``) were computed on.
* ``settings``: the probe's config section.
* ``arms``: ``trained`` and ``untrained``, each with ``unique_cells``,
  ``ppl_median``, ``ppl_non_finite``, ``ged_timeouts[metric]``,
  ``correlations["<carry>/<l2|cosine>"][metric]`` (a
  :func:`pairwise.correlate <nas_jax.analysis.pairwise.correlate>` dict),
  ``nearest_neighbour[metric]``, ``ridge[carry][target]``, ``permuted[metric]``
  (the trained arm only: the shuffled-cells control), ``per_step`` (mean
  max probability and entropy per decision step, from the zero state and from
  random states), ``recency["<carry>/l2"][metric]`` (``given_last_decision``:
  the partial Mantel test given the last decision the carry read, with
  ``p_holm``; ``prefix_k{k}``: rho and Mantel p against the metric of the
  prefix without the last k read decisions; :func:`_recency`) and
  ``conditioning`` (the policy-conditioning curve ``curve`` by distance and
  ``beyond_last_mean``/``_median``, ``last_mean``; :func:`_conditioning`).
* ``carry_pca``: per arm, ``explained_variance_ratio``: the fraction of the
  variance of h on each of its first (up to :data:`PCA_COMPONENTS`)
  principal components (scikit-learn's PCA; the PCA figure's axes).
* ``conditioning_test``: the Mann-Whitney U test of claim 4 (``u``, ``p``,
  ``n``).
* ``verdicts``: ``claim3`` and ``claim4`` (the verdicts: recency controlled,
  and on the policy), ``claim3_raw`` and ``claim4_ridge`` (the earlier
  rules, which recency alone passes), ``rule3``, ``rule4``, ``rule3_raw``,
  ``rule4_ridge`` (the rules) and ``basis`` (what the tests rest on).
* ``timing``: ``collect_seconds`` and ``total_seconds`` of the probe (added
  by ``experiments/probe.py``, which runs it).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from sklearn import decomposition

from nas_jax.analysis import blas
from nas_jax.analysis import carry_probes
from nas_jax.analysis import correlate_batch
from nas_jax.analysis import edit_distance
from nas_jax.analysis import graph_metrics
from nas_jax.analysis import pairwise
from nas_jax.analysis import recency
from nas_jax.analysis import reports

ARMS = ("trained", "untrained")
# name -> True when larger values mean more similar cells.
METRICS = {
    "aligned_edit_distance": False,
    "common_connections": True,
    "common_activations": True,
    "jaccard_edges": True,
    "wl_kernel": True,
    "topological_ged": False,
    "labelled_ged": False,
}
SUBSET_METRICS = ("topological_ged", "labelled_ged")
CARRIES = ("h", "c", "ch")
MAIN_CARRY, MAIN_DISTANCE = "h", "l2"
ALPHA = 0.05
# Principal components of h whose explained variance results.json keeps.
PCA_COMPONENTS = 10
# The metrics over all pairs (the verdicts' metrics), the recency control's
# prefixes (the read decisions without the last k) and its carry views.
WHOLE_METRICS = tuple(n for n in METRICS if n not in SUBSET_METRICS)
RECENCY_KS = (1, 2, 4)
# Claim 4's policy conditioning: the KL this many decisions or more after
# the changed one (beyond the decision just read).
CONDITIONING_BEYOND = 2
RECENCY_VIEWS = tuple(f"{c}/l2" for c in CARRIES)
# The shuffled-cells control (pairwise.permuted_pairs_control): its key while
# it is computed with the carries, and its number of permutations (that
# function's default, whatever the settings say).
_CONTROL = "_permuted"
_CONTROL_PERMUTATIONS = 999
# Threads for the permutation nulls; the numbers do not depend on it.
_WORKERS = min(4, os.cpu_count() or 1)


def _carry(raw, arm, name):
  if name == "ch":
    return np.concatenate([raw[f"{arm}/c"], raw[f"{arm}/h"]], axis=-1)
  return raw[f"{arm}/{name}"]


def _distance(x, kind):
  if kind == "l2":
    return pairwise.pairwise_l2(x)
  return 1.0 - pairwise.pairwise_cosine_similarity(x)


def _graph_metrics(tokens, p, pairs):
  """name -> ``[K, K]`` matrix (NaN outside ``pairs`` for edit distances)."""
  out = dict(graph_metrics.pairwise_all(tokens))
  k = tokens.shape[0]
  for name, fn in (("topological_ged", edit_distance.topological_ged),
                   ("labelled_ged", edit_distance.labelled_ged)):
    values = fn(tokens, pairs, timeout=p.ged_timeout)
    m = np.full((k, k), np.nan)
    m[pairs[:, 0], pairs[:, 1]] = values
    m[pairs[:, 1], pairs[:, 0]] = values
    np.fill_diagonal(m, 0.0)
    out[name] = m
  return out


def analyse(raw: dict[str, np.ndarray], p, run_dir: str) -> dict[str, Any]:
  """All statistics of the probe, as a JSON-able dict (see README schema)."""
  k = raw["trained/tokens"].shape[0]
  pairs = edit_distance.sample_pairs(k, p.ged_max_pairs, p.seed)
  results: dict[str, Any] = {
      "run_dir": run_dir, "checkpoint": str(raw["checkpoint"]),
      "epochs_trained": int(raw["epochs_trained"]),
      "ctrl_steps": int(raw["ctrl_steps"]), "num_cells": k,
      "num_pairs": k * (k - 1) // 2, "ged_pairs": int(len(pairs)),
      "settings": p.to_dict(), "arms": {}}
  with blas.single_threaded():  # Many small products: nas_jax.analysis.blas.
    for arm in ARMS:
      results["arms"][arm] = _analyse_arm(raw, arm, p, pairs)
  results["carry_pca"] = {arm: carry_pca(_carry(raw, arm, MAIN_CARRY))
                          for arm in ARMS}
  if "conditioning" in results["arms"]["trained"]:
    results["conditioning_test"] = conditioning_test(results)
  results["verdicts"] = verdicts(results)
  return results


def carry_pca(x, num_components: int = PCA_COMPONENTS) -> dict[str, Any]:
  """scikit-learn's PCA (exact SVD) of the carries ``x`` ``[K, D]``.

  Returns:
    ``explained_variance_ratio``: the fraction of the total variance on each
    of the first ``min(num_components, K, D)`` components (the squared
    singular values of the centred ``x`` over their sum); ``_projection``:
    ``[K, 2]`` the cells on the first two components (zeros where ``x`` has
    fewer), for the figure.
  """
  x = np.asarray(x, np.float64)
  n = min(num_components, *x.shape)
  fitted = decomposition.PCA(n_components=n, svd_solver="full").fit(x)
  xy = np.zeros((x.shape[0], 2))
  xy[:, :min(n, 2)] = fitted.transform(x)[:, :2]
  return {"explained_variance_ratio":
              fitted.explained_variance_ratio_.tolist(),
          "_projection": xy}


def _progress(message: str) -> None:
  """One console line per stage of the analysis (it runs for minutes at
  paper sizes)."""
  print(f"probe: {message}", flush=True)


def _analyse_arm(raw, arm, p, pairs) -> dict[str, Any]:
  """The statistics of one controller (``arm``) of the probe."""
  tokens = raw[f"{arm}/tokens"]
  ppl = raw[f"{arm}/ppl"]
  _progress(f"{arm} controller: graph metrics, edit distances of "
            f"{len(pairs)} pairs (up to {p.ged_timeout:g} s each)")
  metrics = _graph_metrics(tokens, p, pairs)
  props = graph_metrics.cell_properties(tokens)
  main_dist = _distance(_carry(raw, arm, MAIN_CARRY), MAIN_DISTANCE)
  _progress(f"{arm} controller: correlations ({p.num_permutations} "
            f"permutations, {p.num_bootstrap} bootstrap resamples), "
            "neighbours, ridge probes")
  correlations = _correlations(raw, arm, metrics, main_dist, p, pairs)
  arm_res: dict[str, Any] = {
      "unique_cells": len({tuple(t) for t in tokens}),
      "ppl_median": float(np.median(ppl)),
      "ppl_non_finite": int(np.sum(~np.isfinite(ppl))),
      "ged_timeouts": {n: int(np.sum(~np.isfinite(
          metrics[n][pairs[:, 0], pairs[:, 1]]))) for n in SUBSET_METRICS},
      "correlations": correlations["correlations"],
      "nearest_neighbour": {
          name: carry_probes.nearest_neighbour_check(
              main_dist, metrics[name], larger_is_similar=larger_similar,
              seed=p.seed)
          for name, larger_similar in METRICS.items()
          if name not in SUBSET_METRICS},
      "ridge": _ridge(raw, arm, props, p)}
  if "permuted" in correlations:
    arm_res["permuted"] = correlations["permuted"]
  arm_res["per_step"] = {
      "zero_state_entropy": raw[f"{arm}/entropies"].mean(0).tolist(),
      "zero_state_max_prob": raw[f"{arm}/max_prob"].mean(0).tolist(),
      "random_state_entropy":
          raw[f"{arm}/random_init_entropies"].mean(0).tolist(),
      "random_state_max_prob":
          raw[f"{arm}/random_init_max_prob"].mean(0).tolist(),
  }
  _progress(f"{arm} controller: recency controls (partial Mantel given the "
            f"last decision, prefixes without the last {RECENCY_KS} "
            "decisions), policy conditioning")
  arm_res["recency"] = _recency(raw, arm, metrics, p, main_dist)
  if f"{arm}/conditioning_kl" in raw:
    arm_res["conditioning"] = _conditioning(raw, arm)
  # For figures; keys starting with "_" are dropped from results.json.
  arm_res["_matrices"] = metrics
  arm_res["_hidden_l2"] = main_dist
  arm_res["_properties"] = props
  return arm_res


def _correlations(raw, arm, metrics, main_dist, p, pairs) -> dict[str, Any]:
  """``{"correlations": {"carry/distance": {metric: correlate dict}}}``,
  plus ``"permuted"`` (the shuffled-cells control) for the trained arm.

  Every entry is :func:`pairwise.correlate`'s (and
  :func:`pairwise.permuted_pairs_control`'s) for the same arguments, computed
  together by :func:`correlate_batch.correlate_many`, which shares the
  permutations and resamples all those calls draw alike. Bootstrap CIs and
  the perplexity row only for the main carry and distance (``main_dist``);
  the perplexity row is over the pairs of cells whose ppl is finite.
  """
  main = f"{MAIN_CARRY}/{MAIN_DISTANCE}"
  dists = {}
  for carry in CARRIES:
    x = _carry(raw, arm, carry)
    for kind in ("l2", "cosine"):
      key = f"{carry}/{kind}"
      dists[key] = main_dist if key == main else _distance(x, kind)
  whole = [n for n in METRICS if n not in SUBSET_METRICS]
  only = {key: list(METRICS) for key in dists}
  only[main] = [*METRICS, "abs_ppl_difference"]
  num_permutations = {key: p.num_permutations for key in dists}
  if arm == "trained":  # permuted_pairs_control's settings.
    k = main_dist.shape[0]
    perm = pairwise.control_permutation(k, p.seed)
    dists[_CONTROL] = main_dist[np.ix_(perm, perm)]
    only[_CONTROL] = whole
    num_permutations[_CONTROL] = _CONTROL_PERMUTATIONS
  ppl = raw[f"{arm}/ppl"]
  finite = np.isfinite(ppl)
  known = {n: pairs[np.isfinite(metrics[n][pairs[:, 0], pairs[:, 1]])]
           for n in SUBSET_METRICS}
  table = correlate_batch.correlate_many(
      dists, {**metrics, "abs_ppl_difference": _ppl_difference(ppl)},
      cells={"abs_ppl_difference": finite}, pairs=known, only=only,
      num_permutations=num_permutations,
      num_bootstrap={key: p.num_bootstrap if key == main else 0
                     for key in dists},
      seed=p.seed, workers=_WORKERS)
  out = {"correlations": {key: table[key] for key in dists
                          if key != _CONTROL}}
  if _CONTROL in table:
    out["permuted"] = {name: {**res, "control_seed": int(p.seed)}
                       for name, res in table[_CONTROL].items()}
  return out


def _ppl_difference(ppl) -> np.ndarray:
  """``|ppl_i - ppl_j|`` ``[K, K]``; only read where both are finite (cells
  whose shared-weight ppl overflowed have no finite difference)."""
  finite = np.isfinite(ppl)
  return np.abs(np.where(finite, ppl, 0.0)[:, None]
                - np.where(finite, ppl, 0.0)[None, :])


def _ridge(raw, arm, props, p) -> dict[str, Any]:
  """``carry -> target ->`` :func:`carry_probes.ridge_cv` result."""
  ppl = raw[f"{arm}/ppl"]
  finite = np.isfinite(ppl)
  out = {}
  for carry in CARRIES:
    x = _carry(raw, arm, carry)
    # One SVD per fold for all properties (ridge_cv's numbers).
    out[carry] = carry_probes.ridge_cv_many(
        x, {name: np.asarray(y, np.float64) for name, y in props.items()},
        seed=p.seed)
    # log ppl on the cells where it is finite.
    out[carry]["log_ppl"] = carry_probes.ridge_cv(
        x[finite], np.log(ppl[finite]), seed=p.seed)
  return out


def _recency(raw, arm, metrics, p, main_dist) -> dict[str, Any]:
  """``view -> metric ->`` the recency-controlled tests of one controller.

  ``given_last_decision``: :func:`recency.partial_mantel` of the carry's L2
  distances and the metric given whether two cells differ in the last
  decision the carry read, with ``p_holm``, its Holm-adjusted p over every
  view and metric of this arm (the family the verdict uses);
  ``prefix_k{k}``: the plain Spearman rho and Mantel p against the metric of
  the prefix without the last ``k`` read decisions
  (:func:`recency.prefix_cells`).
  """
  tokens = raw[f"{arm}/tokens"]
  last = recency.last_decision_differs(tokens)
  ks = [k for k in RECENCY_KS if k < tokens.shape[1] - 1]
  prefix = recency.prefix_metrics(tokens, ks, names=WHOLE_METRICS)
  settings = dict(num_permutations=p.num_permutations, seed=p.seed,
                  workers=_WORKERS)
  # The main view's distances are the arm's (computed once).
  dists = {view: (main_dist if view == f"{MAIN_CARRY}/{MAIN_DISTANCE}" else
                  _distance(_carry(raw, arm, view.split("/")[0]), "l2"))
           for view in RECENCY_VIEWS}
  # All tests share one pass of permutations: the metrics given the last
  # decision, the prefixes given a constant (plain Spearman and Mantel p).
  constant = np.zeros_like(last)
  ys = {n: metrics[n] for n in WHOLE_METRICS}
  ys.update({(n, k): prefix[k][n] for k in ks for n in WHOLE_METRICS})
  partial = recency.partial_mantel_many(
      dists, ys, {y: last if y in WHOLE_METRICS else constant for y in ys},
      **settings)
  out = {}
  for view in RECENCY_VIEWS:
    out[view] = {}
    for name in WHOLE_METRICS:
      row = {"given_last_decision": partial[view][name]}
      for k in ks:
        res = partial[view][(name, k)]
        row[f"prefix_k{k}"] = {"rho": res["rho"], "p_mantel": res["p_mantel"]}
      out[view][name] = row
  tests = [out[v][n]["given_last_decision"] for v in RECENCY_VIEWS
           for n in WHOLE_METRICS]
  for test, adjusted in zip(tests, recency.holm([t["p_mantel"]
                                                 for t in tests])):
    test["p_holm"] = float(adjusted)
  return out


def _conditioning(raw, arm) -> dict[str, Any]:
  """The policy-conditioning curve of one controller
  (:func:`policy_probe.kl_by_distance`) and, per cell, the mean KL over the
  pairs of decisions at least 2 apart (``_beyond_last``: for the test)."""
  # Imported here: its kl_by_distance is NumPy, the module is the JAX side.
  from nas_jax import policy_probe  # pylint: disable=g-import-not-at-top
  kl = np.asarray(raw[f"{arm}/conditioning_kl"], np.float64)
  positions = np.asarray(raw["conditioning_positions"])
  curve = policy_probe.kl_by_distance(kl, positions)
  dist = np.arange(kl.shape[2])[None, :] - positions[:, None]
  beyond = kl[:, dist >= CONDITIONING_BEYOND].mean(axis=1)
  return {"curve": {k: np.asarray(v).tolist() for k, v in curve.items()},
          "beyond_last_mean": float(beyond.mean()),
          "beyond_last_median": float(np.median(beyond)),
          "last_mean": float(kl[:, dist == 1].mean()),
          "_beyond_last": beyond}


# ---------------------------------------------------------------------------
# Verdicts: rules stated in the report, applied to the numbers.


def _significant(res, larger_similar):
  """Mantel p < ALPHA, bootstrap CI excluding 0, sign meaning 'encodes'.

  Carries closer (smaller distance) for more similar cells means a negative
  rho for similarity metrics and a positive one for distances.
  """
  rho = res["spearman"]["rho"]
  lo, hi = res["spearman"].get("ci", (math.nan, math.nan))
  p = res["spearman"]["p_mantel"]
  right_sign = rho < 0 if larger_similar else rho > 0
  ci_ok = (hi < 0) if larger_similar else (lo > 0)
  return bool(p < ALPHA and right_sign and ci_ok)


def verdicts(results) -> dict[str, str]:
  """The verdicts on claims 3 and 4, and the rules they apply.

  ``claim3`` and ``claim4`` control for recency (the carry's last decision)
  and test the policy itself; ``claim3_raw`` and ``claim4_ridge`` are the
  earlier rules, which an untrained LSTM passes through recency alone.
  """
  out = {"claim3": _claim3(results), "claim4": _claim4(results),
         "claim3_raw": _claim3_raw(results),
         "claim4_ridge": _claim4_ridge(results),
         "rule3": (
             "a carry x metric pair (h, c, [c, h] under L2 x the "
             f"{len(WHOLE_METRICS)} whole-matrix metrics: "
             f"{len(RECENCY_VIEWS) * len(WHOLE_METRICS)} tests per "
             "controller) counts when its partial Spearman correlation given "
             "the last decision the carry read has a Holm-adjusted Mantel "
             f"p < {ALPHA} and the sign of 'closer carries, more similar "
             "cells'"),
         "rule3_raw": (
             "a metric counts when its Spearman rho with the h L2 distance "
             f"has Mantel p < {ALPHA}, a bootstrap CI excluding 0, and the "
             "sign of 'closer carries, more similar cells'"),
         "rule4": (
             "teacher forced, each earlier decision of a cell changed in "
             "turn: the cell's mean KL of the later steps' distributions at "
             "least 2 decisions after the change, trained vs untrained "
             f"controller (two-sided Mann-Whitney U over cells, alpha "
             f"{ALPHA})"),
         "rule4_ridge": "a property counts when the nested-CV ridge R^2 "
                        "from h exceeds 0.1"}
  out["basis"] = (
      f"one search, K = {results['num_cells']} cells per controller: the "
      "tests are over cells and the verdicts rest on one seed (enas_probe "
      "with several seeds, config.seeds, judges the claims paired over "
      "seeds)")
  return out


def _encodes(rho, p, larger_similar) -> bool:
  """Significant, with the sign meaning 'closer carries, more similar'."""
  return bool(np.isfinite(rho) and np.isfinite(p) and p < ALPHA
              and (rho < 0 if larger_similar else rho > 0))


def recency_hits(arm_results) -> list[tuple[str, str]]:
  """The ``(view, metric)`` pairs whose carry encodes the metric beyond the
  last decision (rule 3: partial rho, Holm-adjusted p, sign)."""
  out = []
  for view in RECENCY_VIEWS:
    for name in WHOLE_METRICS:
      r = arm_results["recency"][view][name]["given_last_decision"]
      if _encodes(r["partial_rho"], r["p_holm"], METRICS[name]):
        out.append((view, name))
  return out


def _strongest(arm_results, hits):
  view, name = max(hits, key=lambda h: abs(
      arm_results["recency"][h[0]][h[1]]["given_last_decision"]["partial_rho"]))
  r = arm_results["recency"][view][name]["given_last_decision"]
  return (f"{view.split('/')[0]} vs {name}: partial rho = "
          f"{r['partial_rho']:+.3f} (plain {r['rho']:+.3f}; Holm p = "
          f"{r['p_holm']:.3g})")


def _claim3(results) -> str:
  """Claim 3 (the carry does not encode structure), recency controlled."""
  trained, untrained = (results["arms"][a] for a in ARMS)
  hits, base = recency_hits(trained), recency_hits(untrained)
  tests = len(RECENCY_VIEWS) * len(WHOLE_METRICS)
  raw = [n for n, s in METRICS.items() if n in WHOLE_METRICS
         and _significant(trained["correlations"][
             f"{MAIN_CARRY}/{MAIN_DISTANCE}"][n], s)]
  raw_text = (f" Without the control, the earlier rule counts {len(raw)} of "
              f"{len(WHOLE_METRICS)} metrics for the trained carry h.")
  permutations = results["settings"]["num_permutations"]
  floor = tests / (permutations + 1) if permutations else math.inf
  if floor >= ALPHA:
    return (
        f"Not testable with these settings: with {permutations} "
        f"permutations the Holm-adjusted p of {tests} tests cannot go below "
        f"{min(floor, 1.0):.3g}, so no test can reach alpha {ALPHA} (use "
        "more permutations, e.g. the default 999)." + raw_text)
  if not hits:
    return (
        "Consistent with the claim once recency is controlled: given the "
        "last decision the carry read, no carry (h, c, [c, h]) keeps a "
        f"significant correlation with any metric ({tests} tests, Holm) for "
        f"the trained controller; the untrained one has {len(base)}."
        + raw_text + " What remains is what an LSTM's recency gives.")
  if not base:
    return (
        f"Not supported here: given the last decision, the trained "
        f"controller's carry still tracks structure in {len(hits)} of "
        f"{tests} carry x metric tests (Holm), strongest "
        f"{_strongest(trained, hits)}; the untrained controller in none."
        + raw_text)
  return (
      f"Not attributable to training on this evidence: beyond the last "
      f"decision, the trained controller's carry tracks structure in "
      f"{len(hits)} of {tests} tests (strongest {_strongest(trained, hits)}) "
      f"and the untrained one's in {len(base)} (strongest "
      f"{_strongest(untrained, base)})." + raw_text)


def _claim4(results) -> str:
  """Claim 4 (no conditioning on past decisions), on the policy itself."""
  arms = results["arms"]
  if "conditioning" not in arms["trained"]:
    return ("Not tested on the policy (the probe data has no "
            "policy-conditioning KL); see the ridge probes.")
  t, u = arms["trained"]["conditioning"], arms["untrained"]["conditioning"]
  test = results.get("conditioning_test") or conditioning_test(results)
  ratio = (t["beyond_last_mean"] / u["beyond_last_mean"]
           if u["beyond_last_mean"] > 0 else math.inf)
  numbers = (
      f"changing a decision moves the later steps' distributions, at least "
      f"2 decisions on, by a mean KL of {t['beyond_last_mean']:.3g} nats for "
      f"the trained controller and {u['beyond_last_mean']:.3g} for the "
      f"untrained one ({ratio:.3g}x; Mann-Whitney p = {test['p']:.3g}, "
      f"{test['n']} cells each); the decision just read (distance 1): "
      f"{t['last_mean']:.3g} vs {u['last_mean']:.3g}")
  entropy = float(np.mean(arms["trained"]["per_step"]["zero_state_entropy"]))
  if test["p"] < ALPHA and t["beyond_last_mean"] > u["beyond_last_mean"]:
    return ("Not supported here: teacher forced, " + numbers + ". The "
            "trained policy conditions on earlier decisions more than "
            "recurrence alone does; in absolute terms the extra KL "
            f"(trained - untrained) is "
            f"{(t['beyond_last_mean'] - u['beyond_last_mean']) / entropy:.2g}"
            f" of its mean step entropy ({entropy:.3g} nats).")
  return ("Consistent with the claim: teacher forced, " + numbers + ". Beyond "
          "the decision just read, the trained policy conditions on earlier "
          "decisions no more than an untrained LSTM does.")


def conditioning_test(results) -> dict[str, float]:
  """Two-sided Mann-Whitney U of the per-cell mean KL at distance >= 2,
  trained vs untrained: ``{"u", "p", "n"}``."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  t = results["arms"]["trained"]["conditioning"]["_beyond_last"]
  u = results["arms"]["untrained"]["conditioning"]["_beyond_last"]
  res = stats.mannwhitneyu(t, u, alternative="two-sided")
  return {"u": float(res.statistic), "p": float(res.pvalue), "n": len(t)}


def _claim3_raw(results) -> str:
  """Claim 3 by the earlier rule (h alone, no recency control)."""
  main = f"{MAIN_CARRY}/{MAIN_DISTANCE}"
  trained = results["arms"]["trained"]["correlations"][main]
  untrained = results["arms"]["untrained"]["correlations"][main]
  hits = [n for n, s in METRICS.items()
          if n not in SUBSET_METRICS and _significant(trained[n], s)]
  base_hits = [n for n, s in METRICS.items()
               if n not in SUBSET_METRICS and _significant(untrained[n], s)]
  aligned = trained["aligned_edit_distance"]["spearman"]
  strongest = max((abs(trained[n]["spearman"]["rho"]) for n in hits),
                  default=0.0)
  strength = (f" The effects are weak: the largest |rho| is {strongest:.2f}."
              if strongest < 0.3 else "")
  if hits:
    return (
        f"Not supported here: the trained controller's carry distances "
        f"track cell structure for {len(hits)} of 5 whole-matrix metrics "
        f"({', '.join(hits)}); e.g. aligned edit distance rho = "
        f"{aligned['rho']:.3f} (Mantel p = {aligned['p_mantel']:.3g}). "
        f"The untrained controller shows this for "
        f"{len(base_hits)} of 5 ({', '.join(base_hits) or 'none'}), so part "
        "of it may come from the LSTM architecture rather than training."
        + strength)
  return (
      "Consistent with the claim: no whole-matrix graph metric correlates "
      f"significantly with the trained controller's carry distances "
      f"(aligned edit distance rho = {aligned['rho']:.3f}, Mantel p = "
      f"{aligned['p_mantel']:.3g}).")


def _claim4_ridge(results) -> str:
  """Claim 4 by the ridge probes (which recency alone can satisfy)."""
  ridge = results["arms"]["trained"]["ridge"][MAIN_CARRY]
  good = {n: r["r2"] for n, r in ridge.items()
          if np.isfinite(r["r2"]) and r["r2"] > 0.1}
  if good:
    best = max(good, key=good.get)
    return (
        f"Not supported here: a cross-validated ridge probe predicts "
        f"{len(good)} cell properties from h with R^2 > 0.1 (best: {best}, "
        f"R^2 = {good[best]:.2f}), so the carry holds information about the "
        "decisions already taken.")
  return ("Consistent with the claim: no cell property is predictable from h "
          "(every cross-validated ridge R^2 <= 0.1).")


# ---------------------------------------------------------------------------
# Outputs.


def _fmt_corr(res):
  s = res["spearman"]
  ci = s.get("ci")
  ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and np.all(
      np.isfinite(ci)) else ""
  return f"{s['rho']:+.3f}{ci_text} (p={s['p_mantel']:.3g})"


def _table(results):
  """The main carry and distance: trained, untrained and permuted."""
  main = f"{MAIN_CARRY}/{MAIN_DISTANCE}"
  trained = results["arms"]["trained"]["correlations"][main]
  untrained = results["arms"]["untrained"]["correlations"][main]
  permuted = results["arms"]["trained"].get("permuted", {})
  rows = []
  for name, larger_similar in dict(METRICS, abs_ppl_difference=False).items():
    perm = permuted.get(name)
    rows.append([name, "similarity" if larger_similar else "distance",
                 _fmt_corr(trained[name]), _fmt_corr(untrained[name]),
                 _fmt_corr(perm) if perm else "n/a",
                 str(trained[name]["num_pairs"])])
  return reports.markdown_table(
      ["graph metric", "kind", "trained: rho [95% CI] (Mantel p)",
       "untrained", "trained, permuted pairs", "pairs"], rows)


def _other_carries_table(results):
  rows = []
  for arm in ARMS:
    for key, table in results["arms"][arm]["correlations"].items():
      rows.append([f"{arm} {key}"] + [
          f"{table[n]['spearman']['rho']:+.3f} "
          f"(p={table[n]['spearman']['p_mantel']:.2g})" for n in METRICS])
  return reports.markdown_table(["carry / distance", *METRICS], rows)


def _nn_table(results):
  rows = [[name, arm, f"{r['neighbour_mean']:.3f}", f"{r['random_mean']:.3f}",
           f"{r['p_value']:.3g}"]
          for arm in ARMS
          for name, r in results["arms"][arm]["nearest_neighbour"].items()]
  return reports.markdown_table(
      ["metric", "arm", "nearest-neighbour mean", "random-pair mean", "p"],
      rows)


def _ridge_table(results):
  arms = results["arms"]
  names = list(arms["trained"]["ridge"]["h"])
  rows = [[name] + [reports.number(arms[arm]["ridge"][c][name]["r2"], ".2f")
                    for arm in ARMS for c in CARRIES]
          for name in names]
  return reports.markdown_table(
      ["target"] + [f"{arm} {c}" for arm in ARMS for c in CARRIES], rows)


def write_outputs(results, raw, run_dir, preface: str = "") -> None:
  """``report.md``, ``figures/*.png`` and ``results.json`` in ``run_dir``.

  Args:
    results: :func:`analyse`'s.
    raw: the probe data it analysed.
    run_dir: where to write.
    preface: Markdown put at the top of ``report.md``, before the probe's own
      text; when given, the probe's headings move one level down (its title
      ``# Controller probe`` becomes a ``##`` section, its sections ``###``).
  """
  from nas_jax.analysis import figures  # matplotlib only when writing.
  names = figures.draw_all(results, raw, reports.figures_dir(run_dir))
  text = _report(results, names)
  if preface.strip():
    text = preface.rstrip() + "\n\n" + _demote_headings(text)
  reports.write(run_dir, results, text)


def _recency_table(results) -> str:
  rows = []
  for arm in ARMS:
    rec = results["arms"][arm]["recency"]
    for view in RECENCY_VIEWS:
      for name in WHOLE_METRICS:
        row = rec[view][name]
        g = row["given_last_decision"]
        cells = [arm, view.split("/")[0], name, _rho(g["rho"]),
                 f"{_rho(g['partial_rho'])} (Holm p={_pv(g['p_holm'])})"]
        cells += [_rho_p(row.get(f"prefix_k{k}")) for k in RECENCY_KS]
        rows.append(cells)
  return reports.markdown_table(
      ["controller", "carry", "metric", "rho",
       "partial rho given the last decision",
       *(f"prefix without last {k}" for k in RECENCY_KS)], rows)


def _rho_p(res) -> str:
  """``+0.123 (p=0.01)``; ``n/a`` where the prefix has no such test or its
  metric is constant."""
  if res is None or not np.isfinite(res["rho"]):
    return "n/a"
  return f"{_rho(res['rho'])} (p={_pv(res['p_mantel'])})"


def _rho(v) -> str:
  return reports.number(v, "+.3f")


def _pv(v) -> str:
  return reports.number(v, ".3g")


def _conditioning_table(results) -> str:
  arms = results["arms"]
  if "conditioning" not in arms["trained"]:
    return "Not measured (the probe data has no policy-conditioning KL)."
  curves = {a: arms[a]["conditioning"]["curve"] for a in ARMS}
  shown = [d for d in curves["trained"]["distance"] if d <= 6 or d % 4 == 0]
  rows = []
  for d in shown:
    i = curves["trained"]["distance"].index(d)
    rows.append([str(d)] + [
        f"{reports.number(curves[a]['mean'][i], '.3g')} "
        f"± {reports.number(curves[a]['sem'][i], '.2g')}" for a in ARMS])
  test = results.get("conditioning_test")
  tail = (f"\n\nMean KL at distance >= 2 per cell: trained "
          f"{arms['trained']['conditioning']['beyond_last_mean']:.3g}, "
          f"untrained {arms['untrained']['conditioning']['beyond_last_mean']:.3g}"
          f" nats (Mann-Whitney p = {_pv(test['p'])}, {test['n']} cells "
          "each)." if test else "")
  return reports.markdown_table(
      ["distance", "trained: mean KL ± s.e. (nats)", "untrained"], rows) + tail


def _conditioning_figure(names) -> str:
  name = names.get("conditioning")
  return f"![policy conditioning](figures/{name})" if name else ""


def _demote_headings(text: str) -> str:
  """Every Markdown heading of ``text`` one level deeper."""
  return "\n".join("#" + line if line.startswith("#") else line
                    for line in text.split("\n"))


def _distinct_cells(results) -> str:
  """E.g. ``trained: 98 distinct of 100 sampled cells; untrained: 100
  distinct of 100``."""
  k = results["num_cells"]
  parts = [f"{arm}: {results['arms'][arm]['unique_cells']} distinct of {k}"
           for arm in ARMS]
  parts[0] += " sampled cells"
  return "; ".join(parts)


def _ged_timeouts(results) -> str:
  """E.g. ``topological_ged: trained 0, untrained 2; labelled_ged: ...``."""
  return "; ".join(
      f"{name}: " + ", ".join(
          f"{arm} {results['arms'][arm]['ged_timeouts'][name]}"
          for arm in ARMS)
      for name in SUBSET_METRICS)


def _pca_text(results) -> str:
  """The variance on the first two principal components of h, per arm."""
  parts = []
  for arm in ARMS:
    ratio = results["carry_pca"][arm]["explained_variance_ratio"]
    shares = " and ".join(f"{100 * r:.1f}%" for r in ratio[:2])
    parts.append(f"{arm} {shares}")
  return "; ".join(parts)


def _tsne_text(results, names) -> str:
  from nas_jax.analysis import figures  # matplotlib only when writing.
  if names.get("tsne"):
    return (f"t-SNE of the same carries (scikit-learn, perplexity "
            f"{figures.tsne_perplexity(results['num_cells']):.1f}, "
            f"random_state {figures.TSNE_SEED}):\n\n"
            f"![tsne](figures/{names['tsne']})")
  return (f"t-SNE skipped: K = {results['num_cells']} cells, fewer than the "
          f"{figures.TSNE_MIN_CELLS} it needs.")


def _report(results, names) -> str:
  """The text of ``report.md``; ``names`` are the figures' file names."""
  v = results["verdicts"]
  tr = results["arms"]["trained"]
  un = results["arms"]["untrained"]
  return f"""# Controller probe

Run: `{results['run_dir']}`, checkpoint {results['checkpoint']}; the
controller was trained for {results['ctrl_steps']} REINFORCE steps
({results['epochs_trained']} epochs). K = {results['num_cells']} cells were
sampled in derive mode from the zero state, by the trained controller and by
the untrained one (its initial parameters), with the same keys
({_distinct_cells(results)}). The carry
analysed is the LSTM state after the last decision step's input: the state
the last decision's logits came from, so it has **not** seen the last
activation token. {results['num_pairs']} pairs; the networkx edit distances
cover a random subset of {results['ged_pairs']} pairs, the topological one
being the first value of `optimize_graph_edit_distance`, an upper bound blind
to activations, as the authors computed it. Pairs whose edit distance timed
out are left out of its rows: {_ged_timeouts(results)}. Mantel p-values use
{results['settings']['num_permutations']} permutations of the cells; 95%
CIs come from {results['settings']['num_bootstrap']} bootstrap resamples of
cells.

## Verdicts

These rest on {v['basis']}.

- **Claim 3 (the carry does not encode structure).** {v['claim3']}
- **Claim 4 (the controller does not condition on its past decisions).**
  {v['claim4']}

Rules: {v['rule3']}; {v['rule4']}.

By the earlier rules, which an untrained LSTM passes through recency alone
(an LSTM's carry always holds its last inputs): claim 3: {v['claim3_raw']}
Claim 4: {v['claim4_ridge']} (Rules: {v['rule3_raw']}; {v['rule4_ridge']}.)

## Recency controls: what survives without the last decision

For each carry (L2 distance) and metric: the plain Spearman rho; the partial
rho given whether two cells differ in the last decision the carry read (the
last parent choice), with its Holm-adjusted Mantel p (the verdict's test);
and the rho against the metric of the prefix without the last k read
decisions (the sub-cell of its complete nodes), with its Mantel p. Encoding
structure means a negative rho for similarities, positive for distances.

{_recency_table(results)}

## Policy conditioning: how far back does the policy look?

Teacher forced, each earlier decision of each cell is changed in turn to
another valid choice, and the KL divergence KL(original || changed) of every
later step's distribution is measured; per distance (steps after the
change), the mean over cells (each cell first averaged over its pairs) with
its standard error. Distance 1 is the decision just read (recency); larger
distances need memory.

{_conditioning_table(results)}

{_conditioning_figure(names)}

## Carry distance vs graph metrics (Spearman, h, L2)

Carries that encode structure give a **negative** rho for similarities and a
**positive** rho for distances. The permuted column shuffles which cell each
carry belongs to: what "no correlation" looks like.

{_table(results)}

![density](figures/{names['density']})

Each panel: one graph metric (the edit distances on their subset of pairs);
light points are pairs of cells (jittered), markers the median carry
distance per metric value (or quantile bin) with its interquartile range;
the legend gives each arm's rho and Mantel p.

![scatter](figures/{names['scatter']})

## Closest and farthest pairs of carries (trained)

![pairs](figures/{names['pairs']})

## Other carries and cosine distance (Spearman rho, Mantel p)

{_other_carries_table(results)}

## Nearest neighbours in carry space

Mean graph metric between each cell and its nearest cell in h (L2), against
random pairs.

{_nn_table(results)}

## Linear (ridge) probes: cross-validated R^2 from the carry

{_ridge_table(results)}

## Perplexity

Median shared-weight ppl of the sampled cells on the derive window: trained
{tr['ppl_median']:.1f}, untrained {un['ppl_median']:.1f}; cells whose ppl
overflowed to infinity (left out of the ppl rows): trained
{tr['ppl_non_finite']}, untrained {un['ppl_non_finite']}.

![ppl](figures/{names['ppl']})

## The carries in two dimensions (trained)

Share of the variance of h on the first two principal components:
{_pca_text(results)}. The third panel colours each cell by the last token h
has read (the parent of the last node); h has not read the last activation.

![pca](figures/{names['pca']})

{_tsne_text(results, names)}

## Per-step decisions from the zero state and from random states

The dotted line is a uniform choice at each step (max probability
1/choices, entropy log(choices)).

![steps](figures/{names['steps']})

Raw data: `probe.npz` (tokens, carries, per-step log-probs, entropies, max
probabilities, ppl, for both controllers); every number above is in
`results.json`.
"""
