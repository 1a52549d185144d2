"""ENAS vs random search with weight sharing: the comparison over seeds.

Reads the ``enas_vs_random`` experiment's directories (see
``experiments/enas_vs_random.py``) and writes ``report.md``,
``results.json`` and ``figures/``. Differences are ENAS minus RS-WS, paired
by seed (:func:`nas_jax.analysis.paired.paired_comparison`): a negative
perplexity difference favours ENAS. The weight-sharing proxy's trust is
:func:`nas_jax.analysis.paired.rank_agreement` between the proxy cells'
shared-weight and from-scratch validation ppl.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from nas_jax import files
from nas_jax.analysis import paired
from nas_jax.analysis import reports

METHODS = ("enas", "random_ws")
ALPHA = 0.05
# Per-seed quantity -> what it is (report rows, in order).
QUANTITIES = {
    "shared_valid_ppl": "derived cell, shared-weight valid ppl",
    "fixed_valid_ppl": "derived cell trained from scratch, valid ppl",
    "fixed_test_ppl": "derived cell trained from scratch, test ppl",
}


# The experiment's directory layout (``experiments/enas_vs_random.py``);
# each method's search runs are ``files.run_dir(workdir, method, seed)``.


def fixed_dir(workdir: str, method: str, seed: int) -> str:
  """The from-scratch run of ``method``'s derived cell."""
  return os.path.join(workdir, "fixed", f"{method}_seed_{seed}")


# The sampled cells' shared-weight ppl in density.npz: controller cells
# under the ENAS supernet, uniform cells under the RS-WS supernet (the
# authors' comparison) and under the ENAS supernet.
DENSITY_ARRAYS = ("controller_ppl", "uniform_ppl_random_ws", "uniform_ppl")
DENSITY_LABELS = {
    "controller_ppl": "ENAS controller (ENAS supernet)",
    "uniform_ppl_random_ws": "uniform (RS-WS supernet)",
    "uniform_ppl": "uniform (ENAS supernet)",
}


def density_path(workdir: str, seed: int) -> str:
  return os.path.join(files.run_dir(workdir, "enas", seed), "density.npz")


def proxy_path(workdir: str) -> str:
  return os.path.join(workdir, "proxy", "shared.json")


def proxy_cell_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, "proxy", f"cell_{index}")


def _load(path):
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: run the experiment for this seed first (the "
        "report merges finished seeds only)")
  return files.read_json(path)


def collect_seed(workdir: str, seed: int) -> dict[str, Any]:
  """One seed's numbers: each method's derived cell (shared-weight and from
  scratch) and the sampled cells' ppl (:data:`DENSITY_ARRAYS`)."""
  num = reports.float_or_nan
  out: dict[str, Any] = {}
  for method in METHODS:
    best = _load(os.path.join(files.run_dir(workdir, method, seed),
                              files.BEST_ARCH_FILE))
    fixed = _load(os.path.join(fixed_dir(workdir, method, seed),
                               files.BEST_ARCH_FILE))
    out[method] = {"arch": best["arch"],
                   "shared_valid_ppl": num(best["valid_ppl"]),
                   "shared_test_ppl": num(best.get("test_ppl")),
                   "fixed_valid_ppl": num(fixed["valid_ppl"]),
                   "fixed_test_ppl": num(fixed.get("test_ppl"))}
  path = density_path(workdir, seed)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run the experiment for this "
                            "seed first")
  with np.load(path) as d:
    missing = sorted(set(DENSITY_ARRAYS) - set(d.files))
    if missing:
      raise FileNotFoundError(
          f"{path} lacks {', '.join(missing)} (written by an older version): "
          "rerun the experiment for this seed, which redoes it")
    out["density"] = {k: d[k].tolist() for k in DENSITY_ARRAYS}
  for name in DENSITY_ARRAYS:
    v = np.asarray(out["density"][name], np.float64)
    out[f"median_{name}"] = float(np.nanmedian(np.where(np.isfinite(v), v,
                                                         np.nan)))
  return out


def collect_proxy(workdir: str) -> dict[str, Any] | None:
  """The proxy cells' shared-weight and from-scratch ppl and their rank
  agreement; None when the proxy was not run."""
  path = proxy_path(workdir)
  if not os.path.exists(path):
    return None
  record = _load(path)
  scratch = []
  for i in range(len(record["cells"])):
    p = os.path.join(proxy_cell_dir(workdir, i), files.BEST_ARCH_FILE)
    scratch.append(reports.float_or_nan(_load(p)["valid_ppl"])
                   if os.path.exists(p) else math.nan)
  record["scratch_valid_ppl"] = scratch
  record["agreement"] = paired.rank_agreement(record["shared_valid_ppl"],
                                              scratch)
  return record


