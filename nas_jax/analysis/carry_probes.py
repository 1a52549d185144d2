"""Probes of the controller's carries: what a carry tells about its cell.

Two questions beside the pair correlations of
:mod:`nas_jax.analysis.pairwise`, asked of the ``[K, D]`` carries (hidden
states) of ``K`` sampled cells:

* Are cells that are close in carry space more similar as graphs?
  :func:`nearest_neighbour_check` compares each cell's nearest neighbours
  (:func:`nearest_neighbours`) with random pairs, with a permutation p-value
  over cell relabellings.
* Does the carry predict a property of its cell (depth, loose ends, log
  perplexity)? :func:`ridge_cv`: a linear (ridge) probe with nested
  cross-validation, against the constant predictor.

Random draws come from the streams ``NEIGHBOURS`` and ``FOLDS`` of
:mod:`nas_jax.streams`. Everything here is host-side NumPy/SciPy; never call
it inside ``jax.jit``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as sp_stats

from nas_jax import streams
from nas_jax.analysis import blas
from nas_jax.analysis import pairwise
from nas_jax.analysis import resampling

DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-3, 6))

# ---------------------------------------------------------------------------
# Nearest neighbours in hidden space.
# ---------------------------------------------------------------------------


def nearest_neighbours(dist, k: int = 1) -> np.ndarray:
  """The ``k`` nearest other cells of every cell: ``int64[K, k]``.

  Args:
    dist: ``float[K, K]`` distances (diagonal ignored). Ties are broken by
      the lower cell index (stable sort).
    k: neighbours per cell, ``1 <= k < K``.
  """
  d = pairwise.as_square(dist, "dist").copy()
  if not 1 <= k < d.shape[0]:
    raise ValueError(f"need 1 <= k < K = {d.shape[0]}, got k = {k}")
  np.fill_diagonal(d, np.inf)
  return np.argsort(d, axis=1, kind="stable")[:, :k].astype(np.int64)


def nearest_neighbour_check(hidden_dist, metric, *, larger_is_similar: bool,
                            k: int = 1, num_permutations: int = 999,
                            seed: int = 0) -> dict[str, Any]:
  """Are cells that are close in hidden space more similar as graphs?

  For each cell ``i`` its ``k`` nearest other cells ``n`` in ``hidden_dist``
  give ``K k`` ordered pairs ``(i, n)`` (a mutual pair counts twice); their
  mean ``metric`` value is compared with the mean over all ``K (K - 1)``
  ordered pairs of distinct cells, which is the exact expected value for a
  random pair of distinct cells (no sampling needed).

  p-value: one-sided permutation test. The cells of ``metric`` are relabelled
  by random permutations ``pi`` and the neighbour mean recomputed as the mean
  of ``metric[pi[i], pi[n]]``; this keeps the neighbour graph and the
  dependence between pairs, unlike a rank test on pairs. ``p = (1 + #{gain_pi
  >= gain_obs}) / (1 + n_perm)``, where ``gain`` is the neighbour mean minus
  the random mean, sign-flipped for distances so that positive always means
  "neighbours are more similar than chance". For reference, scipy's
  Mann-Whitney U between neighbour pairs and all pairs (same one-sided
  alternative) is reported as ``p_mannwhitney_naive``: it treats pairs as
  independent and is anti-conservative.

  Args:
    hidden_dist: ``float[K, K]`` hidden-state distances.
    metric: ``float[K, K]`` symmetric graph metric, finite off the diagonal.
    larger_is_similar: True for similarities, False for distances.
    k: neighbours per cell.
    num_permutations: relabellings for the p-value; 0 skips it (NaN).
    seed: seeds the relabellings.

  Returns:
    ``{neighbour_mean, random_mean, difference (neighbour - random),
    similarity_gain, p_value, p_mannwhitney_naive, null_sd, k, num_cells,
    num_neighbour_pairs, num_permutations, larger_is_similar}``.
  """
  hidden_dist, metric = _check_neighbour_inputs(hidden_dist, metric)
  n_cells = metric.shape[0]
  nn = nearest_neighbours(hidden_dist, k)
  rows = np.repeat(np.arange(n_cells), k)
  cols = nn.ravel()
  neighbour_values = metric[rows, cols]
  neighbour_mean = float(neighbour_values.mean())
  random_mean = float(metric[~np.eye(n_cells, dtype=bool)].mean())
  sign = 1.0 if larger_is_similar else -1.0
  gain = sign * (neighbour_mean - random_mean)
  p_value, null_sd = math.nan, math.nan
  if num_permutations:
    perms = resampling.cell_permutations(
        num_permutations, n_cells, resampling.rng(seed, streams.NEIGHBOURS))
    null_gain = sign * (metric[perms[:, rows], perms[:, cols]].mean(axis=1)
                        - random_mean)
    p_value = float((1 + np.sum(null_gain >= gain - resampling.P_TOL * max(
        1.0, abs(gain)))) / (1 + num_permutations))
    null_sd = float(np.std(null_gain))
  alternative = "greater" if larger_is_similar else "less"
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    p_mw = float(sp_stats.mannwhitneyu(
        neighbour_values, pairwise.upper_triangle(metric),
        alternative=alternative).pvalue)
  return {
      "neighbour_mean": neighbour_mean, "random_mean": random_mean,
      "difference": neighbour_mean - random_mean, "similarity_gain": gain,
      "p_value": p_value, "p_mannwhitney_naive": p_mw, "null_sd": null_sd,
      "k": int(k), "num_cells": int(n_cells),
      "num_neighbour_pairs": int(rows.size),
      "num_permutations": int(num_permutations),
      "larger_is_similar": bool(larger_is_similar),
  }


def _check_neighbour_inputs(hidden_dist, metric
                            ) -> tuple[np.ndarray, np.ndarray]:
  hidden_dist = pairwise.as_square(hidden_dist, "hidden_dist")
  metric = pairwise.as_square(metric, "metric")
  if metric.shape != hidden_dist.shape:
    raise ValueError(f"shapes differ: {hidden_dist.shape} vs {metric.shape}")
  if not np.all(np.isfinite(metric[~np.eye(metric.shape[0], dtype=bool)])):
    raise ValueError("metric must be finite off the diagonal")
  pairwise.check_symmetric(metric, "metric")
  return hidden_dist, metric


# ---------------------------------------------------------------------------
# Ridge probe with nested cross-validation.
# ---------------------------------------------------------------------------


def ridge_cv(x, y, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
             folds: int = 5, seed: int = 0) -> dict[str, Any]:
  """Cross-validated R^2 of a linear (ridge) probe from ``x`` to ``y``.

  Nested CV: the samples are split into ``folds`` outer folds. For each,
  alpha is chosen by an inner ``folds``-fold CV on the training part only
  (lowest pooled squared error; ties go to the larger alpha), the model is
  refitted on the whole training part with it and predicts the held-out
  fold. Features are standardised and the target centred (intercept) with
  training-part statistics only. No held-out sample influences its own
  prediction.

  ``r2`` is the pooled out-of-fold R^2, ``1 - sum (y - yhat)^2 /
  sum (y - mean(y))^2`` over all samples, each predicted by the model that
  did not see it. ``r2_constant`` is the same for the constant predictor
  "training-part mean", which is always ``<= 0``: the honest "no signal"
  reference. Per-fold values are reported too.

  The default alpha grid, ``1e-3 .. 1e5``, reaches beyond ``1e3`` so that
  with more features than samples (hidden size >= K / folds) the inner CV can
  shrink the probe to nearly the mean when there is no signal.

  Args:
    x: ``float[K, D]`` features (e.g. hidden states).
    y: ``float[K]`` target (a cell property, log perplexity).
    alphas: ridge penalties to choose from (penalty on standardised
      features: ``|y_c - X_s w|^2 + alpha |w|^2``).
    folds: outer and inner folds, ``2 <= folds`` and ``K >= 2 folds``.
    seed: seeds the fold splits.

  Returns:
    ``{r2, r2_constant, r2_fold: [folds], r2_fold_mean, r2_constant_fold_mean,
    alpha_per_fold: [folds], alphas, r2_by_alpha, folds, num_samples,
    num_features, constant_target}``. ``r2_by_alpha`` is the pooled outer-CV
    R^2 with each alpha fixed (not nested: its maximum is optimistic).
    A constant target (where R^2 is undefined) gives NaN for every R^2 and
    ``constant_target = True``.
  """
  x, y, alphas = _check_ridge_inputs(x, y, alphas, folds)
  n = x.shape[0]
  out: dict[str, Any] = {
      "alphas": alphas.tolist(), "folds": int(folds), "num_samples": int(n),
      "num_features": int(x.shape[1]), "constant_target": False}
  if np.std(y) <= 1e-12 * max(1.0, abs(float(np.mean(y)))):
    nan_list = [math.nan] * folds
    out.update(constant_target=True, r2=math.nan, r2_constant=math.nan,
               r2_fold=nan_list, r2_fold_mean=math.nan,
               r2_constant_fold_mean=math.nan, alpha_per_fold=nan_list,
               r2_by_alpha=[math.nan] * alphas.size)
    return out
  return _ridge_cv_batch(x, {"y": y}, alphas, folds, seed)["y"]


def ridge_cv_many(x, ys: Mapping[str, np.ndarray], *,
                  alphas: Sequence[float] = DEFAULT_ALPHAS, folds: int = 5,
                  seed: int = 0) -> dict[str, dict[str, Any]]:
  """:func:`ridge_cv` of ``x`` against every target in ``ys``, together.

  ``ridge_cv`` draws its folds from a fresh generator of ``seed``, so every
  target gets the same outer and inner folds, and the thin SVD of each
  training part's standardised features does not depend on the target:
  one SVD per (outer, inner) fold serves all targets (``u^T y`` becomes
  ``u^T Y``). The numbers are ``ridge_cv``'s to rounding (~1e-15).

  Args:
    x: ``float[K, D]`` features.
    ys: name -> ``float[K]`` target.
    alphas, folds, seed: as :func:`ridge_cv`.

  Returns:
    name -> the dict of ``ridge_cv(x, ys[name], ...)``.
  """
  out, batch = {}, {}
  for name, y in ys.items():
    xc, yc, sorted_alphas = _check_ridge_inputs(x, y, alphas, folds)
    if np.std(yc) <= 1e-12 * max(1.0, abs(float(np.mean(yc)))):
      out[name] = ridge_cv(x, y, alphas=alphas, folds=folds, seed=seed)
    else:
      batch[name] = yc
  if batch:
    out.update(_ridge_cv_batch(xc, batch, sorted_alphas, folds, seed))
  return {name: out[name] for name in ys}


def _ridge_cv_batch(x: np.ndarray, ys: dict[str, np.ndarray],
                    alphas: np.ndarray, folds: int,
                    seed: int) -> dict[str, dict[str, Any]]:
  """:func:`ridge_cv_many` for checked, non-constant targets."""
  with blas.single_threaded():  # Many medium SVDs: see nas_jax.analysis.blas.
    return _ridge_cv_batch_body(x, ys, alphas, folds, seed)


def _ridge_cv_batch_body(x, ys, alphas, folds, seed):
  names = list(ys)
  y = np.stack([ys[n] for n in names], axis=1)                # [K, T]
  n = x.shape[0]
  generator = resampling.rng(seed, streams.FOLDS)
  outer = _fold_ids(n, folds, generator)
  by_alpha = np.empty((n, len(names), alphas.size))
  chosen = np.empty((folds, len(names)), dtype=np.int64)
  constant = np.empty((n, len(names)))
  for f in range(folds):
    train, test = outer != f, outer == f
    chosen[f] = _inner_cv_alpha(x[train], y[train], alphas, folds, generator)
    by_alpha[test] = _ridge_predictions(x[train], y[train], x[test], alphas)
    constant[test] = y[train].mean(axis=0)
  out = {}
  for t, name in enumerate(names):
    nested = by_alpha[np.arange(n), t, chosen[outer, t]]
    out[name] = {
        "alphas": alphas.tolist(), "folds": int(folds), "num_samples": int(n),
        "num_features": int(x.shape[1]), "constant_target": False,
        **_ridge_summary(y[:, t], outer, folds, nested, constant[:, t],
                         by_alpha[:, t], alphas[chosen[:, t]])}
  return out


def _ridge_summary(y, outer, folds, nested, constant, by_alpha,
                   chosen) -> dict[str, Any]:
  """The R^2 entries of :func:`ridge_cv` from its out-of-fold predictions."""
  r2_fold = [_r2(y[outer == f], nested[outer == f]) for f in range(folds)]
  r2_const_fold = [_r2(y[outer == f], constant[outer == f])
                   for f in range(folds)]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # All-NaN folds.
    fold_mean = float(np.nanmean(r2_fold))
    const_fold_mean = float(np.nanmean(r2_const_fold))
  return {
      "r2": _r2(y, nested), "r2_constant": _r2(y, constant),
      "r2_fold": r2_fold, "r2_fold_mean": fold_mean,
      "r2_constant_fold_mean": const_fold_mean,
      "alpha_per_fold": [float(a) for a in chosen],
      "r2_by_alpha": [_r2(y, by_alpha[:, c]) for c in range(by_alpha.shape[1])],
  }


def _check_ridge_inputs(x, y, alphas, folds
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``(x, y, sorted alphas)`` as float64 arrays, after checking them."""
  x = pairwise.as_points(x)
  y = np.asarray(y, dtype=np.float64)
  if y.shape != (x.shape[0],):
    raise ValueError(f"y must be float[{x.shape[0]}], got shape {y.shape}")
  if not np.all(np.isfinite(y)):
    raise ValueError("y contains NaN or inf")
  alphas = np.asarray(alphas, dtype=np.float64)
  if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0):
    raise ValueError("alphas must be a non-empty sequence of positive floats")
  n = x.shape[0]
  if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) \
      or folds < 2 or n < 2 * folds:
    raise ValueError(f"need an int folds >= 2 and K >= 2 folds; got "
                     f"folds = {folds!r}, K = {n}")
  return x, y, np.sort(alphas)


