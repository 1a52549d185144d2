"""Figures of the reports (matplotlib, written as PNG files).

The controller probe's (:func:`draw_all`), the memory buffer comparison's
(:func:`encoding_scores`), the ENAS vs random search comparison's
(:func:`sampled_ppl_density`) and the multi-seed probe's
(:func:`across_seeds`). Each function writes one PNG file into
``fig_dir`` and returns its name (:func:`tsne` writes none, and returns None,
below :data:`TSNE_MIN_CELLS` cells). Importing this module selects
matplotlib's file-only backend, so the reports import it only when they
write.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # Files only; no display on batch machines.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
from sklearn import manifold  # pylint: disable=g-import-not-at-top

from nas_jax import search_space  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import cells  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import pairwise  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import probe_analysis  # pylint: disable=g-import-not-at-top

_COLORS = {"trained": "tab:blue", "untrained": "tab:orange"}
_MAX_SCATTER = 5000
# Scatter of carry distance vs a graph metric: a metric with at most this
# many distinct values is summarised per value, others per quantile bin.
_MAX_DISCRETE = 25
_NUM_BINS = 12
# t-SNE of the carries: only from this many cells on; its fixed seed.
TSNE_MIN_CELLS = 20
TSNE_SEED = 0


def _save(fig, fig_dir, name):
  fig.tight_layout()
  fig.savefig(os.path.join(fig_dir, name), dpi=110)
  plt.close(fig)
  return name


def _subsample(n, seed=0):
  idx = np.arange(n)
  if n > _MAX_SCATTER:
    idx = np.random.default_rng(seed).choice(n, _MAX_SCATTER, replace=False)
  return idx


def _hidden_l2(results, arm):
  """The ``[K, K]`` L2 distances of h the analysis computed."""
  return results["arms"][arm]["_hidden_l2"]


def density(results, fig_dir):
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, color in _COLORS.items():
    d = pairwise.upper_triangle(_hidden_l2(results, arm))
    ax.hist(d, bins=50, density=True, alpha=0.5, color=color, label=arm)
  ax.set_xlabel("pairwise L2 distance of h")
  ax.set_ylabel("density")
  ax.legend()
  return _save(fig, fig_dir, "hidden_distance_density.png")


def _metric_and_distance(results, arm, name):
  """``(metric, h L2 distance)`` over the pairs ``i < j`` where the metric
  has a value: all pairs, or for the edit distances (computed on a subset of
  pairs, NaN elsewhere and where they timed out) that subset; None when the
  arm has no matrix of ``name``."""
  m = results["arms"][arm].get("_matrices", {}).get(name)
  if m is None:
    return None
  x = pairwise.upper_triangle(m)
  d = pairwise.upper_triangle(_hidden_l2(results, arm))
  known = np.isfinite(x)
  return x[known], d[known]


def scatter_metrics(results) -> list[str]:
  """The metrics :func:`scatter` draws, one panel each: those of
  :data:`probe_analysis.METRICS` with a matrix holding a value for some pair
  in some arm."""
  names = []
  for name in probe_analysis.METRICS:
    data = [_metric_and_distance(results, arm, name) for arm in _COLORS]
    if any(xd is not None and xd[0].size for xd in data):
      names.append(name)
  return names


def _groups(x, d, grid, discrete):
  """``[(x of the group, its distances d)]``: one group per value of
  ``grid`` (``discrete``) or per bin between consecutive ``grid`` edges (at
  the median x of the bin)."""
  if discrete:
    return [(v, d[x == v]) for v in grid if np.any(x == v)]
  which = np.clip(np.searchsorted(grid, x, side="right") - 1, 0,
                  grid.size - 2)
  return [(float(np.median(x[which == b])), d[which == b])
          for b in range(grid.size - 1) if np.any(which == b)]


def _rho_label(results, arm, name, num):
  res = results["arms"][arm].get("correlations", {}).get(
      f"{probe_analysis.MAIN_CARRY}/{probe_analysis.MAIN_DISTANCE}", {}).get(
          name)
  if res is None:
    return f"{arm} ({num} pairs)"
  s = res["spearman"]
  return (f"{arm}: rho {s['rho']:+.3f}, Mantel p {s['p_mantel']:.2g} "
          f"({num} pairs)")


def _scatter_panel(ax, results, name, rng):
  """One metric: each arm's pairs as a light, jittered cloud and, per x
  value (or quantile bin), the median distance with its interquartile
  range; the two arms side by side."""
  data = {arm: _metric_and_distance(results, arm, name) for arm in _COLORS}
  data = {arm: xd for arm, xd in data.items() if xd is not None and
          xd[0].size}
  values = np.unique(np.concatenate([x for x, _ in data.values()]))
  discrete = values.size <= _MAX_DISCRETE
  if discrete:
    step = float(np.min(np.diff(values))) if values.size > 1 else 1.0
    grid = values
  else:  # Bin edges: quantiles of both arms' values (more than 25 distinct).
    step = 0.0
    pooled = np.concatenate([x for x, _ in data.values()])
    grid = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0,
                                                     _NUM_BINS + 1)))
  for k, (arm, (x, d)) in enumerate(data.items()):
    color = _COLORS[arm]
    shift = (k - (len(_COLORS) - 1) / 2) * 0.3 * step  # Arms side by side.
    idx = _subsample(d.size)
    jitter = rng.uniform(-0.1, 0.1, idx.size) * step
    ax.scatter(x[idx] + shift + jitter, d[idx], s=3, alpha=0.15, color=color,
               linewidths=0, rasterized=True, zorder=1)
    groups = _groups(x, d, grid, discrete)
    gx = np.array([g for g, _ in groups]) + shift
    q25, q50, q75 = np.array([np.percentile(v, [25, 50, 75])
                              for _, v in groups]).T
    label = _rho_label(results, arm, name, d.size)
    if discrete:
      ax.errorbar(gx, q50, yerr=[q50 - q25, q75 - q50], fmt="o", ms=4,
                  color=color, ecolor=color, capsize=2, lw=1.2, zorder=3,
                  label=label)
    else:
      ax.fill_between(gx, q25, q75, color=color, alpha=0.25, lw=0, zorder=2)
      ax.plot(gx, q50, "o-", ms=3, color=color, lw=1.2, zorder=3, label=label)
  kind = "similarity" if probe_analysis.METRICS[name] else "distance"
  subset = (" (subset of pairs)" if name in probe_analysis.SUBSET_METRICS
            else "")
  ax.set_title(f"{name}{subset}", fontsize=9)
  ax.set_xlabel(f"{name} ({kind})", fontsize=8)
  ax.set_ylabel("L2 distance of h", fontsize=8)
  ax.legend(fontsize=6.5, loc="best")


def scatter(results, raw, fig_dir):
  """Carry (h, L2) distance against every graph metric with values
  (:func:`scatter_metrics`), one panel each, both arms in it with their
  Spearman rho and Mantel p."""
  del raw
  names = scatter_metrics(results)
  cols = min(4, max(len(names), 1))
  rows = max(math.ceil(len(names) / cols), 1)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows),
                           squeeze=False)
  rng = np.random.default_rng(0)
  for ax, name in zip(axes.ravel(), names):
    _scatter_panel(ax, results, name, rng)
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  fig.suptitle("Carry distance vs graph metric: pairs of cells (light, "
               "jittered), median and interquartile range per value or "
               "quantile bin", fontsize=10)
  return _save(fig, fig_dir, "hidden_vs_graph_metrics.png")


def _cell_graph(ax, tokens, title):
  cells.draw_cell(tokens, ax, title=title, legend=False)


def closest_farthest(results, raw, fig_dir):
  d = _hidden_l2(results, "trained")
  tokens = raw["trained/tokens"]
  # Identical cells have distance 0 by construction: look at distinct cells.
  same = np.all(tokens[:, None] == tokens[None, :], axis=-1)
  d_close = np.where(same, np.inf, d)
  d_far = np.where(same, -np.inf, d)
  close = np.unravel_index(np.argmin(d_close), d.shape)
  far = np.unravel_index(np.argmax(d_far), d.shape)
  fig, axes = plt.subplots(2, 2, figsize=(12, 10))
  for row, (pair, what) in enumerate(((close, "closest"), (far, "farthest"))):
    for col, i in enumerate(pair):
      _cell_graph(axes[row, col], tokens[i],
                  f"{what} pair (h L2 {d[pair]:.3f}): cell {i}")
  return _save(fig, fig_dir, "closest_farthest_pairs.png")


def ppl_relation(results, raw, fig_dir):
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, color in _COLORS.items():
    ppl = raw[f"{arm}/ppl"]
    finite = np.isfinite(ppl)  # Overflowed cells have no finite difference.
    d = pairwise.upper_triangle(_hidden_l2(results, arm)[finite][:, finite])
    diff = pairwise.upper_triangle(
        np.abs(ppl[finite][:, None] - ppl[finite][None, :]))
    idx = _subsample(d.size)
    ax.scatter(diff[idx], d[idx], s=3, alpha=0.3, color=color, label=arm)
  ax.set_xlabel("|ppl_i - ppl_j| (shared weights, derive window)")
  ax.set_ylabel("L2 distance of h")
  ax.set_xscale("symlog")
  ax.legend()
  return _save(fig, fig_dir, "hidden_vs_ppl_difference.png")


def _last_read_token(tokens):
  """The last token the analysed carry has read, and its description.

  The carry is the state after the last decision step's input (the module
  docstring of :mod:`probe_analysis`): of the ``2N-1`` tokens it has read up
  to ``2N-3``, the parent of node ``N-1``, not the last activation.
  """
  t = tokens.shape[1]
  n = search_space.num_nodes_from_tokens(t)
  if n < 2:  # One node: the carry has read no token.
    return None, ""
  return tokens[:, t - 2], f"parent of node {n - 1} (token {t - 2})"


def _embedding_colours(results, raw, arm="trained"):
  """(label, values, discrete) of each colouring of the embedding panels."""
  # Overflowed ppl (inf) drawn at the largest finite value.
  ppl = raw[f"{arm}/ppl"]
  log_ppl = np.log(np.where(np.isfinite(ppl), ppl,
                            np.max(ppl[np.isfinite(ppl)], initial=1.0)))
  out = [("log ppl", log_ppl, False),
         ("depth", results["arms"][arm]["_properties"]["depth"], False)]
  last, what = _last_read_token(np.asarray(raw[f"{arm}/tokens"]))
  if last is not None:
    out.append((what, last, True))
  return out


def _embedding_figure(xy, colours, title, axis_labels):
  """One panel per colouring of the cells at ``xy`` ``[K, 2]``."""
  fig, axes = plt.subplots(1, len(colours), figsize=(5.5 * len(colours), 4.7),
                           squeeze=False)
  for ax, (label, c, discrete) in zip(axes[0], colours):
    values = np.unique(c)
    if discrete and values.size <= 20:
      cmap = plt.cm.tab10 if values.size <= 10 else plt.cm.tab20
      for j, v in enumerate(values):
        sel = c == v
        ax.scatter(xy[sel, 0], xy[sel, 1], s=12, color=cmap(j),
                   label=str(int(v)))
      ax.legend(fontsize=6, title="choice", title_fontsize=6, ncol=2)
    else:
      sc = ax.scatter(xy[:, 0], xy[:, 1], c=c, s=12, cmap="viridis")
      fig.colorbar(sc, ax=ax, label="choice" if discrete else label)
    if discrete:
      ax.set_title(f"coloured by the last token h read:\n{label}; h has not "
                   "read the last activation", fontsize=8)
    else:
      ax.set_title(f"coloured by {label}", fontsize=8)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
  fig.suptitle(title, fontsize=10)
  return fig


def pca(results, raw, fig_dir):
  """PCA of the trained controller's h (``results["carry_pca"]``, the
  explained variance on the axes), coloured by log ppl, depth and the last
  token h has read."""
  res = results["carry_pca"]["trained"]
  ratio = res["explained_variance_ratio"]
  labels = [f"PC {i + 1} ({100 * ratio[i]:.1f}% of variance)"
            if i < len(ratio) else f"PC {i + 1}" for i in range(2)]
  fig = _embedding_figure(np.asarray(res["_projection"]),
                          _embedding_colours(results, raw),
                          "trained controller: PCA of h", labels)
  return _save(fig, fig_dir, "hidden_pca.png")


def tsne_perplexity(num_cells: int) -> float:
  """The t-SNE perplexity used for ``num_cells`` cells: min(30, (K-1)/3)."""
  return min(30.0, (num_cells - 1) / 3)


def tsne(results, raw, fig_dir):
  """t-SNE (scikit-learn, seed :data:`TSNE_SEED`, perplexity
  :func:`tsne_perplexity`) of the trained controller's h, coloured as
  :func:`pca`; None (no file) below :data:`TSNE_MIN_CELLS` cells."""
  h = np.asarray(raw["trained/h"], np.float64)
  k = h.shape[0]
  if k < TSNE_MIN_CELLS:
    return None
  perplexity = tsne_perplexity(k)
  xy = manifold.TSNE(n_components=2, perplexity=perplexity, init="pca",
                     learning_rate="auto",
                     random_state=TSNE_SEED).fit_transform(h)
  fig = _embedding_figure(
      xy, _embedding_colours(results, raw),
      f"trained controller: t-SNE of h (perplexity {perplexity:.1f}, "
      f"random_state {TSNE_SEED})", ("t-SNE 1", "t-SNE 2"))
  return _save(fig, fig_dir, "hidden_tsne.png")


# Per-step lines: the arm by colour and marker, the start state by line style;
# the random-state lines are drawn above the zero-state ones, hollow.
_ARM_MARKERS = {"trained": "o", "untrained": "^"}
_STATE_STYLES = {
    "zero_state": {"linestyle": "-", "lw": 2.2, "alpha": 0.75, "zorder": 2},
    "random_state": {"linestyle": "--", "lw": 1.2, "mfc": "white",
                     "zorder": 3},
}


def per_step(results, fig_dir):
  """Mean max probability and entropy per decision step, both arms from the
  zero state and from random states, against uniform choices."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  steps = len(results["arms"]["trained"]["per_step"]["zero_state_max_prob"])
  choices = search_space.decision_sizes(
      search_space.num_nodes_from_tokens(steps)).astype(np.float64)
  uniform = {"max_prob": 1.0 / choices, "entropy": np.log(choices)}
  x = np.arange(steps)
  for ax, key in zip(axes, ("max_prob", "entropy")):
    ax.plot(x, uniform[key], color="black", linestyle=":", marker="_", ms=10,
            lw=1.0, zorder=1, label="uniform choice")
    for arm, color in _COLORS.items():
      s = results["arms"][arm]["per_step"]
      for state, style in _STATE_STYLES.items():
        ax.plot(x, s[f"{state}_{key}"], color=color, marker=_ARM_MARKERS[arm],
                ms=5, label=f"{arm}, {state.replace('_', ' ')}", **style)
  names = [f"{'p' if i % 2 else 'a'}{(i + 1) // 2}" for i in range(steps)]
  for ax, key in zip(axes, ("max probability", "entropy (nats)")):
    ax.set_xticks(x, names, fontsize=7)
    ax.set_xlabel("decision step (a_l: activation of node l, p_l: its parent)")
    ax.set_ylabel(f"mean {key}")
    ax.legend(fontsize=7)
  return _save(fig, fig_dir, "per_step_decisions.png")


