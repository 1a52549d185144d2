"""Does the memory buffer make the controller's carry encode structure?

Host-side comparison of the ``memory_buffer`` experiment's runs: for each
seed, one search per arm (``none``: plain ENAS; ``clean`` / ``faithful``: with
the replay loss), each probed as in :mod:`nas_jax.analysis.probe_analysis`.
Reads every run's ``results.json`` (probe) and ``best_arch.json`` (derived
cell), and writes ``report.md``, ``results.json`` and ``figures/`` in the
experiment directory.

The quantity compared is the *encoding score* of each graph metric: the
Spearman rho between the trained controller's carry distances (h, L2) and
the metric, signed so that larger means "closer carries for more similar
cells" (rho for distances, ``-rho`` for similarities). Per seed, the change
is ``score(arm) - score(none)``; across seeds,
:func:`nas_jax.analysis.paired.paired_comparison` gives the mean change, a
bootstrap CI, the paired t-test and the Wilcoxon signed-rank test.

An LSTM's carry holds its last inputs, so the raw score can move with the
last decision alone. The verdict is therefore judged on memory: the
*recency-controlled score* (the probe's partial rho given the last decision
the carry read, signed the same way; :mod:`nas_jax.analysis.recency`) of
the primary metric, with the raw score and the *policy conditioning* (log10
of the probe's mean KL of later steps at least 2 decisions after a changed
one; :mod:`nas_jax.policy_probe`) beside it. Runs probed before these
measures existed fall back to the raw score, and the verdict says so.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from nas_jax import files
from nas_jax.analysis import paired
from nas_jax.analysis import probe_analysis
from nas_jax.analysis import reports

BASELINE = "none"
MAIN = f"{probe_analysis.MAIN_CARRY}/{probe_analysis.MAIN_DISTANCE}"
# Graph metric -> True when larger values mean more similar cells.
METRICS = dict(probe_analysis.METRICS, abs_ppl_difference=False)
# The metric the verdict is stated for (it sees prev and act tokens both);
# every other metric is reported beside it.
PRIMARY = "aligned_edit_distance"
ALPHA = 0.05


def _sign(name):
  return -1.0 if METRICS[name] else 1.0


def collect(workdir: str, arms: Sequence[str], seeds: Sequence[int]
            ) -> dict[str, dict[int, dict[str, Any]]]:
  """``arm -> seed ->`` the numbers of one run (see module doc)."""
  return {arm: {seed: _run_numbers(files.run_dir(workdir, arm, seed))
                for seed in seeds}
          for arm in arms}


def _run_numbers(directory: str) -> dict[str, Any]:
  """The numbers :func:`compare` needs from one run's probe and derive."""
  num = reports.float_or_nan
  probe = files.read_json(os.path.join(directory, files.RESULTS_FILE))
  best = files.read_json(os.path.join(directory, files.BEST_ARCH_FILE))
  corr = probe["arms"]["trained"]["correlations"][MAIN]
  untrained = probe["arms"]["untrained"]["correlations"][MAIN]
  run: dict[str, Any] = {"metrics": {}, "untrained": {}}
  for name in METRICS:
    s = corr[name]["spearman"]
    ci = s.get("ci") or [math.nan, math.nan]
    run["metrics"][name] = {
        "rho": num(s["rho"]), "ci": [num(v) for v in ci],
        "p_mantel": num(s["p_mantel"]), "score": _sign(name) * num(s["rho"])}
    run["untrained"][name] = num(untrained[name]["spearman"]["rho"])
  # Every carry / distance (h, c, [c, h]; L2, cosine), both coefficients.
  run["all"] = {
      variant: {name: {
          "spearman": num(v[name]["spearman"]["rho"]),
          "pearson": num(v[name]["pearson"]["r"]),
          "score": _sign(name) * num(v[name]["spearman"]["rho"])}
                for name in METRICS if name in v}
      for variant, v in probe["arms"]["trained"]["correlations"].items()}
  run["ridge_r2"] = {
      k: num(v["r2"]) for k, v in
      probe["arms"]["trained"]["ridge"][probe_analysis.MAIN_CARRY].items()}
  run["derived"] = {"arch": best["arch"], "valid_ppl": num(best["valid_ppl"]),
                    "test_ppl": num(best.get("test_ppl"))}
  run["unique_cells"] = probe["arms"]["trained"]["unique_cells"]
  trained = probe["arms"]["trained"]
  if "recency" in trained:
    run["recency_score"] = {
        name: _sign(name) * num(trained["recency"][MAIN][name][
            "given_last_decision"]["partial_rho"])
        for name in probe_analysis.WHOLE_METRICS}
  if "conditioning" in trained:
    mean = num(trained["conditioning"]["beyond_last_mean"])
    run["conditioning_log10"] = (math.log10(mean) if mean > 0
                                 else math.nan)
  return run


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
      comp["encoding_score"][name] = paired.paired_comparison(
          a, b, num_bootstrap=num_bootstrap, seed=seed)
    for variant, by_metric in base[seeds[0]]["all"].items():
      comp["all_correlations"][variant] = {}
      for name in by_metric:
        a = [base[s]["all"][variant][name]["score"] for s in seeds]
        b = [runs[arm][s]["all"][variant][name]["score"] for s in seeds]
        comp["all_correlations"][variant][name] = paired.paired_comparison(
            a, b, num_bootstrap=num_bootstrap, seed=seed)
    for key in ("valid_ppl", "test_ppl"):
      a = [base[s]["derived"][key] for s in seeds]
      b = [runs[arm][s]["derived"][key] for s in seeds]
      comp["derived"][key] = paired.paired_comparison(
          a, b, num_bootstrap=num_bootstrap, seed=seed)
    every = [runs[x][s] for x in (BASELINE, arm) for s in seeds]
    if all("recency_score" in r for r in every):
      comp["recency_score"] = {
          name: paired.paired_comparison(
              [base[s]["recency_score"][name] for s in seeds],
              [runs[arm][s]["recency_score"][name] for s in seeds],
              num_bootstrap=num_bootstrap, seed=seed)
          for name in probe_analysis.WHOLE_METRICS}
    if all("conditioning_log10" in r for r in every):
      comp["conditioning_log10"] = paired.paired_comparison(
          [base[s]["conditioning_log10"] for s in seeds],
          [runs[arm][s]["conditioning_log10"] for s in seeds],
          num_bootstrap=num_bootstrap, seed=seed)
    comp["verdict"] = verdict(comp, len(seeds))
    results["comparisons"][arm] = comp
  return results


