"""Tests for nas_jax.analysis.recency: prefix metrics and partial Mantel."""

import numpy as np
import pytest
from scipy import stats as sp_stats

from conftest import random_tokens
from nas_jax import search_space as ss
from nas_jax.analysis import graph_metrics as gm
from nas_jax.analysis import mantel_batch
from nas_jax.analysis import pairwise
from nas_jax.analysis import recency


def _sym_noise(rng, k, scale):
  """Symmetric ``[k, k]`` noise, independent over pairs, zero diagonal."""
  e = np.triu(rng.normal(scale=scale, size=(k, k)), 1)
  return e + e.T


# ---------------------------------------------------------------------------
# Read tokens and prefixes.
# ---------------------------------------------------------------------------


def test_read_tokens_drops_the_last_activation():
  cells = random_tokens(np.random.default_rng(0), 4, 5)
  np.testing.assert_array_equal(recency.read_tokens(cells), cells[:, :6])


@pytest.mark.parametrize("k, num_nodes", [(0, 11), (1, 11), (2, 10), (3, 10),
                                          (4, 9), (21, 1)])
def test_prefix_cells_sizes_for_twelve_nodes(k, num_nodes):
  cells = random_tokens(np.random.default_rng(1), 12, 20)
  sub = recency.prefix_cells(cells, k)
  assert sub.shape == (20, 2 * num_nodes - 1)
  np.testing.assert_array_equal(sub, cells[:, :2 * num_nodes - 1])
  np.testing.assert_array_equal(ss.validate_tokens(sub), sub)
  # Every token of the sub-cell was read at least k tokens before the last.
  assert sub.shape[1] <= 2 * 12 - 2 - k


@pytest.mark.parametrize("k", [22, 30, -1])
def test_prefix_cells_rejects_bad_k(k):
  cells = random_tokens(np.random.default_rng(1), 12, 3)
  with pytest.raises(ValueError):
    recency.prefix_cells(cells, k)


def test_prefix_metrics_match_pairwise_all_of_the_sub_cells():
  cells = random_tokens(np.random.default_rng(2), 6, 15)
  every = recency.prefix_metrics(cells, ks=(1, 4))
  assert sorted(every) == [1, 4]
  for k in (1, 4):
    expected = gm.pairwise_all(recency.prefix_cells(cells, k))
    assert sorted(every[k]) == sorted(expected)
    for name, m in expected.items():
      np.testing.assert_array_equal(every[k][name], m)
  some = recency.prefix_metrics(cells, ks=(2,),
                                names=["wl_kernel", "aligned_edit_distance"])
  assert sorted(some[2]) == ["aligned_edit_distance", "wl_kernel"]
  np.testing.assert_array_equal(
      some[2]["aligned_edit_distance"],
      gm.aligned_edit_distance(cells[:, :7]))
  with pytest.raises(ValueError, match="valid names"):
    recency.prefix_metrics(cells, names=["hamming"])


