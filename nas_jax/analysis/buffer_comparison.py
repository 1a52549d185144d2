"""Does the memory buffer make the controller's carry encode structure?

Host-side comparison of the ``memory_buffer`` experiment's runs: for each
seed, one search per arm (``none``: plain ENAS; ``clean`` / ``faithful``: with
the replay loss), each probed as in :mod:`nas_jax.analysis.probe`. Reads
every run's ``results.json`` (probe) and ``best_arch.json`` (derived cell),
and writes ``report.md``, ``results.json`` and ``figures/`` in the
experiment directory.

The quantity compared is the *encoding score* of each graph metric: the
Spearman rho between the trained controller's carry distances (h, L2) and
the metric, signed so that larger means "closer carries for more similar
cells" (rho for distances, ``-rho`` for similarities). Per seed, the change
is ``score(arm) - score(none)``; across seeds,
:func:`nas_jax.analysis.stats.paired_comparison` gives the mean change, a
bootstrap CI, the paired t-test and the Wilcoxon signed-rank test.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from nas_jax.analysis import probe as probe_analysis
from nas_jax.analysis import stats

BASELINE = "none"
MAIN = f"{probe_analysis.MAIN_CARRY}/{probe_analysis.MAIN_DISTANCE}"
# Graph metric -> True when larger values mean more similar cells.
METRICS = dict(probe_analysis.METRICS, abs_ppl_difference=False)
# The metric the verdict is stated for (it sees prev and act tokens both);
# every other metric is reported beside it.
PRIMARY = "aligned_edit_distance"
ALPHA = 0.05


def run_dir(workdir: str, arm: str, seed: int) -> str:
  return os.path.join(workdir, arm, f"seed_{seed}")


def _load(path):
  with open(path) as f:
    return json.load(f)


def _sign(name):
  return -1.0 if METRICS[name] else 1.0


def collect(workdir: str, arms: Sequence[str], seeds: Sequence[int]
            ) -> dict[str, dict[int, dict[str, Any]]]:
  """``arm -> seed ->`` the numbers of one run (see module doc)."""
  out: dict[str, dict[int, dict[str, Any]]] = {}
  for arm in arms:
    out[arm] = {}
    for seed in seeds:
      d = run_dir(workdir, arm, seed)
      probe = _load(os.path.join(d, "results.json"))
      best = _load(os.path.join(d, "best_arch.json"))
      corr = probe["arms"]["trained"]["correlations"][MAIN]
      untrained = probe["arms"]["untrained"]["correlations"][MAIN]
      run: dict[str, Any] = {"metrics": {}, "untrained": {}}
      for name in METRICS:
        s = corr[name]["spearman"]
        ci = s.get("ci") or [math.nan, math.nan]
        run["metrics"][name] = {
            "rho": _num(s["rho"]), "ci": [_num(v) for v in ci],
            "p_mantel": _num(s["p_mantel"]),
            "score": _sign(name) * _num(s["rho"])}
        run["untrained"][name] = _num(untrained[name]["spearman"]["rho"])
      # Every carry / distance (h, c, [c, h]; L2, cosine), both coefficients.
      run["all"] = {
          variant: {name: {
              "spearman": _num(v[name]["spearman"]["rho"]),
              "pearson": _num(v[name]["pearson"]["r"]),
              "score": _sign(name) * _num(v[name]["spearman"]["rho"])}
                    for name in METRICS if name in v}
          for variant, v in
          probe["arms"]["trained"]["correlations"].items()}
      run["ridge_r2"] = {
          k: _num(v["r2"]) for k, v in
          probe["arms"]["trained"]["ridge"][probe_analysis.MAIN_CARRY].items()}
      run["derived"] = {"arch": best["arch"],
                        "valid_ppl": _num(best["valid_ppl"]),
                        "test_ppl": _num(best.get("test_ppl"))}
      run["unique_cells"] = probe["arms"]["trained"]["unique_cells"]
      out[arm][seed] = run
  return out


def _num(v):
  return math.nan if v is None else float(v)


def compare(runs, arms: Sequence[str], seeds: Sequence[int], *,
            num_bootstrap: int = 10_000, seed: int = 0) -> dict[str, Any]:
  """Paired comparisons of every buffered arm against ``none``."""
  results: dict[str, Any] = {"arms": list(arms), "seeds": list(seeds),
                             "primary_metric": PRIMARY, "alpha": ALPHA,
                             "runs": {a: {str(s): r for s, r in by_seed.items()}
                                      for a, by_seed in runs.items()},
                             "comparisons": {}}
  base = runs[BASELINE]
  for arm in arms:
    if arm == BASELINE:
      continue
    comp: dict[str, Any] = {"encoding_score": {}, "derived": {},
                            "all_correlations": {}}
    for name in METRICS:
      a = [base[s]["metrics"][name]["score"] for s in seeds]
      b = [runs[arm][s]["metrics"][name]["score"] for s in seeds]
      comp["encoding_score"][name] = stats.paired_comparison(
          a, b, num_bootstrap=num_bootstrap, seed=seed)
    for variant, by_metric in base[seeds[0]]["all"].items():
      comp["all_correlations"][variant] = {}
      for name in by_metric:
        a = [base[s]["all"][variant][name]["score"] for s in seeds]
        b = [runs[arm][s]["all"][variant][name]["score"] for s in seeds]
        comp["all_correlations"][variant][name] = stats.paired_comparison(
            a, b, num_bootstrap=num_bootstrap, seed=seed)
    for key in ("valid_ppl", "test_ppl"):
      a = [base[s]["derived"][key] for s in seeds]
      b = [runs[arm][s]["derived"][key] for s in seeds]
      comp["derived"][key] = stats.paired_comparison(
          a, b, num_bootstrap=num_bootstrap, seed=seed)
    comp["verdict"] = verdict(comp, len(seeds))
    results["comparisons"][arm] = comp
  return results


def verdict(comp, num_seeds) -> str:
  """The finding for one arm, from the primary metric's paired comparison."""
  c = comp["encoding_score"][PRIMARY]
  lo, hi = c["ci"]
  up = sum(1 for d in c["differences"] if d > 0)
  p_t, p_w = _fmt(c["p_t"], ".3g"), _fmt(c["p_wilcoxon"], ".3g")
  text = (f"{PRIMARY}: the encoding score changed by {c['mean_difference']:+.3f} "
          f"on average (95% bootstrap CI [{lo:+.3f}, {hi:+.3f}], paired t p = "
          f"{p_t}, Wilcoxon p = {p_w}); it rose in {up} of {c['n']} seeds. ")
  if c["n"] < 2:
    return text + "Too few seeds for a test."
  if not np.isfinite(c["p_t"]):
    text += ("The paired t-test is undefined (every seed changed by the same "
             "amount); see the CI and the Wilcoxon p. ")
  if c["p_t"] < ALPHA and lo > 0:
    text += "The buffer raised the correlation (supported at alpha 0.05)."
  elif c["p_t"] < ALPHA and hi < 0:
    text += "The buffer lowered the correlation (the opposite of the claim)."
  else:
    text += ("No significant change at alpha 0.05: these seeds do not show "
             "that the buffer makes the carry encode structure.")
  if c["n"] < 6:
    text += (f" With {c['n']} seeds the Wilcoxon test cannot reach 0.05 "
             f"(smallest p = {2 / 2 ** c['n']:.3g}).")
  d = comp["derived"]["valid_ppl"]
  text += (f" Derived cell valid ppl changed by {d['mean_difference']:+.1f} "
           f"(CI [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}], paired t p = "
           f"{_fmt(d['p_t'], '.3g')}).")
  return text


