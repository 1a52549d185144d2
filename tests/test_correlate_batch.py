"""The batched nulls, bootstraps and correlations equal the per-call ones."""

import math

import numpy as np
import pytest
from scipy import stats as sp_stats

from nas_jax.analysis import bootstrap_batch
from nas_jax.analysis import correlate_batch
from nas_jax.analysis import mantel_batch
from nas_jax.analysis import pairwise
from nas_jax.analysis import resampling

from conftest import integer_metric as _integer_metric

K = 30


def _carries(k, seed):
  """Three carry distances; the last has many ties (rounded)."""
  rng = np.random.default_rng(seed)
  a = [pairwise.pairwise_l2(rng.normal(size=(k, 4))) for _ in range(2)]
  return a + [np.round(2.0 * a[0])]


def _ppl_difference(k, seed):
  """``(|ppl_i - ppl_j|, finite)`` with two cells of infinite ppl."""
  rng = np.random.default_rng(seed)
  ppl = np.exp(rng.normal(size=k))
  ppl[[2, 7]] = np.inf
  finite = np.isfinite(ppl)
  p0 = np.where(finite, ppl, 0.0)
  return np.abs(p0[:, None] - p0[None, :]), finite


def _on_pairs(k, pairs, seed):
  """An integer metric known only at ``pairs`` (NaN elsewhere)."""
  values = np.random.default_rng(seed).integers(0, 9, len(pairs)).astype(
      float)
  m = np.full((k, k), np.nan)
  m[pairs[:, 0], pairs[:, 1]] = values
  m[pairs[:, 1], pairs[:, 0]] = values
  return m


def _three_metrics():
  """Two integer metrics and a continuous one (L2 of random points)."""
  return [_integer_metric(K, 1), _integer_metric(K, 2),
          pairwise.pairwise_l2(np.random.default_rng(3).normal(size=(K, 2)))]


@pytest.mark.parametrize("block,chunk,sum_codes,max_codes,paths", [
    # Small tiles (many blocks of pairs, the last one short, and chunks of
    # permutations); the integer metrics (6 values each) summed per code
    # alone, the continuous one (435 values) looked up by code...
    (50, 7, 8, 1 << 16, (2, 1, 0)),
    # ... or read from its float table.
    (50, 7, 8, 100, (2, 0, 1)),
    # The default tiles and limits: all three summed per joint code (at
    # most one per pair: 435).
    (1 << 10, 32, 1 << 10, 1 << 16, (1, 0, 0)),
])
def test_all_pairs_nulls_match_mantel_all_pairs(block, chunk, sum_codes,
                                                max_codes, paths,
                                                monkeypatch):
  monkeypatch.setattr(mantel_batch, "_ALL_BLOCK", block)
  monkeypatch.setattr(mantel_batch, "_ALL_CHUNK", chunk)
  monkeypatch.setattr(mantel_batch, "_SUM_CODES", sum_codes)
  monkeypatch.setattr(mantel_batch, "_MAX_CODES", max_codes)
  carries = _carries(K, seed=0)
  metrics = _three_metrics()
  i, j = pairwise.pairs_index(K)
  s = resampling.standardise
  metric_ranks = np.stack([s(sp_stats.rankdata(m[i, j])) for m in metrics])
  metric_ranks[1] = np.nan  # A metric with a Pearson null only.
  perms = resampling.cell_permutations(40, K, np.random.default_rng(4))
  batch = mantel_batch.AllPairsNulls(
      K, np.stack([s(a[i, j]) for a in carries]),
      np.stack([s(sp_stats.rankdata(a[i, j])) for a in carries]),
      np.stack([s(m[i, j]) for m in metrics]), metric_ranks)
  # Sources summed per code, looked up by code, read from float tables.
  assert (len(batch.sums),
          sum(t is not None for t, *_ in batch.sources),
          sum(t is None for t, *_ in batch.sources)) == paths
  nulls = batch(perms, workers=2)
  with pytest.raises(ValueError, match="permutations"):
    batch(np.full((1, K), K))  # Unchecked indices in the compiled sums.
  for c, a in enumerate(carries):
    for b, m in enumerate(metrics):
      x, y = a[i, j], m[i, j]
      ref = resampling.mantel_all_pairs(a, x, sp_stats.rankdata(x), y,
                                        sp_stats.rankdata(y), i, j, perms)
      np.testing.assert_allclose(nulls[:, c, b, 0], ref[:, 0], atol=1e-14)
      if b == 1:
        assert np.all(np.isnan(nulls[:, c, b, 1]))
      else:
        np.testing.assert_allclose(nulls[:, c, b, 1], ref[:, 1], atol=1e-14)