def compare(workdir: str, seeds: Sequence[int]) -> dict[str, Any]:
  """Every seed's numbers, the paired comparisons and the verdict."""
  per_seed = {s: collect_seed(workdir, s) for s in seeds}
  comparisons = {}
  for key in QUANTITIES:
    a = [per_seed[s]["random_ws"][key] for s in seeds]
    b = [per_seed[s]["enas"][key] for s in seeds]
    comparisons[key] = paired.paired_comparison(a, b)
  # The authors' comparison: each sampler under the supernet trained on its
  # cells; then both under the ENAS supernet (which favours the controller).
  comparisons["median_sampled_ppl"] = paired.paired_comparison(
      [per_seed[s]["median_uniform_ppl_random_ws"] for s in seeds],
      [per_seed[s]["median_controller_ppl"] for s in seeds])
  comparisons["median_sampled_ppl_enas_supernet"] = paired.paired_comparison(
      [per_seed[s]["median_uniform_ppl"] for s in seeds],
      [per_seed[s]["median_controller_ppl"] for s in seeds])
  results = {"seeds": list(seeds), "per_seed": {str(s): v for s, v in
                                                per_seed.items()},
             "comparisons": comparisons, "proxy": collect_proxy(workdir)}
  results["verdict"] = verdict(results)
  return results


def _p(v):
  return reports.number(v, ".3g")


def verdict(results) -> str:
  c = results["comparisons"]["fixed_valid_ppl"]
  lo, hi = c["ci"]
  text = (f"From scratch, ENAS's derived cells differ from RS-WS's by "
          f"{c['mean_difference']:+.1f} valid ppl on average over {c['n']} "
          f"seeds (95% bootstrap CI [{lo:+.1f}, {hi:+.1f}], paired t p = "
          f"{_p(c['p_t'])}, Wilcoxon p = {_p(c['p_wilcoxon'])}). ")
  if c["n"] < 2:
    text += "Too few seeds for a test."
  elif c["p_t"] < ALPHA and hi < 0:
    text += "ENAS found better cells than random search (alpha 0.05)."
  elif c["p_t"] < ALPHA and lo > 0:
    text += "Random search found better cells than ENAS (alpha 0.05)."
  else:
    text += ("No significant difference at alpha 0.05: these seeds do not "
             "show that ENAS beats random search with weight sharing on this "
             "budget.")
  s = results["comparisons"]["median_sampled_ppl"]
  text += (f" Cells sampled from the trained controller have a median "
           f"shared-weight ppl {s['mean_difference']:+.1f} from uniform "
           f"cells' (paired t p = {_p(s['p_t'])}).")
  proxy = results.get("proxy")
  if proxy:
    g = proxy["agreement"]
    text += (f" Weight-sharing proxy: Kendall tau {g['kendall_tau']:+.2f} "
             f"(CI [{g['kendall_ci'][0]:+.2f}, {g['kendall_ci'][1]:+.2f}], "
             f"p = {_p(g['p_kendall'])}) over {g['n']} random cells.")
  return text


def write_outputs(results, workdir) -> None:
  """``report.md``, ``results.json`` and ``figures/`` in ``workdir``."""
  # matplotlib only when writing.
  from nas_jax.analysis import figures  # pylint: disable=g-import-not-at-top
  from nas_jax.analysis import search_report  # pylint: disable=g-import-not-at-top
  fig = figures.sampled_ppl_density(results, reports.figures_dir(workdir),
                                    DENSITY_LABELS)
  runs = []
  for s in results["seeds"]:
    for method, name in (("enas", "ENAS"), ("random_ws", "RS-WS")):
      runs.append((f"{name}, seed {s}", os.path.relpath(
          files.run_dir(workdir, method, s), workdir)))
    for method, name in (("enas", "ENAS"), ("random_ws", "RS-WS")):
      runs.append((f"{name}'s cell from scratch, seed {s}", os.path.relpath(
          fixed_dir(workdir, method, s), workdir)))
  overview = search_report.runs_overview(workdir, runs)
  reports.write(workdir, results, _report(results, fig, overview))