def _fold_ids(n: int, folds: int,
              generator: np.random.Generator) -> np.ndarray:
  """``int64[n]`` fold of each sample: a random split into near-equal folds."""
  ids = np.empty(n, dtype=np.int64)
  for f, part in enumerate(np.array_split(generator.permutation(n), folds)):
    ids[part] = f
  return ids


def _inner_cv_alpha(x: np.ndarray, y: np.ndarray, alphas: np.ndarray,
                    folds: int, generator: np.random.Generator) -> np.ndarray:
  """Per target (column of ``y`` ``[n, T]``), the index of the alpha with the
  lowest pooled squared error of a ``folds``-fold CV on ``(x, y)``; ties go
  to the larger alpha."""
  inner = _fold_ids(x.shape[0], folds, generator)
  sse = np.zeros((y.shape[1], alphas.size))
  for g in range(folds):
    fit, held = inner != g, inner == g
    pred = _ridge_predictions(x[fit], y[fit], x[held], alphas)
    sse += np.sum((y[held, :, None] - pred) ** 2, axis=0)
  return alphas.size - 1 - np.argmin(sse[:, ::-1], axis=1)


def _ridge_predictions(x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray,
                       alphas: np.ndarray) -> np.ndarray:
  """Ridge predictions ``float[n_test, T, n_alphas]`` for the targets
  ``y_train`` ``[n_train, T]``, one column per alpha.

  Features are standardised with the training part's mean and standard
  deviation (a constant training column is only centred, so it becomes 0);
  each target is centred on its training mean, which is the intercept
  (unpenalised). Solved for all targets and alphas from one thin SVD.
  """
  mu = x_train.mean(axis=0)
  sd = x_train.std(axis=0)
  sd = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mu)), sd, 1.0)
  xs = (x_train - mu) / sd
  y_mean = y_train.mean(axis=0)                               # [T]
  u, s, vt = np.linalg.svd(xs, full_matrices=False)
  uty = u.T @ (y_train - y_mean)                              # [r, T]
  shrink = s[:, None] / (s[:, None] ** 2 + alphas[None, :])   # [r, n_alphas]
  coef = vt.T @ (shrink[:, None, :] * uty[:, :, None]).reshape(s.size, -1)
  pred = ((x_test - mu) / sd) @ coef                          # [n, T * A]
  return pred.reshape(x_test.shape[0], -1, alphas.size) + y_mean[:, None]


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
  sst = np.sum((y - y.mean()) ** 2)
  if not sst > 0:
    return math.nan
  return float(1.0 - np.sum((y - pred) ** 2) / sst)