@pytest.mark.parametrize("block,chunk", [(50, 7), (1 << 10, 16)])
def test_carry_gather_nulls_match_mantel_all_pairs(block, chunk,
                                                   monkeypatch):
  # Five carries: two rows of gathered carries, the second zero-padded.
  monkeypatch.setattr(mantel_batch, "_ALL_BLOCK", block)
  monkeypatch.setattr(mantel_batch, "_ALL_CHUNK", chunk)
  carries = _carries(K, seed=0) + _carries(K, seed=5)[:2]
  metrics = _three_metrics()
  i, j = pairwise.pairs_index(K)
  s = resampling.standardise
  zx = np.stack([s(sp_stats.rankdata(a[i, j])) for a in carries])
  zy = np.stack([s(sp_stats.rankdata(m[i, j])) for m in metrics])
  perms = resampling.cell_permutations(40, K, np.random.default_rng(4))
  got = mantel_batch.CarryGatherNulls(K, zx, zy)(perms, workers=2)
  assert got.shape == (40, len(carries), len(metrics))
  # The same sums as AllPairsNulls (metrics gathered instead)...
  other = mantel_batch.AllPairsNulls(K, zx, np.zeros_like(zx), zy,
                                     np.full(zy.shape, np.nan))(perms)
  np.testing.assert_allclose(got, other[..., 0], rtol=0, atol=1e-14)
  # ... and as the per-call reference (its Spearman null).
  for c, a in enumerate(carries):
    for b, m in enumerate(metrics):
      x, y = a[i, j], m[i, j]
      ref = resampling.mantel_all_pairs(a, x, sp_stats.rankdata(x), y,
                                        sp_stats.rankdata(y), i, j, perms)
      np.testing.assert_allclose(got[:, c, b], ref[:, 1], atol=1e-14)
  assert mantel_batch.CarryGatherNulls(K, zx, zy)(perms[:0]).shape == (
      0, len(carries), len(metrics))
  with pytest.raises(ValueError, match="permutations"):
    # Unchecked indices in the compiled gather otherwise.
    mantel_batch.CarryGatherNulls(K, zx, zy)(np.full((1, K), K))


@pytest.mark.parametrize("k,target", [(2, 1), (5, 1), (30, 50), (30, 7),
                                      (1000, 1 << 10)])
def test_row_blocks_cover_the_pairs_in_whole_rows(k, target):
  blocks = mantel_batch.row_blocks(k, target)
  assert blocks[0][:3:2] == (0, 0) and blocks[-1][1] == k - 1
  assert blocks[-1][3] == k * (k - 1) // 2
  for (i0, i1, m0, m1), after in zip(blocks, blocks[1:] + [None]):
    assert i0 < i1 and m1 - m0 == sum(k - i - 1 for i in range(i0, i1))
    if after is not None:
      assert after[0] == i1 and after[2] == m1  # Contiguous.
      # Each block stops as soon as it reaches the target.
      assert m1 - m0 - (k - i1) < target <= m1 - m0


@pytest.mark.parametrize("ties", [False, True])
def test_cell_subset_nulls_match_the_subset_path(ties):
  """Same permutations of all K cells, no re-ranking, same numbers."""
  a = _carries(K, seed=5)[2 if ties else 0]
  y, finite = _ppl_difference(K, seed=6)
  i, j = pairwise.pairs_index(K)
  keep = finite[i] & finite[j]
  si, sj = i[keep], j[keep]
  perms = resampling.cell_permutations(60, K, np.random.default_rng(7))
  ref = resampling.mantel_subset(a, y[si, sj], sp_stats.rankdata(y[si, sj]),
                                 si, sj, perms)
  got = mantel_batch.CellSubsetNulls(a, y, finite)(perms, workers=2)
  np.testing.assert_allclose(got, ref, atol=1e-13)


def _subset_reference(a, y, cells, perms):
  """:func:`resampling.mantel_subset` on the pairs among ``cells``."""
  i, j = pairwise.pairs_index(a.shape[0])
  keep = cells[i] & cells[j]
  si, sj = i[keep], j[keep]
  return resampling.mantel_subset(a, y[si, sj], sp_stats.rankdata(y[si, sj]),
                                  si, sj, perms)


@pytest.mark.parametrize("outside", [[], [4], list(range(1, K, 2)),
                                     list(range(K - 4))])
