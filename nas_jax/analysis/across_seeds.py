"""Claims 3 and 4 judged over seeds: trained vs untrained controller, paired.

The ``enas_probe`` experiment with several seeds (``config.seeds``) runs one
search per seed and probes each (:mod:`nas_jax.analysis.probe_analysis`: the
trained controller and the untrained one, its initial parameters, same
keys). One search's verdicts are tests over cells: they say whether *this*
controller differs from *its* untrained twin, not whether training does.
Here every seed gives one number per controller and the two are compared
paired over seeds (:func:`nas_jax.analysis.paired.paired_comparison`:
mean difference trained - untrained, 95% bootstrap CI over seeds, paired
t-test, Wilcoxon signed-rank test). The verdicts rest on effect sizes, not
on counts of significant tests.

* **Claim 3** (the carry does not encode the cell's structure): the
  *recency-controlled score* of every carry view (h, c, [c, h]; L2) and
  whole-matrix graph metric: the partial Spearman rho of carry distance and
  metric given whether two cells differ in the last decision the carry read
  (:func:`nas_jax.analysis.recency.partial_mantel`), signed so that larger
  means "closer carries for more similar cells". Holm's correction runs over
  the ``3 x 5`` paired t-tests. The raw score (h, L2, no control) is
  reported beside it, and the trained controller's own score against 0
  (does its carry hold structure beyond the last decision at all, whatever
  training did?).
* **Claim 4** (the policy does not condition on past decisions): the
  probe's policy conditioning, the mean KL of the later steps' distributions
  at least 2 decisions after a changed one
  (:func:`nas_jax.policy_probe.kl_by_distance`), compared on ``log10``
  (the ratio trained / untrained); its absolute size is the *extra* KL
  (trained - untrained) as a share of the trained policy's mean step
  entropy, with its bootstrap CI over seeds.

Outputs (``write_outputs``): ``report.md``, ``results.json`` and
``figures/across_seeds.png`` in the experiment's directory; each seed's own
run directory keeps its full report. ``results.json`` holds ``seeds``,
``alpha``, ``num_cells`` (per seed), ``runs`` (seed -> the numbers read
from that run), ``claim3`` (``recency_score``: view -> metric -> paired
comparison, with ``p_holm``; ``raw_score``: metric -> paired comparison;
``trained_recency_score``: the trained controller's score of h vs the
primary metric against 0, one-sample), ``claim4`` (``log10_kl``,
``entropy_share``: paired comparisons), ``verdicts`` and ``timing``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from nas_jax import files
from nas_jax import settings
from nas_jax.analysis import paired
from nas_jax.analysis import probe_analysis
from nas_jax.analysis import recency
from nas_jax.analysis import reports

ALPHA = probe_analysis.ALPHA
VIEWS = probe_analysis.RECENCY_VIEWS
METRICS = probe_analysis.WHOLE_METRICS
MAIN_VIEW = f"{probe_analysis.MAIN_CARRY}/{probe_analysis.MAIN_DISTANCE}"
# The metric the report leads with (it sees prev and act tokens both).
PRIMARY = "aligned_edit_distance"
# Policy conditioning is measured this many decisions after the change.
BEYOND = probe_analysis.CONDITIONING_BEYOND


def _sign(name: str) -> float:
  """+1 when a larger metric means less similar cells (a distance)."""
  return -1.0 if probe_analysis.METRICS[name] else 1.0


def read_run(directory: str) -> dict[str, Any]:
  """The numbers this comparison needs from one probed search run.

  Raises:
    settings.ConfigError: the run's probe predates the recency controls or
      the policy conditioning (re-probe it: ``--experiment=probe``).
  """
  num = reports.float_or_nan
  probe = files.read_json(os.path.join(directory, files.RESULTS_FILE))
  arms = probe["arms"]
  if any("recency" not in arms[a] or "conditioning" not in arms[a]
         for a in probe_analysis.ARMS):
    raise settings.ConfigError(
        f"{directory}: its probe has no recency controls or policy "
        "conditioning (probed by an older version); re-probe it with "
        "python launch.py --experiment=probe[:PRESET, the experiment's] "
        f"--config.run_dir={directory}")
  run: dict[str, Any] = {"num_cells": probe["num_cells"]}
  for arm in probe_analysis.ARMS:
    a = arms[arm]
    run[arm] = {
        "recency_score": {
            view: {name: _sign(name) * num(a["recency"][view][name][
                "given_last_decision"]["partial_rho"]) for name in METRICS}
            for view in VIEWS},
        "raw_score": {name: _sign(name) * num(
            a["correlations"][MAIN_VIEW][name]["spearman"]["rho"])
                      for name in METRICS},
        "kl_beyond_last": num(a["conditioning"]["beyond_last_mean"]),
        "kl_last": num(a["conditioning"]["last_mean"]),
        "mean_step_entropy": float(np.mean(
            a["per_step"]["zero_state_entropy"])),
        "unique_cells": a["unique_cells"],
    }
  best_path = os.path.join(directory, files.BEST_ARCH_FILE)
  if os.path.exists(best_path):
    best = files.read_json(best_path)
    run["derived"] = {"arch": best["arch"], "valid_ppl": num(best["valid_ppl"]),
                      "test_ppl": num(best.get("test_ppl"))}
  return run


def _log10(x: float) -> float:
  return math.log10(x) if x > 0 else math.nan


def compare(runs: dict[int, dict[str, Any]], seeds: Sequence[int], *,
            num_bootstrap: int = 10_000, seed: int = 0) -> dict[str, Any]:
  """Paired comparisons trained vs untrained over ``seeds`` (see module doc).

  Raises:
    settings.ConfigError: the seeds were probed with different numbers of
      cells (re-probe the odd ones with the same preset).

  Args:
    runs: seed -> :func:`read_run`'s numbers.
    seeds: the seeds, in report order (at least one).
    num_bootstrap: bootstrap resamples of the seeds per CI.
    seed: seed of the bootstrap stream.
  """
  sizes = {runs[s]["num_cells"] for s in seeds}
  if len(sizes) > 1:
    raise settings.ConfigError(
        "the seeds' probes have different numbers of cells ("
        + ", ".join(f"seed {s}: K = {runs[s]['num_cells']}" for s in seeds)
        + "); re-probe the odd ones with the experiment's preset "
        "(--experiment=probe:PRESET --config.run_dir=WORKDIR/seed_S)")

  def pair(get):
    return paired.paired_comparison(
        [get(runs[s]["untrained"]) for s in seeds],
        [get(runs[s]["trained"]) for s in seeds],
        num_bootstrap=num_bootstrap, seed=seed)

  claim3 = {
      "recency_score": {view: {name: pair(
          lambda r, v=view, n=name: r["recency_score"][v][n])
                               for name in METRICS} for view in VIEWS},
      "raw_score": {name: pair(lambda r, n=name: r["raw_score"][n])
                    for name in METRICS}}
  tests = [claim3["recency_score"][v][n] for v in VIEWS for n in METRICS]
  # Untestable ones (p NaN) stay NaN and do not count in Holm's m.
  for test, adjusted in zip(tests, recency.holm([t["p_t"] for t in tests])):
    test["p_holm"] = float(adjusted)
  # Structure beyond the last decision at all, whatever training did: the
  # trained controller's own score against 0 (one-sample, over seeds).
  claim3["trained_recency_score"] = paired.paired_comparison(
      np.zeros(len(seeds)),
      [runs[s]["trained"]["recency_score"][MAIN_VIEW][PRIMARY] for s in seeds],
      num_bootstrap=num_bootstrap, seed=seed)
  # Extra KL of the trained policy as a share of its mean step entropy,
  # against 0 (the paired comparison of 0 and the shares is the one-sample
  # test of the shares).
  shares = [(runs[s]["trained"]["kl_beyond_last"]
             - runs[s]["untrained"]["kl_beyond_last"])
            / runs[s]["trained"]["mean_step_entropy"] for s in seeds]
  claim4 = {
      "log10_kl": pair(lambda r: _log10(r["kl_beyond_last"])),
      "entropy_share": paired.paired_comparison(
          np.zeros(len(seeds)), shares, num_bootstrap=num_bootstrap,
          seed=seed)}
  results = {"seeds": list(seeds), "alpha": ALPHA, "primary_metric": PRIMARY,
             "num_cells": {str(s): runs[s]["num_cells"] for s in seeds},
             "runs": {str(s): runs[s] for s in seeds},
             "claim3": claim3, "claim4": claim4}
  results["verdicts"] = {"claim3": claim3_verdict(results),
                         "claim4": claim4_verdict(results)}
  return results


def _ci(c, spec="+.3f") -> str:
  return (f"{reports.number(c['mean_difference'], spec)} [95% CI "
          f"{reports.number(c['ci'][0], spec)}, "
          f"{reports.number(c['ci'][1], spec)}]")


def _p(value) -> str:
  return reports.number(value, ".3g")


def _few_seeds(n: int) -> str:
  """What ``n`` seeds can and cannot show."""
  if n < 2:
    return " One seed: no test over seeds is possible."
  if n < 6:
    return (f" With {n} seeds the Wilcoxon test cannot reach {ALPHA} "
            f"(its smallest two-sided p is {2 / 2 ** n:.3g}); the paired "
            "t-test can.")
  return ""


def claim3_verdict(results) -> str:
  """Claim 3 over seeds: does training raise the recency-controlled score?"""
  rec = results["claim3"]["recency_score"]
  n = len(results["seeds"])
  tests = [(v, m, rec[v][m]) for v in VIEWS for m in METRICS]
  up = [(v, m, c) for v, m, c in tests
        if c["p_holm"] < ALPHA and c["ci"][0] > 0]
  down = [(v, m, c) for v, m, c in tests
          if c["p_holm"] < ALPHA and c["ci"][1] < 0]
  largest = max(tests, key=lambda t: abs(t[2]["mean_difference"])
                if np.isfinite(t[2]["mean_difference"]) else -1.0)
  main = rec[MAIN_VIEW][PRIMARY]
  raw = results["claim3"]["raw_score"][PRIMARY]
  own = results["claim3"]["trained_recency_score"]
  numbers = (
      f"For h vs {PRIMARY}, the recency-controlled score (partial rho given "
      f"the last decision, signed) is {reports.number(main['mean_b'], '+.3f')} "
      f"trained and {reports.number(main['mean_a'], '+.3f')} untrained on "
      f"average: trained - untrained = {_ci(main)}, paired t p = "
      f"{_p(main['p_t'])}, Holm p = {_p(main['p_holm'])} ({n} seeds); "
      f"without the control the raw score moves by {_ci(raw)}. The trained "
      f"score itself, against 0: {_ci(own)}, one-sample t p = "
      f"{_p(own['p_t'])}. The largest "
      f"mean difference of the {len(tests)} carry x metric tests is "
      f"{largest[0].split('/')[0]} vs {largest[1]}: {_ci(largest[2])} "
      f"(Holm p = {_p(largest[2]['p_holm'])}).")
  if n < 2:
    return "Not testable over seeds. " + numbers + _few_seeds(n)
  if up:
    v, m, c = max(up, key=lambda t: t[2]["mean_difference"])
    return (
        f"Not supported: training makes the carry track structure beyond "
        f"its last decision, paired over {n} seeds, in {len(up)} of "
        f"{len(tests)} carry x metric tests (Holm-adjusted paired t p < "
        f"{ALPHA}, CI above 0; largest {v.split('/')[0]} vs {m}: {_ci(c)}). "
        + numbers + _few_seeds(n))
  if down:
    return (
        f"Consistent with the claim: training does not raise the carry's "
        f"structure beyond its last decision; in {len(down)} of "
        f"{len(tests)} tests it lowers it (Holm p < {ALPHA}, CI below 0). "
        + numbers + _few_seeds(n))
  return (
      f"Consistent with the claim: paired over {n} seeds, no carry x metric "
      f"test shows the trained carry tracking more structure beyond its "
      f"last decision than the untrained one (Holm-adjusted paired t, alpha "
      f"{ALPHA}). " + numbers + _few_seeds(n))


def claim4_verdict(results) -> str:
  """Claim 4 over seeds: does the trained policy condition on earlier
  decisions more than an untrained LSTM?"""
  c = results["claim4"]["log10_kl"]
  share = results["claim4"]["entropy_share"]
  n = len(results["seeds"])
  higher = sum(1 for d in c["differences"] if d > 0)
  numbers = (
      f"Teacher forced, changing a decision moves the later steps' "
      f"distributions, at least {BEYOND} decisions on, by a mean KL "
      f"{reports.number(10 ** c['mean_difference'], '.3g')}x the untrained "
      f"controller's (geometric mean over seeds; log10 ratio {_ci(c)}, "
      f"paired t p = {_p(c['p_t'])}, Wilcoxon p = {_p(c['p_wilcoxon'])}; "
      f"higher in {higher} of {c['n']} seeds). In absolute terms the extra "
      f"KL is {_ci(share, '.2g')} of the trained policy's mean step "
      "entropy.")
  if n < 2:
    return "Not testable over seeds. " + numbers + _few_seeds(n)
  if c["p_t"] < ALPHA and c["ci"][0] > 0:
    return ("Not supported: the trained policy conditions on earlier "
            "decisions more than recurrence alone does. " + numbers
            + _few_seeds(n))
  if c["p_t"] < ALPHA and c["ci"][1] < 0:
    return ("Consistent with the claim: the trained policy conditions on "
            "earlier decisions less than an untrained LSTM does. " + numbers
            + _few_seeds(n))
  return (f"Consistent with the claim: paired over {n} seeds, the trained "
          f"policy's conditioning on earlier decisions does not differ "
          f"significantly from an untrained LSTM's. " + numbers
          + _few_seeds(n))


# ---------------------------------------------------------------------------
# Outputs.


def _recency_table(results) -> str:
  rec = results["claim3"]["recency_score"]
  rows = []
  for view in VIEWS:
    for name in METRICS:
      c = rec[view][name]
      rows.append([view.split("/")[0], name,
                   reports.number(c["mean_b"], "+.3f"),
                   reports.number(c["mean_a"], "+.3f"), _ci(c),
                   _p(c["p_t"]), _p(c["p_holm"]), _p(c["p_wilcoxon"]),
                   f"{sum(1 for d in c['differences'] if d > 0)}/{c['n']}"])
  return reports.markdown_table(
      ["carry", "graph metric", "trained (mean)", "untrained (mean)",
       "trained - untrained", "paired t p", "Holm p", "Wilcoxon p",
       "seeds higher"], rows)


def _raw_table(results) -> str:
  raw = results["claim3"]["raw_score"]
  rows = [[name, reports.number(c["mean_b"], "+.3f"),
           reports.number(c["mean_a"], "+.3f"), _ci(c), _p(c["p_t"]),
           _p(c["p_wilcoxon"])] for name, c in raw.items()]
  return reports.markdown_table(
      ["graph metric", "trained (mean)", "untrained (mean)",
       "trained - untrained", "paired t p", "Wilcoxon p"], rows)


def _conditioning_table(results) -> str:
  rows = []
  for s in results["seeds"]:
    r = results["runs"][str(s)]
    t, u = r["trained"], r["untrained"]
    rows.append([
        str(s), reports.number(t["kl_beyond_last"], ".3g"),
        reports.number(u["kl_beyond_last"], ".3g"),
        reports.number(t["kl_beyond_last"] / u["kl_beyond_last"]
                       if u["kl_beyond_last"] > 0 else math.nan, ".3g"),
        reports.number(t["kl_last"], ".3g"), reports.number(u["kl_last"], ".3g"),
        reports.number(t["mean_step_entropy"], ".3g"),
        reports.number((t["kl_beyond_last"] - u["kl_beyond_last"])
                       / t["mean_step_entropy"], ".2g")])
  return reports.markdown_table(
      ["seed", f"KL trained (distance >= {BEYOND})", "KL untrained",
       "ratio", "KL trained (distance 1)", "KL untrained (distance 1)",
       "trained mean step entropy (nats)", "extra KL / entropy"], rows)


def write_outputs(results, workdir, overview: str = "") -> None:
  """``report.md``, ``results.json`` and ``figures/`` in ``workdir``;
  ``overview`` is the searches' section (``search_report.runs_overview``)."""
  # matplotlib only when writing.
  from nas_jax.analysis import figures  # pylint: disable=g-import-not-at-top
  fig = figures.across_seeds(results, reports.figures_dir(workdir))
  reports.write(workdir, results, _report(results, fig, overview))