def _describe(c) -> str:
  """``changed by +0.012 on average (95% bootstrap CI ...); it rose in 3 of
  6 seeds``."""
  lo, hi = c["ci"]
  up = sum(1 for d in c["differences"] if d > 0)
  return (f"changed by {c['mean_difference']:+.3f} on average (95% "
          f"bootstrap CI [{lo:+.3f}, {hi:+.3f}], paired t p = "
          f"{reports.number(c['p_t'], '.3g')}, Wilcoxon p = "
          f"{reports.number(c['p_wilcoxon'], '.3g')}); it rose in {up} of "
          f"{c['n']} seeds")


def verdict(comp, num_seeds) -> str:
  """The finding for one arm, from the primary metric's paired comparison:
  of its recency-controlled score where every run has one, else of the raw
  score (said so)."""
  del num_seeds  # Each comparison knows its n.
  controlled = "recency_score" in comp
  raw = comp["encoding_score"][PRIMARY]
  if controlled:
    c = comp["recency_score"][PRIMARY]
    text = (f"{PRIMARY}, beyond the last decision (partial rho given it): "
            f"the recency-controlled score {_describe(c)}. Without "
            f"the control, the raw score {_describe(raw)}. ")
  else:
    c = raw
    text = (f"{PRIMARY}: the encoding score {_describe(c)}. (These "
            "runs' probes have no recency control: this is the raw score, "
            "which the last decision alone can move.) ")
  lo, hi = c["ci"]
  if c["n"] < 2:
    return text + "Too few seeds for a test."
  if not np.isfinite(c["p_t"]):
    text += ("The paired t-test is undefined (every seed changed by the same "
             "amount); see the CI and the Wilcoxon p. ")
  what = "beyond the last decision" if controlled else "the correlation"
  if c["p_t"] < ALPHA and lo > 0:
    text += f"The buffer raised {what} (supported at alpha 0.05)."
  elif c["p_t"] < ALPHA and hi < 0:
    text += f"The buffer lowered {what} (the opposite of the claim)."
  else:
    text += ("No significant change at alpha 0.05: these seeds do not show "
             "that the buffer makes the carry encode structure"
             + (" beyond its last decision." if controlled else "."))
  if "conditioning_log10" in comp:
    k = comp["conditioning_log10"]
    text += (" Policy conditioning (log10 mean KL of later steps at least 2 "
             f"decisions after a changed one): {_describe(k)}.")
  if c["n"] < 6:
    text += (f" With {c['n']} seeds the Wilcoxon test cannot reach 0.05 "
             f"(smallest p = {2 / 2 ** c['n']:.3g}).")
  d = comp["derived"]["valid_ppl"]
  text += (f" Derived cell valid ppl changed by {d['mean_difference']:+.1f} "
           f"(CI [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}], paired t p = "
           f"{reports.number(d['p_t'], '.3g')}).")
  return text


