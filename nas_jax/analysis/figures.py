"""Figures of the reports (matplotlib, written as PNG files).

The controller probe's (:func:`draw_all`), the memory buffer comparison's
(:func:`encoding_scores`) and the ENAS vs random search comparison's
(:func:`sampled_ppl_density`). Each function writes one PNG file into
``fig_dir`` and returns its name. Importing this module selects matplotlib's
file-only backend, so the reports import it only when they write.
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")  # Files only; no display on batch machines.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import networkx as nx  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from nas_jax import search_space  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import pairwise  # pylint: disable=g-import-not-at-top

_COLORS = {"trained": "tab:blue", "untrained": "tab:orange"}
_MAX_SCATTER = 5000


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


def scatter(results, raw, fig_dir):
  names = ("aligned_edit_distance", "common_connections", "wl_kernel")
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4))
  for ax, name in zip(axes, names):
    for arm, color in _COLORS.items():
      d = pairwise.upper_triangle(_hidden_l2(results, arm))
      m = pairwise.upper_triangle(results["arms"][arm]["_matrices"][name])
      idx = _subsample(d.size)
      ax.scatter(m[idx], d[idx], s=3, alpha=0.3, color=color, label=arm)
    ax.set_xlabel(name)
    ax.set_ylabel("L2 distance of h")
    ax.legend()
  return _save(fig, fig_dir, "hidden_vs_graph_metrics.png")


def _cell_graph(ax, tokens, title):
  g = search_space.Architecture.from_tokens(np.asarray(tokens)).to_networkx()
  for layer, nodes in enumerate(nx.topological_generations(g)):
    for node in nodes:
      g.nodes[node]["layer"] = layer
  pos = nx.multipartite_layout(g, subset_key="layer", align="horizontal")
  pos = {n: (x, -y) for n, (x, y) in pos.items()}
  labels = {n: (f"{n}\n{g.nodes[n]['activation']}"
                if g.nodes[n].get("activation") is not None
                else str(n)) for n in g.nodes}
  nx.draw_networkx(g, pos=pos, ax=ax, labels=labels, node_size=700,
                   node_color="#dde8f5", font_size=6, arrowsize=8)
  ax.set_title(title, fontsize=8)
  ax.axis("off")


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


def pca(results, raw, fig_dir):
  """PCA of h (t-SNE needs a dependency this project does not carry)."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  h = raw["trained/h"]
  centred = h - h.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  xy = centred @ vt[:2].T
  # Overflowed ppl (inf) drawn at the largest finite value.
  ppl = raw["trained/ppl"]
  log_ppl = np.log(np.where(np.isfinite(ppl), ppl,
                            np.max(ppl[np.isfinite(ppl)], initial=1.0)))
  colours = (("log ppl", log_ppl),
             ("depth", results["arms"]["trained"]["_properties"]["depth"]))
  for ax, (label, c) in zip(axes, colours):
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=c, s=12, cmap="viridis")
    fig.colorbar(sc, ax=ax, label=label)
    ax.set_title(f"trained controller: PCA of h, coloured by {label}")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
  return _save(fig, fig_dir, "hidden_pca.png")


def per_step(results, fig_dir):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for arm, color in _COLORS.items():
    s = results["arms"][arm]["per_step"]
    for ax, key in zip(axes, ("max_prob", "entropy")):
      ax.plot(s[f"zero_state_{key}"], color=color, label=f"{arm}, zero state")
      ax.plot(s[f"random_state_{key}"], color=color, linestyle="--",
              label=f"{arm}, random state")
  for ax, key in zip(axes, ("max probability", "entropy (nats)")):
    ax.set_xlabel("decision step")
    ax.set_ylabel(f"mean {key}")
    ax.legend(fontsize=7)
  return _save(fig, fig_dir, "per_step_decisions.png")


def draw_all(results, raw, fig_dir) -> dict[str, str]:
  return {
      "density": density(results, fig_dir),
      "scatter": scatter(results, raw, fig_dir),
      "pairs": closest_farthest(results, raw, fig_dir),
      "ppl": ppl_relation(results, raw, fig_dir),
      "pca": pca(results, raw, fig_dir),
      "steps": per_step(results, fig_dir),
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