def conditioning(results, fig_dir) -> str | None:
  """The policy-conditioning curve: mean KL of later steps' distributions
  against the distance from the changed decision, both controllers; None
  without the data."""
  arms = results["arms"]
  if "conditioning" not in arms["trained"]:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, color in _COLORS.items():
    c = arms[arm]["conditioning"]["curve"]
    d, m, e = (np.asarray(c[k], np.float64) for k in ("distance", "mean", "sem"))
    ok = np.isfinite(m) & (m > 0)
    ax.errorbar(d[ok], m[ok], yerr=np.where(np.isfinite(e[ok]), e[ok], 0.0),
                color=color, marker="o", ms=3, capsize=2, label=arm)
  ax.set_yscale("log")
  ax.set_xlabel("distance from the changed decision (steps)")
  ax.set_ylabel("mean KL(original || changed) (nats)")
  ax.set_title("How far back the policy conditions (teacher forced)",
               fontsize=9)
  ax.legend()
  return _save(fig, fig_dir, "policy_conditioning.png")


def draw_all(results, raw, fig_dir) -> dict[str, str | None]:
  """The probe's figures: key -> file name (``"tsne"``: None when skipped)."""
  return {
      "density": density(results, fig_dir),
      "scatter": scatter(results, raw, fig_dir),
      "pairs": closest_farthest(results, raw, fig_dir),
      "ppl": ppl_relation(results, raw, fig_dir),
      "pca": pca(results, raw, fig_dir),
      "tsne": tsne(results, raw, fig_dir),
      "steps": per_step(results, fig_dir),
      "conditioning": conditioning(results, fig_dir),
  }