# ---------------------------------------------------------------------------
# Outputs.


def _fmt(v, spec="+.3f"):
  return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


def _correlation_table(results):
  arms, seeds = results["arms"], results["seeds"]
  lines = ["| graph metric | seed | " + " | ".join(arms) + " |",
           "|---|---|" + "---|" * len(arms)]
  for name in METRICS:
    for s in seeds:
      cells = []
      for arm in arms:
        m = results["runs"][arm][str(s)]["metrics"][name]
        cells.append(f"{_fmt(m['rho'])} [{_fmt(m['ci'][0], '.2f')}, "
                     f"{_fmt(m['ci'][1], '.2f')}] (p={_fmt(m['p_mantel'], '.3g')})")
      lines.append(f"| {name} | {s} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _change_table(results, arm):
  comp = results["comparisons"][arm]["encoding_score"]
  seeds = results["seeds"]
  lines = ["| graph metric | " + " | ".join(f"seed {s}" for s in seeds)
           + " | mean change [95% CI] | paired t p | Wilcoxon p | d_z |",
           "|---|" + "---|" * (len(seeds) + 4)]
  for name in METRICS:
    c = comp[name]
    diffs = " | ".join(_fmt(d) for d in c["differences"])
    lines.append(
        f"| {name} | {diffs} | {_fmt(c['mean_difference'])} "
        f"[{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}] | {_fmt(c['p_t'], '.3g')} | "
        f"{_fmt(c['p_wilcoxon'], '.3g')} | {_fmt(c['cohens_dz'], '.2f')} |")
  return "\n".join(lines)


def _all_correlations_table(results, arm):
  """Every carry / distance: mean Spearman rho per arm, change of the score."""
  comp = results["comparisons"][arm]["all_correlations"]
  seeds = results["seeds"]
  lines = [f"| carry/distance | graph metric | {BASELINE} rho (mean) | {arm} rho "
           "(mean) | mean change of score [95% CI] | paired t p | Wilcoxon p |",
           "|---|---|---|---|---|---|---|"]
  for variant, by_metric in comp.items():
    for name, c in by_metric.items():
      rho = [np.nanmean([results["runs"][a][str(s)]["all"][variant][name]
                         ["spearman"] for s in seeds])
             for a in (BASELINE, arm)]
      lines.append(
          f"| {variant} | {name} | {_fmt(rho[0])} | {_fmt(rho[1])} | "
          f"{_fmt(c['mean_difference'])} [{_fmt(c['ci'][0])}, "
          f"{_fmt(c['ci'][1])}] | {_fmt(c['p_t'], '.3g')} | "
          f"{_fmt(c['p_wilcoxon'], '.3g')} |")
  return "\n".join(lines)


def _derived_table(results):
  arms, seeds = results["arms"], results["seeds"]
  lines = ["| seed | " + " | ".join(f"{a} valid / test ppl" for a in arms)
           + " |", "|---|" + "---|" * len(arms)]
  for s in seeds:
    cells = []
    for arm in arms:
      d = results["runs"][arm][str(s)]["derived"]
      cells.append(f"{_fmt(d['valid_ppl'], '.1f')} / {_fmt(d['test_ppl'], '.1f')}")
    lines.append(f"| {s} | " + " | ".join(cells) + " |")
  for arm in arms:
    if arm == BASELINE:
      continue
    for key in ("valid_ppl", "test_ppl"):
      c = results["comparisons"][arm]["derived"][key]
      lines.append(
          f"| {arm} - {BASELINE}, {key} | mean {_fmt(c['mean_difference'], '+.1f')} "
          f"[{_fmt(c['ci'][0], '+.1f')}, {_fmt(c['ci'][1], '+.1f')}], paired t "
          f"p = {_fmt(c['p_t'], '.3g')}, Wilcoxon p = "
          f"{_fmt(c['p_wilcoxon'], '.3g')} |" + " |" * (len(arms) - 1))
  return "\n".join(lines)


def _ridge_table(results):
  arms, seeds = results["arms"], results["seeds"]
  first = results["runs"][arms[0]][str(seeds[0])]["ridge_r2"]
  lines = ["| target | " + " | ".join(arms) + " |",
           "|---|" + "---|" * len(arms)]
  for name in first:
    cells = []
    for arm in arms:
      values = [results["runs"][arm][str(s)]["ridge_r2"][name] for s in seeds]
      cells.append(_fmt(float(np.nanmean(values)), ".2f")
                   if np.any(np.isfinite(values)) else "n/a")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _figure(results, fig_dir) -> str:
  import matplotlib  # Host-side, only when writing.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  arms, seeds = results["arms"], results["seeds"]
  names = list(METRICS)
  cols = 4
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows),
                           squeeze=False)
  for ax, name in zip(axes.ravel(), names):
    for s in seeds:
      y = [results["runs"][a][str(s)]["metrics"][name]["score"] for a in arms]
      ax.plot(range(len(arms)), y, "o-", alpha=0.7, label=f"seed {s}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_title(name, fontsize=9)
    ax.set_ylabel("encoding score")
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Carry (h, L2) vs graph metric: signed Spearman rho per seed "
               "(higher = more structure)", fontsize=10)
  fig.tight_layout()
  name = "encoding_score_by_arm.png"
  fig.savefig(os.path.join(fig_dir, name), dpi=110)
  plt.close(fig)
  return name


