"""Probes of the carries: nearest neighbours and ridge find (no) structure."""

import numpy as np
import pytest

from nas_jax.analysis import carry_probes
from nas_jax.analysis import pairwise

from conftest import structured_carries as _structured


def test_nearest_neighbour_check_finds_structure_only_when_present():
  hidden, graph = _structured(60, noise=0.3, seed=17)
  near = carry_probes.nearest_neighbour_check(
      pairwise.pairwise_l2(hidden), graph, larger_is_similar=False, k=2,
      num_permutations=199)
  assert near["neighbour_mean"] < 0.5 * near["random_mean"]
  assert near["similarity_gain"] > 0 and near["difference"] < 0
  assert near["p_value"] == pytest.approx(1 / 200)
  assert near["p_mannwhitney_naive"] < 1e-6
  assert near["num_neighbour_pairs"] == 120
  # The same, phrased as a similarity.
  as_similarity = carry_probes.nearest_neighbour_check(
      pairwise.pairwise_l2(hidden), -graph, larger_is_similar=True, k=2,
      num_permutations=199)
  assert as_similarity["p_value"] == near["p_value"]
  independent = np.random.default_rng(18).normal(size=(60, 16))
  none = carry_probes.nearest_neighbour_check(
      pairwise.pairwise_l2(independent), graph, larger_is_similar=False,
      num_permutations=199, seed=1)
  assert none["p_value"] > 0.01
  assert abs(none["difference"]) < 3 * none["null_sd"]


def test_nearest_neighbours_ties_and_diagonal():
  d = np.array([[0, 1, 1], [1, 0, 2], [1, 2, 0]], float)
  np.testing.assert_array_equal(carry_probes.nearest_neighbours(d, 1),
                                [[1], [0], [0]])


def test_ridge_cv_recovers_linear_target():
  rng = np.random.default_rng(19)
  x = rng.normal(size=(100, 10)) * rng.uniform(0.1, 10.0, size=10) + 5.0
  y = x @ rng.normal(size=10) + 0.01 * rng.normal(size=100)
  res = carry_probes.ridge_cv(x, y, seed=0)
  assert res["r2"] > 0.99 and res["r2_fold_mean"] > 0.99
  assert res["r2_constant"] <= 0.0
  assert len(res["alpha_per_fold"]) == 5
  assert res == carry_probes.ridge_cv(x, y, seed=0)


@pytest.mark.parametrize("dim", [10, 150])
def test_ridge_cv_independent_target_has_no_skill(dim):
  rng = np.random.default_rng(20)
  x = rng.normal(size=(100, dim))
  y = rng.normal(size=100)
  # 3 folds: 12 small SVDs, cheap even where busy cores slow OpenBLAS down.
  res = carry_probes.ridge_cv(x, y, folds=3, seed=1)
  assert res["r2"] <= 0.1
  assert res["r2_constant"] <= 0.0 and res["r2_constant_fold_mean"] <= 0.0
  assert not res["constant_target"]


def test_ridge_cv_constant_target():
  x = np.random.default_rng(21).normal(size=(30, 4))
  res = carry_probes.ridge_cv(x, np.full(30, 2.5))
  assert res["constant_target"]
  assert np.isnan(res["r2"]) and np.isnan(res["r2_constant"])
  with pytest.raises(ValueError, match="folds"):
    carry_probes.ridge_cv(x[:7], np.arange(7.0))


def test_ridge_cv_many_equals_ridge_cv_per_target():
  """Shared folds and SVDs: each target's dict is ridge_cv's."""
  rng = np.random.default_rng(21)
  x = rng.normal(size=(60, 7))
  ys = {"signal": x[:, 0] + 0.3 * rng.normal(size=60),
        "noise": rng.normal(size=60), "constant": np.full(60, 2.0),
        "integer": rng.integers(0, 4, size=60).astype(float)}
  many = carry_probes.ridge_cv_many(x, ys, seed=4)
  assert list(many) == list(ys)
  for name, y in ys.items():
    ref = carry_probes.ridge_cv(x, y, seed=4)
    assert list(many[name]) == list(ref), name
    for key, value in ref.items():
      np.testing.assert_allclose(many[name][key], value, rtol=0, atol=1e-12,
                                 err_msg=f"{name}/{key}")
  assert many["signal"]["r2"] > 0.5 and many["constant"]["constant_target"]