def encoding_scores(results, metrics, fig_dir):
  """The memory buffer comparison: each seed's signed encoding score of every
  graph metric in ``metrics``, arm by arm."""
  arms, seeds = results["arms"], results["seeds"]
  names = list(metrics)
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
  return _save(fig, fig_dir, "encoding_score_by_arm.png")


def across_seeds(results, fig_dir):
  """The multi-seed probe (:mod:`nas_jax.analysis.across_seeds`): per seed,
  untrained vs trained controller, the recency-controlled and the raw score
  of h vs the primary metric, and the log10 policy conditioning."""
  seeds = results["seeds"]
  primary = results["primary_metric"]
  arms = ("untrained", "trained")
  panels = [
      (f"h vs {primary}: partial rho given\nthe last decision (signed)",
       lambda r: r["recency_score"][f"{probe_analysis.MAIN_CARRY}/{probe_analysis.MAIN_DISTANCE}"][primary]),
      (f"h vs {primary}: raw rho (signed)",
       lambda r: r["raw_score"][primary]),
      ("policy conditioning: log10 mean KL\n"
       f">= {probe_analysis.CONDITIONING_BEYOND} decisions after a change",
       lambda r: math.log10(r["kl_beyond_last"])
       if r["kl_beyond_last"] > 0 else math.nan)]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2),
                           squeeze=False)
  for ax, (title, get) in zip(axes[0], panels):
    for s in seeds:
      run = results["runs"][str(s)]
      ax.plot(range(2), [get(run[a]) for a in arms], "o-", alpha=0.7,
              label=f"seed {s}")
    ax.set_xticks(range(2), arms)
    ax.set_xlim(-0.3, 1.3)
    ax.set_title(title, fontsize=9)
  for ax in axes[0][:2]:
    ax.axhline(0.0, color="grey", lw=0.8)
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Trained vs untrained controller, paired by seed", fontsize=10)
  return _save(fig, fig_dir, "across_seeds.png")


