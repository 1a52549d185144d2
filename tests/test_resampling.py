"""The fast Mantel nulls and cell bootstrap agree with brute force."""

import itertools

import numpy as np
import pytest
from scipy import stats as sp_stats

from nas_jax.analysis import pairwise
from nas_jax.analysis import resampling

from conftest import integer_metric as _integer_metric


def test_mantel_null_matches_brute_force():
  k = 8
  rng = np.random.default_rng(5)
  a = pairwise.pairwise_l2(rng.normal(size=(k, 3)))
  b = _integer_metric(k, seed=6)
  i, j = pairwise.pairs_index(k)
  x, y = a[i, j], b[i, j]
  rx, ry = sp_stats.rankdata(x), sp_stats.rankdata(y)
  perms = resampling.cell_permutations(25, k, np.random.default_rng(7))
  fast = resampling.mantel_all_pairs(a, x, rx, y, ry, i, j, perms)
  generic = resampling.mantel_subset(a, y, ry, i, j, perms)
  brute = np.array([
      [sp_stats.pearsonr(a[np.ix_(p, p)][i, j], y).statistic,
       sp_stats.spearmanr(a[np.ix_(p, p)][i, j], y).statistic]
      for p in perms])
  np.testing.assert_allclose(fast, brute, atol=1e-12)
  np.testing.assert_allclose(generic, brute, atol=1e-12)
  # And the subset path on a real subset.
  sub = np.array([[0, 3], [5, 1], [2, 7], [4, 6], [1, 2], [0, 7]])
  si, sj = np.minimum(sub[:, 0], sub[:, 1]), np.maximum(sub[:, 0], sub[:, 1])
  ys = b[si, sj]
  null = resampling.mantel_subset(a, ys, sp_stats.rankdata(ys), si, sj, perms)
  brute = np.array([
      [sp_stats.pearsonr(a[p[si], p[sj]], ys).statistic,
       sp_stats.spearmanr(a[p[si], p[sj]], ys).statistic] for p in perms])
  np.testing.assert_allclose(null, brute, atol=1e-12)


def test_bootstrap_weights_match_explicit_resamples():
  k = 9
  rng = np.random.default_rng(8)
  a = pairwise.pairwise_l2(rng.normal(size=(k, 2)))
  b = _integer_metric(k, seed=9)
  i, j = pairwise.pairs_index(k)
  boot = resampling.PairBootstrap(a[i, j], b[i, j], i, j)
  draws = rng.integers(0, k, size=(6, k))
  counts = np.stack([np.bincount(d, minlength=k) for d in draws]).astype(float)
  got = boot(counts)
  for row, d in zip(got, draws):
    # Explicit resample: pairs of distinct positions, same-cell pairs dropped.
    pos = [(u, v) for u, v in itertools.combinations(d, 2) if u != v]
    xs = np.array([a[u, v] for u, v in pos])
    ys = np.array([b[u, v] for u, v in pos])
    assert row[0] == pytest.approx(sp_stats.pearsonr(xs, ys).statistic,
                                   abs=1e-10)
    assert row[1] == pytest.approx(sp_stats.spearmanr(xs, ys).statistic,
                                   abs=1e-10)


@pytest.mark.parametrize("shape,axis,high", [
    ((2000,), -1, None),     # continuous, no ties
    ((3000,), 0, 7),         # heavy ties
    ((6, 50), 1, None),      # rows without ties
    ((6, 50), 1, 5),         # rows with ties
    ((40, 3), 0, 4),         # along the first axis
    ((1,), -1, None),
    ((0,), -1, None),        # empty
    ((3, 0), 1, None),       # empty rows
])
def test_average_ranks_equal_scipy(shape, axis, high):
  rng = np.random.default_rng(sum(shape))
  v = (rng.normal(size=shape) if high is None
       else rng.integers(0, high, size=shape).astype(np.float64))
  got = resampling.average_ranks(v, axis=axis)
  assert got.dtype == np.float64 and got.shape == v.shape
  np.testing.assert_array_equal(got, sp_stats.rankdata(v, axis=axis))


def test_average_ranks_of_integers():
  v = np.random.default_rng(4).integers(-3, 3, size=(5, 40))
  np.testing.assert_array_equal(resampling.average_ranks(v, axis=1),
                                sp_stats.rankdata(v, axis=1))


@pytest.mark.parametrize("values", [
    np.array([3.0, -2.0, 3.0, 0.0, -0.0, 7.0, -2.0, 3.0]),  # float integers
    np.array([5, -4, 5, 5, 1, -4], dtype=np.int8),
    np.array([True, False, True, True]),
    np.array([2**40, 2**40 + 3, 2**40, 2**40 - 1], dtype=np.int64),
    np.array([0.0, 2.0**21, 5.0, 5.0]),                 # range too wide
    np.array([0.5, 1.0, 0.5, 2.0]),                     # not integers
    np.array([1.0, np.inf, 1.0]),                        # not finite
    np.array([-100, 100, 3, -100], dtype=np.int8),       # span past int8
    np.array([-1, 2047, 2048, 2047], dtype=np.float16),  # past float16's
    np.array([0, 2**63 + 5, 2**63], dtype=np.uint64),    # wide: sorted
    np.array([0.0, 5000.0, 7.0]),                        # span >> size
])
def test_average_ranks_counting_path_equals_scipy(values):
  # One row of integers in a narrow range is ranked by counting; the rest
  # by sorting: the same numbers either way.
  counted = resampling._small_integer_codes(values) is not None
  wide = values.astype(np.float64)
  assert counted == bool(
      np.all(np.isfinite(wide)) and np.all(wide == np.floor(wide))
      and np.ptp(wide) < min(resampling._COUNT_RANGE, 4 * wide.size + 1024))
  got = resampling.average_ranks(values)
  assert got.dtype == np.float64
  np.testing.assert_array_equal(got, sp_stats.rankdata(values))
  np.testing.assert_array_equal(
      resampling.average_ranks(values[:, None], axis=0)[:, 0], got)


def test_average_ranks_counting_path_on_metric_sized_rows():
  v = np.random.default_rng(5).integers(0, 24, size=499_500).astype(float)
  assert resampling._small_integer_codes(v) is not None
  np.testing.assert_array_equal(resampling.average_ranks(v),
                                sp_stats.rankdata(v))


def test_average_ranks_one_tied_row_among_untied():
  rng = np.random.default_rng(3)
  v = rng.normal(size=(4, 30))
  v[2, 5] = v[2, 17]  # one tie, in one row only
  np.testing.assert_array_equal(resampling.average_ranks(v, axis=1),
                                sp_stats.rankdata(v, axis=1))