def test_cell_subset_nulls_removed_cells(outside):
  """No removed cell (|R| = 0), one, half of them (many pairs among them)
  and all but four (6 pairs left), with a tied carry."""
  a = _carries(K, seed=28)[2]
  ppl = np.exp(np.random.default_rng(29).normal(size=K))
  ppl[outside] = np.inf
  cells = np.isfinite(ppl)
  p0 = np.where(cells, ppl, 0.0)
  y = np.abs(p0[:, None] - p0[None, :])
  perms = resampling.cell_permutations(40, K, np.random.default_rng(30))
  nulls = mantel_batch.CellSubsetNulls(a, y, cells)
  got = nulls(perms, workers=2)
  np.testing.assert_allclose(got, _subset_reference(a, y, cells, perms),
                             atol=1e-13)
  np.testing.assert_array_equal(nulls(perms, workers=1), got)
  assert nulls(perms[:0]).shape == (0, 2)


@pytest.mark.parametrize("levels", [None, 21])
def test_cell_subset_nulls_at_a_hundred_and_fifty_cells(levels):
  """K = 150 (11,175 pairs): rows of pairs longer than the prefetch
  distance and hundreds of mark words; a continuous carry, and one of 21
  values (tie groups of hundreds of pairs, several per mark word)."""
  k = 150
  rng = np.random.default_rng(34)
  a = pairwise.pairwise_l2(rng.normal(size=(k, 3)))
  if levels is not None:
    a = np.floor(a / a.max() * (levels - 1e-9))
  ppl = np.exp(rng.normal(size=k))
  ppl[rng.choice(k, 7, replace=False)] = np.inf
  cells = np.isfinite(ppl)
  p0 = np.where(cells, ppl, 0.0)
  y = np.abs(p0[:, None] - p0[None, :])
  perms = resampling.cell_permutations(24, k, np.random.default_rng(35))
  got = mantel_batch.CellSubsetNulls(a, y, cells)(perms, workers=2)
  np.testing.assert_allclose(got, _subset_reference(a, y, cells, perms),
                             atol=1e-13)


def test_cell_subset_nulls_nan_where_the_carry_is_constant():
  """Three cells left: their 3 pairs often take one carry value, and both
  nulls are NaN there, as the reference's. The carry is 0 or 1, half each,
  so every sum is exact and the reference's norm exactly 0."""
  k = 12
  i, j = pairwise.pairs_index(k)
  values = np.zeros(i.size)
  values[np.random.default_rng(31).choice(i.size, i.size // 2,
                                          replace=False)] = 1.0
  a = np.zeros((k, k))
  a[i, j] = a[j, i] = values
  cells = np.isin(np.arange(k), [1, 4, 9])
  y = pairwise.pairwise_l2(np.random.default_rng(32).normal(size=(k, 2)))
  perms = resampling.cell_permutations(100, k, np.random.default_rng(33))
  nulls = mantel_batch.CellSubsetNulls(a, y, cells)
  got = nulls(perms)
  ref = _subset_reference(a, y, cells, perms)
  assert 0 < np.isnan(ref[:, 0]).sum() < len(perms)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
  np.testing.assert_allclose(got, ref, atol=1e-13)
  with pytest.raises(ValueError, match="permutations"):
    nulls(np.zeros((1, k), dtype=int))  # Unchecked indices otherwise.


def test_subset_nulls_match_one_metric_at_a_time():
  a = _carries(K, seed=8)[0]
  i, j = pairwise.pairs_index(K)
  pick = np.sort(np.random.default_rng(9).choice(i.size, 50, replace=False))
  si, sj = i[pick], j[pick]
  ys = [_integer_metric(K, s)[si, sj] for s in (10, 11)]
  perms = resampling.cell_permutations(30, K, np.random.default_rng(12))
  s = resampling.standardise
  got = mantel_batch.subset_nulls(
      a, np.stack([s(y) for y in ys]),
      np.stack([s(sp_stats.rankdata(y)) for y in ys]), si, sj, perms)
  for t, y in enumerate(ys):
    ref = resampling.mantel_subset(a, y, sp_stats.rankdata(y), si, sj, perms)
    np.testing.assert_allclose(got[:, t], ref, atol=1e-14)