def _timing(results) -> str:
  timing = results.get("timing", {})
  return (f"Wall time of the command that wrote this report: "
          f"{timing['total_seconds'] / 60:.1f} min (runs it found finished "
          "were not redone)." if "total_seconds" in timing else "")


def _report(results, fig, overview) -> str:
  seeds = results["seeds"]
  v = results["verdicts"]
  cells = sorted(set(results["num_cells"].values()))
  return f"""# ENAS probe over {len(seeds)} seeds: trained vs untrained controller

Seeds: {', '.join(str(s) for s in seeds)}: one search per seed, each probed
with K = {', '.join(map(str, cells))} cells per controller (the trained one and
the untrained one: its initial parameters, the same sampling keys). Every
number below is one per seed and controller; the comparisons are paired over
seeds: mean difference trained - untrained with a 95% bootstrap CI over
seeds, the paired t-test (two-sided) and the Wilcoxon signed-rank test.
Each seed's own report (tests over cells) is in `seed_SEED/report.md`.
{_timing(results)}

{overview}

## Verdicts (paired over seeds)

- **Claim 3 (the carry does not encode structure).** {v['claim3']}
- **Claim 4 (the policy does not condition on past decisions).**
  {v['claim4']}

Rules: claim 3 is contradicted when some carry x metric's
recency-controlled score is higher for the trained controller, paired over
seeds, with a Holm-adjusted paired t p < {ALPHA} over the
{len(VIEWS) * len(METRICS)} tests and a CI above 0 (a verdict on what
training adds; whether the trained carry holds structure beyond its last
decision at all is the one-sample number in its text); claim 4 when the
trained policy's log10 mean KL at least {BEYOND} decisions after a changed
one is higher with paired t p < {ALPHA} and a CI above 0.

![across seeds](figures/{fig})

## Claim 3: recency-controlled scores (partial rho given the last decision, signed: higher = more structure)

{_recency_table(results)}

Without the recency control (h, L2, plain Spearman rho, signed):

{_raw_table(results)}

## Claim 4: policy conditioning per seed

{_conditioning_table(results)}

Every number above, with each seed's values, is in `results.json`.
"""