def _per_seed_table(results):
  rows = []
  for s in results["seeds"]:
    r = results["per_seed"][str(s)]
    e, w = r["enas"], r["random_ws"]
    rows.append([
        str(s), f"`{e['arch']}`", f"`{w['arch']}`",
        f"{e['shared_valid_ppl']:.1f} / {w['shared_valid_ppl']:.1f}",
        f"{e['fixed_valid_ppl']:.1f} / {w['fixed_valid_ppl']:.1f}",
        f"{e['fixed_test_ppl']:.1f} / {w['fixed_test_ppl']:.1f}",
        f"{r['median_controller_ppl']:.1f} / "
        f"{r['median_uniform_ppl_random_ws']:.1f} / "
        f"{r['median_uniform_ppl']:.1f}"])
  return reports.markdown_table(
      ["seed", "ENAS cell", "RS-WS cell", "shared valid ppl ENAS / RS-WS",
       "from scratch valid ppl ENAS / RS-WS",
       "from scratch test ppl ENAS / RS-WS",
       "median sampled ppl: controller (ENAS) / uniform (RS-WS) / uniform "
       "(ENAS supernet)"], rows)


def _tests_table(results):
  labels = dict(
      QUANTITIES,
      median_sampled_ppl=("median shared-weight ppl of sampled cells, "
                          "controller under ENAS - uniform under RS-WS"),
      median_sampled_ppl_enas_supernet=(
          "the same, both under the ENAS supernet (favours the controller)"))
  rows = []
  for key, label in labels.items():
    c = results["comparisons"][key]
    rows.append([label, f"{c['mean_difference']:+.1f} [{c['ci'][0]:+.1f}, "
                        f"{c['ci'][1]:+.1f}]",
                 _p(c["p_t"]), _p(c["p_wilcoxon"]), _p(c["cohens_dz"]),
                 str(c["n"])])
  return reports.markdown_table(
      ["quantity (ENAS - RS-WS)", "mean difference [95% CI]", "paired t p",
       "Wilcoxon p", "d_z", "n"], rows)


def _proxy_text(results):
  proxy = results.get("proxy")
  if not proxy:
    return "Not run (`proxy.num_cells = 0`)."
  g = proxy["agreement"]
  statistics = reports.markdown_table(
      ["statistic", "value [95% bootstrap CI]", "p"],
      [[name, f"{g[value]:+.3f} [{g[ci][0]:+.3f}, {g[ci][1]:+.3f}]", _p(g[p])]
       for name, value, ci, p in (
           ("Kendall tau-b", "kendall_tau", "kendall_ci", "p_kendall"),
           ("Spearman rho", "spearman_rho", "spearman_ci", "p_spearman"))])
  cells = reports.markdown_table(
      ["cell", "shared-weight valid ppl", "from scratch valid ppl"],
      [[f"`{a}`", f"{x:.1f}", f"{y:.1f}"] for a, x, y in zip(
          proxy["cells"], proxy["shared_valid_ppl"],
          proxy["scratch_valid_ppl"])])
  return (f"{g['n']} uniform cells, exact validation ppl under the RS-WS "
          f"supernet of {proxy['supernet']} against their validation ppl "
          f"after training from scratch on the search budget:\n\n"
          f"{statistics}\n\n{cells}")


def _report(results, fig, overview) -> str:
  """The text of ``report.md``; ``fig`` is the figure's file name,
  ``overview`` the runs' section (``search_report.runs_overview``)."""
  seeds = results["seeds"]
  return f"""# ENAS vs random search with weight sharing

Seeds: {', '.join(str(s) for s in seeds)}. Per seed, ENAS and RS-WS searched
on the same budget and data order; each derived cell was then trained from
scratch on the same budget (`train_fixed`). Differences are ENAS minus
RS-WS, paired by seed: negative perplexity differences favour ENAS.

{overview}

## Verdict

{results['verdict']}

## Paired comparison over seeds

{_tests_table(results)}

## Per seed

{_per_seed_table(results)}

## Cells from the trained controller vs uniform cells

Shared-weight ppl on the first validation window (`density_cells` of each):
the controller's cells under each seed's ENAS supernet against uniform cells
under its RS-WS supernet (the authors' comparison: each sampler under the
supernet trained on its cells), and uniform cells under the ENAS supernet
(trained on the controller's cells, so it favours them).

![density](figures/{fig})

## How far to trust the weight-sharing ranking

{_proxy_text(results)}

Every number is in `results.json`.
"""