@pytest.mark.parametrize("carry", [0, 2])  # Without and with ties.
def test_shared_bootstrap_matches_bootstrap_over_cells(carry):
  a = _carries(K, seed=13)[carry]
  diff, finite = _ppl_difference(K, seed=14)
  metrics = {"int1": (_integer_metric(K, 15), None),
             "int2": (_integer_metric(K, 16), None),
             "cont": (pairwise.pairwise_l2(np.random.default_rng(17).normal(
                 size=(K, 3))), None),
             "ppl": (diff, finite)}
  shared = bootstrap_batch.SharedBootstrap(a, metrics)
  chunks = list(resampling.bootstrap_count_chunks(
      K, 120, resampling.rng(3, 1)))
  got = {n: np.concatenate([shared(c)[n] for c in chunks]) for n in metrics}
  i, j = pairwise.pairs_index(K)
  for name, (y, cells) in metrics.items():
    keep = np.ones(i.size, bool) if cells is None else cells[i] & cells[j]
    ref = resampling.bootstrap_over_cells(
        a[i[keep], j[keep]], y[i[keep], j[keep]], i[keep], j[keep], K, 120,
        resampling.rng(3, 1))
    np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(ref))
    np.testing.assert_allclose(got[name], ref, atol=1e-13)


def _bootstrap_references(a, metrics, k, n, seed):
  """name -> :func:`resampling.bootstrap_over_cells` on the metric's pairs."""
  i, j = pairwise.pairs_index(k)
  out = {}
  for name, (y, cells) in metrics.items():
    keep = np.ones(i.size, bool) if cells is None else cells[i] & cells[j]
    out[name] = resampling.bootstrap_over_cells(
        a[i[keep], j[keep]], y[i[keep], j[keep]], i[keep], j[keep], k, n,
        resampling.rng(seed, 1))
  return out


@pytest.mark.parametrize("carry", [0, 2])  # Without and with ties.
def test_shared_bootstrap_ties_subsets_and_degenerate_resamples(carry):
  """Ordered metrics with ties, histogram and ordered metrics on cell
  subsets, and resamples where the carry or the metric has fewer than 2
  distinct values with weight (NaN); the same numbers for any workers."""
  a = _carries(K, seed=28)[carry]
  rng = np.random.default_rng(29)
  rounded = np.round(30.0 * pairwise.pairwise_l2(rng.normal(size=(K, 3))))
  some = rng.random(K) < 0.7
  four, three = np.arange(K) < 4, (np.arange(K) >= 4) & (np.arange(K) < 7)
  one_pair = np.zeros((K, K))
  one_pair[0, 1] = one_pair[1, 0] = 1.0
  metrics = {"rounded": (rounded, None),            # Ordered, with ties.
             "rounded_some": (rounded, some),
             "int_some": (_integer_metric(K, 30), some),  # Histograms.
             "one_pair": (one_pair, None),          # Histograms, 2 values.
             "one_pair_four": (one_pair, four),     # Ordered, tied.
             "three": (_integer_metric(K, 31), three)}
  i, j = pairwise.pairs_index(K)
  # Ranked in its own order (many distinct values), and with ties.
  fraction = bootstrap_batch._ORDERED_FRACTION
  assert fraction * i.size < np.unique(rounded[i, j]).size < i.size
  n = 120
  chunks = list(resampling.bootstrap_count_chunks(K, n, resampling.rng(3, 1)))
  got = {}
  for workers in (1, 3):
    shared = bootstrap_batch.SharedBootstrap(a, metrics, workers=workers)
    got[workers] = {m: np.concatenate([shared(c)[m] for c in chunks])
                    for m in metrics}
  ref = _bootstrap_references(a, metrics, K, n, seed=3)
  for name in metrics:
    np.testing.assert_array_equal(got[1][name], got[3][name])
    np.testing.assert_array_equal(np.isnan(got[1][name]),
                                  np.isnan(ref[name]), err_msg=name)
    np.testing.assert_allclose(got[1][name], ref[name], atol=1e-13,
                               err_msg=name)
  for name in ("one_pair", "one_pair_four", "three"):  # Some, not all.
    assert 0 < np.isnan(ref[name][:, 1]).sum() < n, name


def test_shared_bootstrap_at_a_few_hundred_cells():
  """K = 300: products of cell indices past 2^16 and ranks beyond int16."""
  k = 300
  rng = np.random.default_rng(32)
  a = pairwise.pairwise_l2(rng.normal(size=(k, 4)))
  cells = np.ones(k, bool)
  cells[:3] = False
  metrics = {"int": (_integer_metric(k, 33), None),
             "cont": (pairwise.pairwise_l2(rng.normal(size=(k, 2))), cells)}
  shared = bootstrap_batch.SharedBootstrap(a, metrics, workers=2)
  chunks = list(resampling.bootstrap_count_chunks(k, 6, resampling.rng(4, 1)))
  got = {m: np.concatenate([shared(c)[m] for c in chunks]) for m in metrics}
  ref = _bootstrap_references(a, metrics, k, 6, seed=4)
  for name in metrics:
    np.testing.assert_allclose(got[name], ref[name], atol=1e-13, rtol=0)