def test_last_decision_differs_by_hand():
  # N = 3: tokens [a0, p1, a1, p2, a2]; the last read token is p2 (index 3).
  cells = np.array([[0, 0, 0, 0, 0],
                    [1, 0, 1, 0, 3],   # Differs from cell 0, but not in p2.
                    [0, 0, 0, 1, 0]])  # Differs from cell 0 only in p2.
  np.testing.assert_array_equal(
      recency.last_decision_differs(cells),
      [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
  with pytest.raises(ValueError):
    recency.last_decision_differs(np.zeros((3, 1), dtype=int))


# ---------------------------------------------------------------------------
# Partial Mantel.
# ---------------------------------------------------------------------------


def _reference_partial(x, y, z):
  """Slow reference: residuals of ranks on [1, rank(z)] by lstsq."""
  i, j = np.triu_indices(x.shape[0], 1)
  rx, ry, rz = (sp_stats.rankdata(m[i, j]) for m in (x, y, z))
  design = np.stack([np.ones_like(rz), rz], axis=1)
  res_x = rx - design @ np.linalg.lstsq(design, rx, rcond=None)[0]
  res_y = ry - design @ np.linalg.lstsq(design, ry, rcond=None)[0]
  return sp_stats.pearsonr(res_x, res_y).statistic


def test_partial_mantel_agrees_with_a_slow_reference():
  rng = np.random.default_rng(3)
  k = 12
  z = recency.last_decision_differs(random_tokens(rng, 6, k))
  shared = pairwise.pairwise_l2(rng.normal(size=(k, 2)))
  # Rounded values give ties in x and y too.
  x = np.round(z + shared + _sym_noise(rng, k, 0.5), 1)
  y = np.round(shared + _sym_noise(rng, k, 0.5), 1)
  i, j = np.triu_indices(k, 1)
  ranks = [recency._standardised_ranks(m[i, j]) for m in (x, y, z)]
  rho, partial = recency._from_ranks(*ranks)
  assert rho == pytest.approx(sp_stats.spearmanr(x[i, j], y[i, j])[0],
                              abs=1e-12)
  assert partial == pytest.approx(_reference_partial(x, y, z), abs=1e-12)

  perms = recency._permutations(40, k, seed=5)
  null = recency._permutation_nulls(k, ranks[0][None], ranks[1][None],
                                    ranks[2], perms)[:, 0, 0]
  expected = [_reference_partial(x[np.ix_(p, p)], y, z) for p in perms]
  np.testing.assert_allclose(null, expected, rtol=0, atol=1e-12)

  res = recency.partial_mantel(x, y, z, num_permutations=40, seed=5)
  assert res["partial_rho"] == partial and res["rho"] == rho
  hits = np.sum(np.abs(expected) >= abs(partial) - 1e-10)
  assert res["p_mantel"] == pytest.approx((1 + hits) / 41)
  assert res["num_pairs"] == k * (k - 1) // 2


def test_partial_mantel_removes_a_shared_recency_component():
  rng = np.random.default_rng(0)
  k = 60
  z = recency.last_decision_differs(random_tokens(rng, 6, k))
  x = z + _sym_noise(rng, k, 0.1)
  y = z + _sym_noise(rng, k, 0.1)
  plain = pairwise.correlate(x, y, num_bootstrap=0)["spearman"]
  assert plain["rho"] > 0.3 and plain["p_mantel"] < 0.01
  res = recency.partial_mantel(x, y, z)
  assert res["rho"] == pytest.approx(plain["rho"], abs=1e-12)
  assert abs(res["partial_rho"]) < 0.1
  assert res["p_mantel"] > 0.05


def test_partial_mantel_keeps_a_component_independent_of_z():
  rng = np.random.default_rng(0)
  k = 60
  z = recency.last_decision_differs(random_tokens(rng, 6, k))
  shared = 0.5 * pairwise.pairwise_l2(rng.normal(size=(k, 3)))
  x = z + shared + _sym_noise(rng, k, 0.1)
  y = z + shared + _sym_noise(rng, k, 0.1)
  res = recency.partial_mantel(x, y, z)
  assert res["partial_rho"] > 0.5
  assert res["p_mantel"] < 0.05


def test_partial_mantel_with_constant_z_is_plain_spearman():
  rng = np.random.default_rng(4)
  k = 20
  x = pairwise.pairwise_l2(rng.normal(size=(k, 3)))
  y = x + _sym_noise(rng, k, 0.3)
  res = recency.partial_mantel(x, y, np.ones((k, k)), num_permutations=99)
  assert res["partial_rho"] == res["rho"]
  i, j = np.triu_indices(k, 1)
  assert res["rho"] == pytest.approx(
      sp_stats.spearmanr(x[i, j], y[i, j])[0], abs=1e-12)
  plain = pairwise.correlate(x, y, num_permutations=99, num_bootstrap=0)
  assert res["p_mantel"] == plain["spearman"]["p_mantel"]


def test_partial_mantel_rejects_nan_and_bad_shapes():
  rng = np.random.default_rng(5)
  x = pairwise.pairwise_l2(rng.normal(size=(6, 2)))
  y = x.copy()
  y[1, 2] = y[2, 1] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    recency.partial_mantel(x, y, x)
  with pytest.raises(ValueError, match="shape"):
    recency.partial_mantel(x, x[:5, :5], x)
  res = recency.partial_mantel(x, np.ones((6, 6)), x, num_permutations=9)
  assert np.isnan(res["rho"]) and np.isnan(res["p_mantel"])


# ---------------------------------------------------------------------------
# Holm.
# ---------------------------------------------------------------------------


def test_holm_by_hand():
  # Sorted: 0.005 * 4, 0.01 * 3, 0.03 * 2, 0.04 * 1 -> running max.
  np.testing.assert_allclose(recency.holm([0.01, 0.04, 0.03, 0.005]),
                             [0.03, 0.06, 0.06, 0.02])
  # Ties share the adjusted value.
  np.testing.assert_allclose(recency.holm([0.02, 0.5, 0.02]),
                             [0.06, 0.5, 0.06])
  # NaN stays NaN and does not count in m (m = 2 here).
  np.testing.assert_allclose(recency.holm([0.01, np.nan, 0.02]),
                             [0.02, np.nan, 0.02])
  # Capped at 1.
  np.testing.assert_allclose(recency.holm([0.6, 0.7, 0.9]), [1.0, 1.0, 1.0])
  assert recency.holm([]).shape == (0,)
  with pytest.raises(ValueError):
    recency.holm([0.1, 1.5])


def test_holm_is_monotone_and_conservative():
  p = np.random.default_rng(6).uniform(size=30) ** 3
  adjusted = recency.holm(p)
  order = np.argsort(p)
  assert np.all(np.diff(adjusted[order]) >= 0)
  assert np.all(adjusted >= p) and np.all(adjusted <= 1.0)


# ---------------------------------------------------------------------------
# Recency: what the verdict compares.
# ---------------------------------------------------------------------------


def _one_hot(tokens):
  """One block of one-hot columns per token position: list of [K, size]."""
  sizes = ss.decision_sizes(ss.num_nodes_from_tokens(tokens.shape[1]))
  return [np.eye(s)[tokens[:, t]] for t, s in enumerate(sizes)]


@pytest.mark.parametrize("seed", range(5))
def test_recency_controls_separate_last_token_from_memory(seed):
  """Carry A holds only the last read token, carry B every read token.

  Against the full-cell metric both correlate (the recency artefact); against
  the prefix metric (k = 1) and given the last decision, only B does. A's
  partial p-value is a null p-value (uniform over seeds; seed 3 gives 0.014),
  so only the size of its partial rho is checked.
  """
  rng = np.random.default_rng(seed)
  k, num_nodes = 60, 6
  cells = random_tokens(rng, num_nodes, k)
  blocks = _one_hot(cells)[:2 * num_nodes - 2]  # What the carry has read.
  carry_a = blocks[-1] + 1e-3 * rng.normal(size=blocks[-1].shape)
  carry_b = np.concatenate(blocks, axis=1)
  dist_a, dist_b = pairwise.pairwise_l2(carry_a), pairwise.pairwise_l2(carry_b)
  full = gm.aligned_edit_distance(cells)
  prefix = recency.prefix_metrics(
      cells, ks=(1,), names=["aligned_edit_distance"])[1][
          "aligned_edit_distance"]
  recent = recency.last_decision_differs(cells)

  artefact = pairwise.correlate(dist_a, full, num_bootstrap=0)["spearman"]
  assert artefact["rho"] > 0.1 and artefact["p_mantel"] < 0.01

  corr_a = pairwise.correlate(dist_a, prefix, num_bootstrap=0)["spearman"]
  corr_b = pairwise.correlate(dist_b, prefix, num_bootstrap=0)["spearman"]
  assert abs(corr_a["rho"]) < 0.1 and corr_a["p_mantel"] > 0.05
  assert corr_b["rho"] > 0.5 and corr_b["p_mantel"] < 0.01

  part_a = recency.partial_mantel(dist_a, full, recent)
  part_b = recency.partial_mantel(dist_b, full, recent)
  assert abs(part_a["partial_rho"]) < 0.1
  assert part_b["partial_rho"] > 0.5 and part_b["p_mantel"] < 0.01


def test_partial_mantel_many_equals_one_call_per_pair():
  """Every carry x metric pair, given z and with a constant z (the prefix
  rows), gets the numbers of its own partial_mantel call (same
  permutations), including NaN for a constant metric."""
  rng = np.random.default_rng(4)
  tokens = random_tokens(rng, 5, 40)
  xs = {"a": pairwise.pairwise_l2(rng.normal(size=(40, 4))),
        "b": pairwise.pairwise_l2(np.eye(5)[tokens[:, -2]]
                                  + 0.01 * rng.normal(size=(40, 5)))}
  ys = dict(gm.pairwise_all(tokens))
  ys["constant"] = np.ones((40, 40))
  last = recency.last_decision_differs(tokens)
  for z in (last, np.zeros_like(last)):
    many = recency.partial_mantel_many(xs, ys, z, num_permutations=59, seed=2,
                                       workers=2)
    for a in xs:
      for b in ys:
        one = recency.partial_mantel(xs[a], ys[b], z, num_permutations=59,
                                     seed=2)
        for key in ("rho", "partial_rho", "p_mantel", "null_sd"):
          np.testing.assert_allclose(many[a][b][key], one[key], rtol=1e-12,
                                     atol=1e-12, err_msg=f"{a} {b} {key}")
    assert np.isnan(many["a"]["constant"]["partial_rho"])


def test_permutation_nulls_equal_the_metric_gathering_path():
  """The nulls gather the x's (mantel_batch.CarryGatherNulls); gathering
  the y's and z instead (mantel_batch.AllPairsNulls, the earlier path) gives
  the same partial correlations for the same permutations, given z and with
  a constant z (left out of the product)."""
  rng = np.random.default_rng(6)
  k = 25
  tokens = random_tokens(rng, 6, k)
  i, j = np.triu_indices(k, 1)
  xs = [pairwise.pairwise_l2(rng.normal(size=(k, 3))) for _ in range(5)]
  zx = np.stack([recency._standardised_ranks(x[i, j]) for x in xs])
  zy = np.stack([recency._standardised_ranks(m[i, j])
                 for m in gm.pairwise_all(tokens).values()])
  perms = recency._permutations(30, k, seed=1)
  last = recency.last_decision_differs(tokens)
  for zz in (recency._standardised_ranks(last[i, j]), np.zeros(i.size)):
    targets = np.concatenate([zy, zz[None]])
    old = mantel_batch.AllPairsNulls(
        k, zx, np.zeros_like(zx), targets,
        np.full(targets.shape, np.nan))(perms)[..., 0]
    expected = recency._partial(old[:, :, :-1], old[:, :, -1:],
                                (zy @ zz)[None, None])
    got = recency._permutation_nulls(k, zx, zy, zz, perms, workers=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)


def test_partial_mantel_many_with_a_z_per_y_equals_one_call_per_z():
  """ys given their own z (the probe: metrics given the last decision,
  prefixes given a constant) share one pass and get the numbers of one
  call per z."""
  rng = np.random.default_rng(7)
  tokens = random_tokens(rng, 5, 30)
  xs = {"a": pairwise.pairwise_l2(rng.normal(size=(30, 4))),
        "b": pairwise.pairwise_l2(rng.normal(size=(30, 2)))}
  metrics = gm.pairwise_all(tokens)
  prefix = recency.prefix_metrics(tokens, (1, 2))
  last = recency.last_decision_differs(tokens)
  constant = np.zeros_like(last)
  ys = dict(metrics)
  ys.update({(n, k): prefix[k][n] for k in prefix for n in metrics})
  zs = {y: last if y in metrics else constant for y in ys}
  many = recency.partial_mantel_many(xs, ys, zs, num_permutations=59, seed=3,
                                     workers=2)
  given = recency.partial_mantel_many(xs, metrics, last, num_permutations=59,
                                      seed=3)
  plain = recency.partial_mantel_many(
      xs, {y: ys[y] for y in ys if y not in metrics}, constant,
      num_permutations=59, seed=3)
  for a in xs:
    for y in ys:
      one = (given if y in metrics else plain)[a][y]
      for key in ("rho", "partial_rho", "p_mantel", "null_sd"):
        np.testing.assert_allclose(many[a][y][key], one[key], rtol=1e-12,
                                   atol=1e-12, err_msg=f"{a} {y} {key}")
  with pytest.raises(ValueError, match="no z"):
    recency.partial_mantel_many(xs, metrics, {}, num_permutations=9)