# ---------------------------------------------------------------------------
# Outputs.


def _fmt(v, spec="+.3f"):
  """A number of this report: a signed correlation or change by default."""
  return reports.number(v, spec)


def _change(c, spec="+.3f"):
  """``mean [lo, hi]`` of a paired comparison."""
  return (f"{_fmt(c['mean_difference'], spec)} "
          f"[{_fmt(c['ci'][0], spec)}, {_fmt(c['ci'][1], spec)}]")


def _correlation_table(results):
  arms, seeds = results["arms"], results["seeds"]
  rows = []
  for name in METRICS:
    for s in seeds:
      cells = []
      for arm in arms:
        m = results["runs"][arm][str(s)]["metrics"][name]
        cells.append(f"{_fmt(m['rho'])} [{_fmt(m['ci'][0], '.2f')}, "
                     f"{_fmt(m['ci'][1], '.2f')}] "
                     f"(p={_fmt(m['p_mantel'], '.3g')})")
      rows.append([name, str(s), *cells])
  return reports.markdown_table(["graph metric", "seed", *arms], rows)


def _change_table(results, arm):
  comp = results["comparisons"][arm]["encoding_score"]
  seeds = results["seeds"]
  rows = []
  for name in METRICS:
    c = comp[name]
    # The finite differences, one per seed column (paired_comparison drops
    # the others: a row with a dropped seed is short).
    rows.append([name, " | ".join(_fmt(d) for d in c["differences"]),
                 _change(c), _fmt(c["p_t"], ".3g"),
                 _fmt(c["p_wilcoxon"], ".3g"), _fmt(c["cohens_dz"], ".2f")])
  return reports.markdown_table(
      ["graph metric", *(f"seed {s}" for s in seeds), "mean change [95% CI]",
       "paired t p", "Wilcoxon p", "d_z"], rows)


def _all_correlations_table(results, arm):
  """Every carry / distance: mean Spearman rho per arm, change of the score."""
  comp = results["comparisons"][arm]["all_correlations"]
  seeds = results["seeds"]
  rows = []
  for variant, by_metric in comp.items():
    for name, c in by_metric.items():
      rho = [np.nanmean([results["runs"][a][str(s)]["all"][variant][name]
                         ["spearman"] for s in seeds])
             for a in (BASELINE, arm)]
      rows.append([variant, name, _fmt(rho[0]), _fmt(rho[1]), _change(c),
                   _fmt(c["p_t"], ".3g"), _fmt(c["p_wilcoxon"], ".3g")])
  return reports.markdown_table(
      ["carry/distance", "graph metric", f"{BASELINE} rho (mean)",
       f"{arm} rho (mean)", "mean change of score [95% CI]", "paired t p",
       "Wilcoxon p"], rows)


def _derived_table(results):
  arms, seeds = results["arms"], results["seeds"]
  rows = []
  for s in seeds:
    cells = []
    for arm in arms:
      d = results["runs"][arm][str(s)]["derived"]
      cells.append(f"{_fmt(d['valid_ppl'], '.1f')} / "
                   f"{_fmt(d['test_ppl'], '.1f')}")
    rows.append([str(s), *cells])
  for arm in arms:
    if arm == BASELINE:
      continue
    for key in ("valid_ppl", "test_ppl"):
      c = results["comparisons"][arm]["derived"][key]
      rows.append([f"{arm} - {BASELINE}, {key}",
                   f"mean {_change(c, '+.1f')}, paired t p = "
                   f"{_fmt(c['p_t'], '.3g')}, Wilcoxon p = "
                   f"{_fmt(c['p_wilcoxon'], '.3g')}",
                   *[""] * (len(arms) - 1)])
  return reports.markdown_table(
      ["seed", *(f"{a} valid / test ppl" for a in arms)], rows)


def _ridge_table(results):
  arms, seeds = results["arms"], results["seeds"]
  first = results["runs"][arms[0]][str(seeds[0])]["ridge_r2"]
  rows = []
  for name in first:
    cells = []
    for arm in arms:
      values = [results["runs"][arm][str(s)]["ridge_r2"][name] for s in seeds]
      cells.append(_fmt(float(np.nanmean(values)), ".2f")
                   if np.any(np.isfinite(values)) else "n/a")
    rows.append([name, *cells])
  return reports.markdown_table(["target", *arms], rows)


