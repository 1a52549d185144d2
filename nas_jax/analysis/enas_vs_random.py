"""ENAS vs random search with weight sharing: the comparison over seeds.

Reads the ``enas_vs_random`` experiment's directories (see
``experiments/enas_vs_random.py``) and writes ``report.md``,
``results.json`` and ``figures/``. Differences are ENAS minus RS-WS, paired
by seed (:func:`stats.paired_comparison`): a negative perplexity difference
favours ENAS. The weight-sharing proxy's trust is
:func:`stats.rank_agreement` between the proxy cells' shared-weight and
from-scratch validation ppl.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

from nas_jax.analysis import probe as probe_analysis
from nas_jax.analysis import stats

METHODS = ("enas", "random_ws")
ALPHA = 0.05
# Per-seed quantity -> what it is (report rows, in order).
QUANTITIES = {
    "shared_valid_ppl": "derived cell, shared-weight valid ppl",
    "fixed_valid_ppl": "derived cell trained from scratch, valid ppl",
    "fixed_test_ppl": "derived cell trained from scratch, test ppl",
}


# The experiment's directory layout (``experiments/enas_vs_random.py``).


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed_{seed}")


def fixed_dir(workdir: str, method: str, seed: int) -> str:
  """The from-scratch run of ``method``'s derived cell."""
  return os.path.join(workdir, "fixed", f"{method}_seed_{seed}")


def density_path(workdir: str, seed: int) -> str:
  return os.path.join(run_dir(workdir, "enas", seed), "density.npz")


def proxy_path(workdir: str) -> str:
  return os.path.join(workdir, "proxy", "shared.json")


def proxy_cell_dir(workdir: str, index: int) -> str:
  return os.path.join(workdir, "proxy", f"cell_{index}")


def _load(path):
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: run the experiment for this seed first (the "
        "report merges finished seeds only)")
  with open(path) as f:
    return json.load(f)


def _finite(v):
  return math.nan if v is None else float(v)


def collect_seed(workdir: str, seed: int) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for method in METHODS:
    best = _load(os.path.join(run_dir(workdir, method, seed),
                              "best_arch.json"))
    fixed = _load(os.path.join(fixed_dir(workdir, method, seed),
                               "best_arch.json"))
    out[method] = {"arch": best["arch"],
                   "shared_valid_ppl": _finite(best["valid_ppl"]),
                   "shared_test_ppl": _finite(best.get("test_ppl")),
                   "fixed_valid_ppl": _finite(fixed["valid_ppl"]),
                   "fixed_test_ppl": _finite(fixed.get("test_ppl"))}
  path = density_path(workdir, seed)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: run the experiment for this "
                            "seed first")
  with np.load(path) as d:
    out["density"] = {k: d[k].tolist() for k in
                      ("controller_ppl", "uniform_ppl")}
  for name in ("controller_ppl", "uniform_ppl"):
    v = np.asarray(out["density"][name], np.float64)
    out[f"median_{name}"] = float(np.nanmedian(np.where(np.isfinite(v), v,
                                                         np.nan)))
  return out


def collect_proxy(workdir: str) -> dict[str, Any] | None:
  path = proxy_path(workdir)
  if not os.path.exists(path):
    return None
  record = _load(path)
  scratch = []
  for i in range(len(record["cells"])):
    p = os.path.join(proxy_cell_dir(workdir, i), "best_arch.json")
    scratch.append(_finite(_load(p)["valid_ppl"]) if os.path.exists(p)
                   else math.nan)
  record["scratch_valid_ppl"] = scratch
  record["agreement"] = stats.rank_agreement(record["shared_valid_ppl"],
                                             scratch)
  return record


def compare(workdir: str, seeds: Sequence[int]) -> dict[str, Any]:
  per_seed = {s: collect_seed(workdir, s) for s in seeds}
  comparisons = {}
  for key in QUANTITIES:
    a = [per_seed[s]["random_ws"][key] for s in seeds]
    b = [per_seed[s]["enas"][key] for s in seeds]
    comparisons[key] = stats.paired_comparison(a, b)
  comparisons["median_sampled_ppl"] = stats.paired_comparison(
      [per_seed[s]["median_uniform_ppl"] for s in seeds],
      [per_seed[s]["median_controller_ppl"] for s in seeds])
  results = {"seeds": list(seeds), "per_seed": {str(s): v for s, v in
                                                per_seed.items()},
             "comparisons": comparisons, "proxy": collect_proxy(workdir)}
  results["verdict"] = verdict(results)
  return results


def _p(v):
  return "n/a" if v is None or not np.isfinite(v) else f"{v:.3g}"


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