def _side_by_side(results):
  """Each run's own probe figures, arms side by side (first seed)."""
  arms, s = results["arms"], results["seeds"][0]
  lines = ["| figure | " + " | ".join(arms) + " |",
           "|---|" + "---|" * len(arms)]
  for fig in ("hidden_vs_graph_metrics", "hidden_distance_density",
              "per_step_decisions"):
    cells = [f"![{arm}]({arm}/seed_{s}/figures/{fig}.png)" for arm in arms]
    lines.append(f"| {fig} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_outputs(results, workdir) -> None:
  """``report.md``, ``results.json`` and ``figures/`` in ``workdir``."""
  fig_dir = os.path.join(workdir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  fig = _figure(results, fig_dir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(probe_analysis._jsonable(results), f, indent=1)
  arms, seeds = results["arms"], results["seeds"]
  changes = "\n\n".join(
      f"### {arm} vs {BASELINE}\n\n{results['comparisons'][arm]['verdict']}"
      f"\n\n{_change_table(results, arm)}"
      for arm in arms if arm != BASELINE)
  all_tables = "\n\n".join(
      f"{arm} vs {BASELINE}:\n\n{_all_correlations_table(results, arm)}"
      for arm in arms if arm != BASELINE)
  timing = results.get("timing", {})
  timing_text = (f"Wall time of the command that wrote this report: "
                 f"{timing['total_seconds'] / 60:.1f} min (runs it found "
                 "finished were not redone)."
                 if "total_seconds" in timing else "")
  report = f"""# Memory buffer: does replay make the carry encode structure?

Arms: {', '.join(arms)}; seeds: {', '.join(str(s) for s in seeds)}; every run
has the same budget and data order (one search per arm and seed, then the
probe of its trained controller). {timing_text}

The *encoding score* of a graph metric is the Spearman rho between the
trained controller's carry distances (h after the last decision step's input,
L2) and the metric over all pairs of the probe's cells, signed so that larger
means "closer carries for more similar cells". The change per seed is
arm minus {BASELINE}; the tests are paired across seeds.

## Findings

{changes}

## Probe correlations per run (Spearman rho [95% bootstrap CI over cells], Mantel p)

Raw rho, not signed: similarities encode structure with rho < 0, distances
with rho > 0.

{_correlation_table(results)}

![scores](figures/{fig})

## Every carry and distance (Spearman rho, mean over seeds)

The probe correlates every carry (h, c, [c, h]) under L2 and cosine
distance; the change is that of the signed score, paired across seeds (no
correction for the many comparisons: the primary one is h/l2
{PRIMARY}). Pearson r and every CI are in `results.json`.

{all_tables}

## Derived cells (shared-weight perplexity of each run's final derive)

{_derived_table(results)}

## Ridge probes from h (cross-validated R^2, mean over seeds)

{_ridge_table(results)}

## Each run's probe figures, side by side (seed {seeds[0]})

{_side_by_side(results)}

Every run's own `report.md`, `results.json` and `probe.npz` are in
`ARM/seed_SEED/`; every number above is in `results.json`.
"""
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(report)