def test_joint_codes_number_the_distinct_combinations():
  rng = np.random.default_rng(18)
  keys = [rng.integers(0, 5, 200).astype(float) for _ in range(3)]
  keys.append(rng.normal(size=200))  # Too many values to join the others.
  groups = mantel_batch.joint_codes(keys)
  assert sorted(b for members, _ in groups for b in members) == [0, 1, 2, 3]
  for members, code in groups:
    combos = np.stack([keys[b] for b in members], axis=1)
    _, ref = np.unique(combos, axis=0, return_inverse=True)
    # Same partition of the pairs: equal combination <=> equal code.
    pairs = np.stack([code, ref.ravel()], axis=1)
    assert len(np.unique(pairs, axis=0)) == len(np.unique(code)) == len(
        np.unique(ref))


def _compare(got, ref, path=""):
  """Equal dicts: identical p_mantel and counts, statistics to 1e-13,
  naive p-values to 1e-9 relative."""
  if isinstance(ref, dict):
    assert got.keys() == ref.keys(), path
    for key in ref:
      _compare(got[key], ref[key], f"{path}/{key}")
  elif isinstance(ref, (tuple, list)):
    for g, r in zip(got, ref, strict=True):
      _compare(g, r, path)
  elif isinstance(ref, float):
    if math.isnan(ref):
      assert math.isnan(got), path
    elif path.endswith("p_naive"):
      assert got == pytest.approx(ref, rel=1e-9, abs=1e-300), path
    elif path.endswith(("p_mantel", "/rho", "/r")):
      assert got == ref, path
    else:
      assert got == pytest.approx(ref, abs=1e-13), path
  else:
    assert got == ref, path


def test_correlate_many_equals_correlate_call_by_call():
  """K = 30: every kind of metric, ties, per-distance settings, `only`."""
  dists = dict(zip(("d0", "d1", "ties"), _carries(K, seed=19)))
  diff, finite = _ppl_difference(K, seed=20)
  i, j = pairwise.pairs_index(K)
  pick = np.sort(np.random.default_rng(21).choice(i.size, 60, replace=False))
  pairs = np.stack([j[pick], i[pick]], axis=1)  # Either order is accepted.
  metrics = {"int": _integer_metric(K, 22), "cont": pairwise.pairwise_l2(
      np.random.default_rng(23).normal(size=(K, 2))), "ppl": diff,
             "ged1": _on_pairs(K, pairs, 24), "ged2": _on_pairs(K, pairs, 25),
             "ged3": _on_pairs(K, pairs[5:], 26)}
  subsets = {"ged1": pairs, "ged2": pairs, "ged3": pairs[5:]}
  only = {"d0": list(metrics), "d1": ["int", "ged1", "ged3"],
          "ties": list(metrics)}
  perms = {"d0": 99, "d1": 49, "ties": 99}
  boots = {"d0": 150, "d1": 0, "ties": 100}
  got = correlate_batch.correlate_many(
      dists, metrics, cells={"ppl": finite}, pairs=subsets, only=only,
      num_permutations=perms, num_bootstrap=boots, seed=5, workers=2)
  all_pairs = np.stack([i, j], axis=1)
  for d, names in only.items():
    assert list(got[d]) == names
    for m in names:
      kwargs = {"pairs": subsets.get(m)}
      if m == "ppl":
        kwargs["pairs"] = all_pairs[finite[i] & finite[j]]
      ref = pairwise.correlate(dists[d], metrics[m], seed=5,
                               num_permutations=perms[d],
                               num_bootstrap=boots[d], **kwargs)
      _compare(got[d][m], ref, f"{d}/{m}")


def test_correlate_many_constant_metric_and_errors():
  a = _carries(K, seed=27)[0]
  got = correlate_batch.correlate_many(
      {"a": a}, {"flat": np.ones((K, K))}, num_permutations=9,
      num_bootstrap=9)
  assert got["a"]["flat"]["constant_input"]
  assert math.isnan(got["a"]["flat"]["spearman"]["p_mantel"])
  with pytest.raises(ValueError, match="finite"):
    correlate_batch.correlate_many({"a": a}, {"b": np.full((K, K), np.nan)})
  with pytest.raises(ValueError, match="at least 3 pairs"):
    correlate_batch.correlate_many(
        {"a": a}, {"b": a}, pairs={"b": np.array([[0, 1], [1, 2]])})
  with pytest.raises(ValueError, match="symmetric"):
    correlate_batch.correlate_many({"a": a + np.triu(a)}, {"b": a})
