"""Figures of the controller probe (matplotlib, written as PNG files)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # Files only; no display on batch machines.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import networkx as nx  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from nas_jax import search_space  # pylint: disable=g-import-not-at-top
from nas_jax.analysis import stats  # pylint: disable=g-import-not-at-top

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
    d = stats.upper_triangle(_hidden_l2(results, arm))
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
      d = stats.upper_triangle(_hidden_l2(results, arm))
      m = stats.upper_triangle(results["arms"][arm]["_matrices"][name])
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
    d = stats.upper_triangle(_hidden_l2(results, arm)[finite][:, finite])
    diff = stats.upper_triangle(
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
