"""Does the controller's carry encode the structure of the cells it samples?

Host-side analysis of the arrays :mod:`nas_jax.probe` collects (claims 3 and
4 of DESIGN.md). For the trained controller and two controls (the untrained
controller, and the trained one with its cells' pairing shuffled), it
correlates pairwise distances of the carries with every graph metric of
:mod:`nas_jax.analysis.graph_metrics`, with Mantel permutation p-values and
bootstrap CIs over cells (:mod:`nas_jax.analysis.stats`), checks nearest
neighbours, fits ridge probes from the carry to cell properties and
perplexity, and writes ``report.md``, ``figures/*.png`` and ``results.json``.

The carry analysed (``h``, and ``c`` and ``[c, h]`` beside it) is the LSTM
state after the last decision step's input: the state the last decision's
logits came from, so it has **not** seen the last activation token.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from nas_jax.analysis import graph_metrics
from nas_jax.analysis import stats

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


def _carry(raw, arm, name):
  if name == "ch":
    return np.concatenate([raw[f"{arm}/c"], raw[f"{arm}/h"]], axis=-1)
  return raw[f"{arm}/{name}"]


def _distance(x, kind):
  if kind == "l2":
    return stats.pairwise_l2(x)
  return 1.0 - stats.pairwise_cosine_similarity(x)


def _graph_metrics(tokens, p, pairs):
  """name -> ``[K, K]`` matrix (NaN outside ``pairs`` for the edit distances)."""
  out = dict(graph_metrics.pairwise_all(tokens))
  k = tokens.shape[0]
  for name, fn in (("topological_ged", graph_metrics.topological_ged),
                   ("labelled_ged", graph_metrics.labelled_ged)):
    values = fn(tokens, pairs, timeout=p.ged_timeout)
    m = np.full((k, k), np.nan)
    m[pairs[:, 0], pairs[:, 1]] = values
    m[pairs[:, 1], pairs[:, 0]] = values
    np.fill_diagonal(m, 0.0)
    out[name] = m
  return out


def _correlate(dist, metric, name, p, pairs, full):
  kwargs = dict(num_permutations=p.num_permutations,
                num_bootstrap=p.num_bootstrap if full else 0, seed=p.seed)
  if name in SUBSET_METRICS:
    finite = np.isfinite(metric[pairs[:, 0], pairs[:, 1]])
    kwargs["pairs"] = pairs[finite]
  return stats.correlate(dist, metric, **kwargs)


def analyse(raw: dict[str, np.ndarray], p, run_dir: str) -> dict[str, Any]:
  """All statistics of the probe, as a JSON-able dict (see README schema)."""
  k = raw["trained/tokens"].shape[0]
  pairs = graph_metrics.sample_pairs(k, p.ged_max_pairs, p.seed)
  all_pairs = np.stack(stats.pairs_index(k), axis=1)
  results: dict[str, Any] = {
      "run_dir": run_dir, "checkpoint": str(raw["checkpoint"]),
      "epochs_trained": int(raw["epochs_trained"]),
      "ctrl_steps": int(raw["ctrl_steps"]), "num_cells": k,
      "num_pairs": k * (k - 1) // 2, "ged_pairs": int(len(pairs)),
      "settings": p.to_dict(), "arms": {}}
  for arm in ARMS:
    tokens = raw[f"{arm}/tokens"]
    metrics = _graph_metrics(tokens, p, pairs)
    props = graph_metrics.cell_properties(tokens)
    finite = np.isfinite(raw[f"{arm}/ppl"])
    arm_res: dict[str, Any] = {
        "unique_cells": len({tuple(t) for t in tokens}),
        "ppl_median": float(np.median(raw[f"{arm}/ppl"])),
        "ppl_non_finite": int(np.sum(~finite)),
        "ged_timeouts": {n: int(np.sum(~np.isfinite(
            metrics[n][pairs[:, 0], pairs[:, 1]]))) for n in SUBSET_METRICS},
        "correlations": {}, "nearest_neighbour": {}, "ridge": {}}
    for carry in CARRIES:
      x = _carry(raw, arm, carry)
      for kind in ("l2", "cosine"):
        dist = _distance(x, kind)
        full = (carry, kind) == (MAIN_CARRY, MAIN_DISTANCE)
        table = {}
        for name in METRICS:
          table[name] = _correlate(dist, metrics[name], name, p, pairs, full)
        if full:
          main_dist = dist
          # Cells whose shared-weight ppl overflowed (inf) have no finite
          # difference: only pairs of finite-ppl cells enter.
          ppl = raw[f"{arm}/ppl"]
          diff = np.abs(np.where(finite, ppl, 0.0)[:, None]
                        - np.where(finite, ppl, 0.0)[None, :])
          keep = finite[all_pairs[:, 0]] & finite[all_pairs[:, 1]]
          table["abs_ppl_difference"] = stats.correlate(
              dist, diff, pairs=all_pairs[keep],
              num_permutations=p.num_permutations,
              num_bootstrap=p.num_bootstrap, seed=p.seed)
        arm_res["correlations"][f"{carry}/{kind}"] = table
    for name, larger_similar in METRICS.items():
      if name in SUBSET_METRICS:
        continue
      arm_res["nearest_neighbour"][name] = stats.nearest_neighbour_check(
          main_dist, metrics[name], larger_is_similar=larger_similar,
          seed=p.seed)
    if arm == "trained":
      arm_res["permuted"] = {
          name: stats.permuted_pairs_control(main_dist, metrics[name],
                                             seed=p.seed)
          for name in METRICS if name not in SUBSET_METRICS}
    targets = dict(props)
    for carry in CARRIES:
      x = _carry(raw, arm, carry)
      arm_res["ridge"][carry] = {
          name: stats.ridge_cv(x, np.asarray(y, np.float64), seed=p.seed)
          for name, y in targets.items()}
      # log ppl on the cells where it is finite.
      arm_res["ridge"][carry]["log_ppl"] = stats.ridge_cv(
          x[finite], np.log(raw[f"{arm}/ppl"][finite]), seed=p.seed)
    arm_res["per_step"] = {
        "zero_state_entropy": raw[f"{arm}/entropies"].mean(0).tolist(),
        "zero_state_max_prob": raw[f"{arm}/max_prob"].mean(0).tolist(),
        "random_state_entropy":
            raw[f"{arm}/random_init_entropies"].mean(0).tolist(),
        "random_state_max_prob":
            raw[f"{arm}/random_init_max_prob"].mean(0).tolist(),
    }
    # For figures; keys starting with "_" are dropped from results.json.
    arm_res["_matrices"] = metrics
    arm_res["_hidden_l2"] = main_dist
    arm_res["_properties"] = props
    results["arms"][arm] = arm_res
  results["verdicts"] = verdicts(results)
  return results


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
    claim3 = (
        f"Not supported here: the trained controller's carry distances "
        f"track cell structure for {len(hits)} of 5 whole-matrix metrics "
        f"({', '.join(hits)}); e.g. aligned edit distance rho = "
        f"{aligned['rho']:.3f} (Mantel p = {aligned['p_mantel']:.3g}). "
        f"The untrained controller shows this for "
        f"{len(base_hits)} of 5 ({', '.join(base_hits) or 'none'}), so part "
        "of it may come from the LSTM architecture rather than training."
        + strength)
  else:
    claim3 = (
        "Consistent with the claim: no whole-matrix graph metric correlates "
        f"significantly with the trained controller's carry distances "
        f"(aligned edit distance rho = {aligned['rho']:.3f}, Mantel p = "
        f"{aligned['p_mantel']:.3g}).")
  ridge = results["arms"]["trained"]["ridge"][MAIN_CARRY]
  good = {n: r["r2"] for n, r in ridge.items()
          if np.isfinite(r["r2"]) and r["r2"] > 0.1}
  if good:
    best = max(good, key=good.get)
    claim4 = (
        f"Not supported here: a cross-validated ridge probe predicts "
        f"{len(good)} cell properties from h with R^2 > 0.1 (best: {best}, "
        f"R^2 = {good[best]:.2f}), so the carry holds information about the "
        "decisions already taken.")
  else:
    claim4 = (
        "Consistent with the claim: no cell property is predictable from h "
        "(every cross-validated ridge R^2 <= 0.1).")
  return {"claim3": claim3, "claim4": claim4,
          "rule3": "a metric counts when its Spearman rho with the h L2 "
                   f"distance has Mantel p < {ALPHA}, a bootstrap CI excluding "
                   "0, and the sign of 'closer carries, more similar cells'",
          "rule4": "a property counts when the nested-CV ridge R^2 from h "
                   "exceeds 0.1"}


# ---------------------------------------------------------------------------
# Outputs.


def _fmt_corr(res):
  s = res["spearman"]
  ci = s.get("ci")
  ci_text = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and np.all(
      np.isfinite(ci)) else ""
  return f"{s['rho']:+.3f}{ci_text} (p={s['p_mantel']:.3g})"


def _table(results):
  main = f"{MAIN_CARRY}/{MAIN_DISTANCE}"
  tr = results["arms"]["trained"]
  un = results["arms"]["untrained"]
  lines = [
      "| graph metric | kind | trained: rho [95% CI] (Mantel p) | "
      "untrained | trained, permuted pairs | pairs |",
      "|---|---|---|---|---|---|"]
  for name, larger_similar in METRICS.items():
    kind = "similarity" if larger_similar else "distance"
    perm = tr.get("permuted", {}).get(name)
    perm_text = _fmt_corr(perm) if perm else "n/a"
    lines.append(
        f"| {name} | {kind} | {_fmt_corr(tr['correlations'][main][name])} | "
        f"{_fmt_corr(un['correlations'][main][name])} | {perm_text} | "
        f"{tr['correlations'][main][name]['num_pairs']} |")
  lines.append(
      f"| abs_ppl_difference | distance | "
      f"{_fmt_corr(tr['correlations'][main]['abs_ppl_difference'])} | "
      f"{_fmt_corr(un['correlations'][main]['abs_ppl_difference'])} | n/a | "
      f"{tr['correlations'][main]['abs_ppl_difference']['num_pairs']} |")
  return "\n".join(lines)


def _other_carries_table(results):
  lines = ["| carry / distance | " + " | ".join(METRICS) + " |",
           "|---|" + "---|" * len(METRICS)]
  for arm in ARMS:
    for key, table in results["arms"][arm]["correlations"].items():
      cells = [f"{table[n]['spearman']['rho']:+.3f} "
               f"(p={table[n]['spearman']['p_mantel']:.2g})" for n in METRICS]
      lines.append(f"| {arm} {key} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _nn_table(results):
  lines = ["| metric | arm | nearest-neighbour mean | random-pair mean | p |",
           "|---|---|---|---|---|"]
  for arm in ARMS:
    for name, r in results["arms"][arm]["nearest_neighbour"].items():
      lines.append(f"| {name} | {arm} | {r['neighbour_mean']:.3f} | "
                   f"{r['random_mean']:.3f} | {r['p_value']:.3g} |")
  return "\n".join(lines)


def _ridge_table(results):
  names = list(results["arms"]["trained"]["ridge"]["h"])
  lines = ["| target | " + " | ".join(
      f"{arm} {c}" for arm in ARMS for c in CARRIES) + " |",
           "|---|" + "---|" * (len(ARMS) * len(CARRIES))]
  for name in names:
    cells = []
    for arm in ARMS:
      for c in CARRIES:
        r2 = results["arms"][arm]["ridge"][c][name]["r2"]
        cells.append("n/a" if not np.isfinite(r2) else f"{r2:.2f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()
            if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _jsonable(obj.tolist())
  if isinstance(obj, (np.floating, float)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, np.bool_):
    return bool(obj)
  return obj


def write_outputs(results, raw, run_dir) -> None:
  """``report.md``, ``figures/*.png`` and ``results.json`` in ``run_dir``."""
  from nas_jax.analysis import figures  # matplotlib only when writing.
  fig_dir = os.path.join(run_dir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  names = figures.draw_all(results, raw, fig_dir)
  with open(os.path.join(run_dir, "results.json"), "w") as f:
    json.dump(_jsonable(results), f, indent=1)
  v = results["verdicts"]
  tr = results["arms"]["trained"]
  un = results["arms"]["untrained"]
  report = f"""# Controller probe

Run: `{results['run_dir']}`, checkpoint {results['checkpoint']}; the
controller was trained for {results['ctrl_steps']} REINFORCE steps
({results['epochs_trained']} epochs). K = {results['num_cells']} cells were
sampled in derive mode from the zero state, by the trained controller and by
the untrained one (its initial parameters), with the same keys:
{tr['unique_cells']} and {un['unique_cells']} distinct cells. The carry
analysed is the LSTM state after the last decision step's input: the state
the last decision's logits came from, so it has **not** seen the last
activation token. {results['num_pairs']} pairs; the networkx edit distances
cover a random subset of {results['ged_pairs']} pairs (timeouts:
trained {tr['ged_timeouts']}, untrained {un['ged_timeouts']}; the
topological one is the first value of `optimize_graph_edit_distance`, an upper
bound blind to activations, as the authors computed it). Mantel p-values use
{results['settings']['num_permutations']} permutations of the cells; 95%
CIs come from {results['settings']['num_bootstrap']} bootstrap resamples of
cells.

## Verdicts

- **Claim 3 (the carry does not encode structure).** {v['claim3']}
- **Claim 4 (the controller does not condition on its past decisions).**
  {v['claim4']}

Rules: {v['rule3']}; {v['rule4']}.

## Carry distance vs graph metrics (Spearman, h, L2)

Carries that encode structure give a **negative** rho for similarities and a
**positive** rho for distances. The permuted column shuffles which cell each
carry belongs to: what "no correlation" looks like.

{_table(results)}

![density](figures/{names['density']})

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

![pca](figures/{names['pca']})

## Per-step decisions from the zero state and from random states

![steps](figures/{names['steps']})

Raw data: `probe.npz` (tokens, carries, per-step log-probs, entropies, max
probabilities, ppl, for both controllers); every number above is in
`results.json`.
"""
  with open(os.path.join(run_dir, "report.md"), "w") as f:
    f.write(report)