def sampled_ppl_density(results, fig_dir, labels):
  """ENAS vs random search: per seed, the log shared-weight ppl of cells from
  the trained controller against uniform cells; ``labels``: density array
  name -> legend label, in drawing order."""
  seeds = results["seeds"]
  cols = min(len(seeds), 5)
  rows = math.ceil(len(seeds) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows),
                           squeeze=False)
  for ax, s in zip(axes.ravel(), seeds):
    d = results["per_seed"][str(s)]["density"]
    logs = {name: np.log(np.asarray(d[name], np.float64))
            for name in labels}
    pooled = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    # A few diverging cells reach log ppl 60: the bins cover the central 98%.
    lo, hi = np.percentile(pooled, [1, 99]) if pooled.size else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 40)
    outside = 0
    for name, label in labels.items():
      v = logs[name]
      inside = np.isfinite(v) & (v >= bins[0]) & (v <= bins[-1])
      outside += int(v.size - inside.sum())
      ax.hist(v[inside], bins=bins, density=True, alpha=0.5, label=label)
    ax.set_title(f"seed {s} ({outside} cells outside the range)", fontsize=8)
    ax.set_xlabel("log shared-weight ppl")
  for ax in axes.ravel()[len(seeds):]:
    ax.axis("off")
  axes[0, 0].legend(fontsize=7)
  return _save(fig, fig_dir, "sampled_ppl_density.png")