def _side_by_side(results):
  """Each run's own probe figures, arms side by side (first seed)."""
  arms, s = results["arms"], results["seeds"][0]
  rows = [[fig] + [f"![{arm}]({arm}/seed_{s}/figures/{fig}.png)"
                   for arm in arms]
          for fig in ("hidden_vs_graph_metrics", "hidden_distance_density",
                      "per_step_decisions")]
  return reports.markdown_table(["figure", *arms], rows)


def write_outputs(results, workdir) -> None:
  """``report.md``, ``results.json`` and ``figures/`` in ``workdir``."""
  # matplotlib only when writing.
  from nas_jax.analysis import figures  # pylint: disable=g-import-not-at-top
  from nas_jax.analysis import search_report  # pylint: disable=g-import-not-at-top
  fig = figures.encoding_scores(results, METRICS,
                                reports.figures_dir(workdir))
  overview = search_report.runs_overview(workdir, [
      (f"{arm}, seed {s}", os.path.relpath(files.run_dir(workdir, arm, s),
                                           workdir))
      for s in results["seeds"] for arm in results["arms"]])
  reports.write(workdir, results, _report(results, fig, overview))


def _findings(results):
  """Per buffered arm: the verdict and the tables of changes."""
  return "\n\n".join(
      f"### {arm} vs {BASELINE}\n\n{results['comparisons'][arm]['verdict']}"
      f"\n\n{_recency_change_table(results, arm)}"
      f"Raw encoding scores (no recency control):\n\n"
      f"{_change_table(results, arm)}"
      for arm in results["arms"] if arm != BASELINE)


def _recency_change_table(results, arm) -> str:
  """The recency-controlled scores' changes and the policy conditioning's,
  or nothing for runs probed without them."""
  comp = results["comparisons"][arm]
  if "recency_score" not in comp:
    return ""
  rows = [[name, " | ".join(_fmt(d) for d in c["differences"]), _change(c),
           _fmt(c["p_t"], ".3g"), _fmt(c["p_wilcoxon"], ".3g")]
          for name, c in comp["recency_score"].items()]
  if "conditioning_log10" in comp:
    c = comp["conditioning_log10"]
    rows.append(["policy conditioning (log10 KL, distance >= 2)",
                 " | ".join(_fmt(d) for d in c["differences"]), _change(c),
                 _fmt(c["p_t"], ".3g"), _fmt(c["p_wilcoxon"], ".3g")])
  table = reports.markdown_table(
      ["recency-controlled score (h, partial rho given the last decision)",
       *(f"seed {s}" for s in results["seeds"]), "mean change [95% CI]",
       "paired t p", "Wilcoxon p"], rows)
  return table + "\n\n"


def _all_correlations(results):
  """Per buffered arm: every carry and distance."""
  return "\n\n".join(
      f"{arm} vs {BASELINE}:\n\n{_all_correlations_table(results, arm)}"
      for arm in results["arms"] if arm != BASELINE)


def _timing(results):
  timing = results.get("timing", {})
  return (f"Wall time of the command that wrote this report: "
          f"{timing['total_seconds'] / 60:.1f} min (runs it found "
          "finished were not redone)."
          if "total_seconds" in timing else "")


def _report(results, fig, overview) -> str:
  """The text of ``report.md``; ``fig`` is the figure's file name,
  ``overview`` the runs' section (``search_report.runs_overview``)."""
  arms, seeds = results["arms"], results["seeds"]
  return f"""# Memory buffer: does replay make the carry encode structure?

Arms: {', '.join(arms)}; seeds: {', '.join(str(s) for s in seeds)}; every run
has the same budget and data order (one search per arm and seed, then the
probe of its trained controller). {_timing(results)}

The *encoding score* of a graph metric is the Spearman rho between the
trained controller's carry distances (h after the last decision step's input,
L2) and the metric over all pairs of the probe's cells, signed so that larger
means "closer carries for more similar cells". The change per seed is
arm minus {BASELINE}; the tests are paired across seeds.

{overview}

## Findings

{_findings(results)}

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

{_all_correlations(results)}

## Derived cells (shared-weight perplexity of each run's final derive)

{_derived_table(results)}

## Ridge probes from h (cross-validated R^2, mean over seeds)

{_ridge_table(results)}

## Each run's probe figures, side by side (seed {seeds[0]})

{_side_by_side(results)}

Every run's own `report.md`, `results.json` and `probe.npz` are in
`ARM/seed_SEED/`; every number above is in `results.json`.
"""