def _figure(results, fig_dir) -> str:
  import matplotlib  # Host-side, only when writing.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  seeds = results["seeds"]
  cols = min(len(seeds), 5)
  rows = math.ceil(len(seeds) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows),
                           squeeze=False)
  for ax, s in zip(axes.ravel(), seeds):
    d = results["per_seed"][str(s)]["density"]
    logs = {name: np.log(np.asarray(d[name], np.float64))
            for name in ("controller_ppl", "uniform_ppl")}
    pooled = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    # A few diverging cells reach log ppl 60: the bins cover the central 98%.
    lo, hi = np.percentile(pooled, [1, 99]) if pooled.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 40)
    outside = 0
    for name, label in (("controller_ppl", "ENAS controller"),
                        ("uniform_ppl", "uniform")):
      v = logs[name]
      inside = np.isfinite(v) & (v >= bins[0]) & (v <= bins[-1])
      outside += int(v.size - inside.sum())
      ax.hist(v[inside], bins=bins, density=True, alpha=0.5, label=label)
    ax.set_title(f"seed {s} ({outside} cells outside the range)", fontsize=8)
    ax.set_xlabel("log shared-weight ppl")
  for ax in axes.ravel()[len(seeds):]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  name = "sampled_ppl_density.png"
  fig.savefig(os.path.join(fig_dir, name), dpi=110)
  plt.close(fig)
  return name


def write_outputs(results, workdir) -> None:
  fig_dir = os.path.join(workdir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  fig = _figure(results, fig_dir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(probe_analysis._jsonable(results), f, indent=1)  # pylint: disable=protected-access
  seeds = results["seeds"]
  rows = ["| seed | ENAS cell | RS-WS cell | shared valid ppl ENAS / RS-WS | "
          "from scratch valid ppl ENAS / RS-WS | from scratch test ppl "
          "ENAS / RS-WS | median sampled ppl controller / uniform |",
          "|---|---|---|---|---|---|---|"]
  for s in seeds:
    r = results["per_seed"][str(s)]
    e, w = r["enas"], r["random_ws"]
    rows.append(
        f"| {s} | `{e['arch']}` | `{w['arch']}` | "
        f"{e['shared_valid_ppl']:.1f} / {w['shared_valid_ppl']:.1f} | "
        f"{e['fixed_valid_ppl']:.1f} / {w['fixed_valid_ppl']:.1f} | "
        f"{e['fixed_test_ppl']:.1f} / {w['fixed_test_ppl']:.1f} | "
        f"{r['median_controller_ppl']:.1f} / {r['median_uniform_ppl']:.1f} |")
  tests = ["| quantity (ENAS - RS-WS) | mean difference [95% CI] | paired t p "
           "| Wilcoxon p | d_z | n |", "|---|---|---|---|---|---|"]
  labels = dict(QUANTITIES, median_sampled_ppl=(
      "median shared-weight ppl of sampled cells (controller - uniform)"))
  for key, label in labels.items():
    c = results["comparisons"][key]
    tests.append(
        f"| {label} | {c['mean_difference']:+.1f} [{c['ci'][0]:+.1f}, "
        f"{c['ci'][1]:+.1f}] | {_p(c['p_t'])} | {_p(c['p_wilcoxon'])} | "
        f"{_p(c['cohens_dz'])} | {c['n']} |")
  proxy = results.get("proxy")
  if proxy:
    g = proxy["agreement"]
    proxy_text = (
        f"{g['n']} uniform cells, exact validation ppl under the RS-WS "
        f"supernet of {proxy['supernet']} against their validation ppl after "
        f"training from scratch on the search budget:\n\n"
        f"| statistic | value [95% bootstrap CI] | p |\n|---|---|---|\n"
        f"| Kendall tau-b | {g['kendall_tau']:+.3f} [{g['kendall_ci'][0]:+.3f},"
        f" {g['kendall_ci'][1]:+.3f}] | {_p(g['p_kendall'])} |\n"
        f"| Spearman rho | {g['spearman_rho']:+.3f} [{g['spearman_ci'][0]:+.3f},"
        f" {g['spearman_ci'][1]:+.3f}] | {_p(g['p_spearman'])} |\n\n"
        "| cell | shared-weight valid ppl | from scratch valid ppl |\n"
        "|---|---|---|\n" + "\n".join(
            f"| `{a}` | {x:.1f} | {y:.1f} |" for a, x, y in zip(
                proxy["cells"], proxy["shared_valid_ppl"],
                proxy["scratch_valid_ppl"])))
  else:
    proxy_text = "Not run (`proxy.num_cells = 0`)."
  report = f"""# ENAS vs random search with weight sharing

Seeds: {', '.join(str(s) for s in seeds)}. Per seed, ENAS and RS-WS searched
on the same budget and data order; each derived cell was then trained from
scratch on the same budget (`train_fixed`). Differences are ENAS minus
RS-WS, paired by seed: negative perplexity differences favour ENAS.

## Verdict

{results['verdict']}

## Paired comparison over seeds

{chr(10).join(tests)}

## Per seed

{chr(10).join(rows)}

## Cells from the trained controller vs uniform cells

Shared-weight ppl under each seed's ENAS supernet on the first validation
window (`density_cells` of each).

![density](figures/{fig})

## How far to trust the weight-sharing ranking

{proxy_text}

Every number is in `results.json`.
"""
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(report)
