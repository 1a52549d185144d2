"""enas_vs_random: config checks, one tiny run, merging separate seed jobs."""

import json
import math
import os

import numpy as np
import pytest

import experiments
from experiments import common
from experiments import enas_vs_random
from nas_jax import settings


def _config(**values):
  config = experiments.get_config("enas_vs_random:smoke")[1]
  config.density_cells = 8
  return common.apply_overrides(config, values)


@pytest.mark.parametrize("values, message", [
    ({"seeds": (0, 0)}, "seeds"),
    ({"seeds": ()}, "seeds"),
    ({"proxy.num_cells": 1}, "proxy.num_cells"),
    ({"density_cells": 0}, "density_cells"),
    ({"search.algorithm": "random_ws"}, "search.algorithm"),
])
def test_bad_config_is_a_config_error(values, message):
  with pytest.raises(settings.ConfigError, match=message):
    enas_vs_random.run(_config(**values), "/nonexistent/never-created")


def test_default_config():
  config = experiments.get_config("enas_vs_random")[1]
  assert len(config.seeds) >= 5
  assert config.density_cells == 1000
  assert config.proxy.num_cells >= 3


def test_separate_seed_jobs_merge_into_one_report(tmp_path):
  """Seed 0 with the proxy, seed 1 as its own job, then report_only merges
  both; a seed that never ran is named."""
  workdir = str(tmp_path / "evr")
  first = enas_vs_random.run(_config(**{"seeds": (0,), "proxy.num_cells": 3}),
                             workdir)
  assert first["comparisons"]["fixed_valid_ppl"]["n"] == 1
  assert "Too few seeds" in first["verdict"]
  enas_vs_random.run(_config(**{"seeds": (1,), "proxy.num_cells": 0}),
                     workdir)
  merged = enas_vs_random.run(
      _config(**{"seeds": (0, 1), "report_only": True}), workdir)
  assert merged["seeds"] == [0, 1]
  for s in ("0", "1"):
    seed = merged["per_seed"][s]
    for method in ("enas", "random_ws"):
      for key in ("shared_valid_ppl", "fixed_valid_ppl", "fixed_test_ppl"):
        assert math.isfinite(seed[method][key]), (s, method, key)
    for name in ("controller_ppl", "uniform_ppl_random_ws", "uniform_ppl"):
      assert len(seed["density"][name]) == 8, name
    # The same uniform cells, scored under two different supernets.
    assert seed["density"]["uniform_ppl_random_ws"] != seed["density"][
        "uniform_ppl"]
  # The merged numbers are the per-seed runs' own.
  with open(os.path.join(workdir, "fixed", "enas_seed_1",
                         "best_arch.json")) as f:
    assert merged["per_seed"]["1"]["enas"]["fixed_valid_ppl"] == pytest.approx(
        json.load(f)["valid_ppl"])
  c = merged["comparisons"]["fixed_valid_ppl"]
  assert c["n"] == 2
  d = [merged["per_seed"][s]["enas"]["fixed_valid_ppl"]
       - merged["per_seed"][s]["random_ws"]["fixed_valid_ppl"]
       for s in ("0", "1")]
  assert c["mean_difference"] == pytest.approx(np.mean(d))
  # The authors' density comparison: controller cells under ENAS against
  # uniform cells under RS-WS.
  sampled = merged["comparisons"]["median_sampled_ppl"]
  assert sampled["mean_difference"] == pytest.approx(np.mean(
      [merged["per_seed"][s]["median_controller_ppl"]
       - merged["per_seed"][s]["median_uniform_ppl_random_ws"]
       for s in ("0", "1")]))
  assert "median_sampled_ppl_enas_supernet" in merged["comparisons"]
  proxy = merged["proxy"]
  assert proxy["agreement"]["n"] == 3
  assert all(math.isfinite(v) for v in proxy["scratch_valid_ppl"])
  with open(os.path.join(workdir, "report.md")) as f:
    report = f.read()
  assert "Kendall tau-b" in report and "Seeds: 0, 1." in report
  # It opens with every search and from-scratch run, each with its report.
  assert "## The searches" in report
  for rel in ("enas/seed_1", "random_ws/seed_0", "fixed/enas_seed_0",
              "fixed/random_ws_seed_1"):
    assert f"[report]({rel}/report.md)" in report, rel
    assert os.path.isfile(os.path.join(workdir, rel, "report.md")), rel
  assert os.path.getsize(os.path.join(workdir, "figures",
                                      "returned_cells.png")) > 0
  assert os.path.getsize(os.path.join(workdir, "figures",
                                      "sampled_ppl_density.png")) > 0
  with pytest.raises(FileNotFoundError, match="run the experiment"):
    enas_vs_random.run(_config(**{"seeds": (0, 2), "report_only": True}),
                       workdir)


class _Stop(Exception):
  pass


@pytest.mark.parametrize("mode, expected", [
    ("stacked", [("enas", (0, 1)), ("random_ws", (0, 1))]),
    ("sequential", [("enas", (0,)), ("random_ws", (0,))]),
])
def test_seeds_mode_batches_the_searches(mode, expected, monkeypatch,
                                         tmp_path):
  """Stacked: each method's searches of all seeds in one train_many call,
  before the per-seed steps; sequential: seed 0's two searches first."""
  calls = []

  def train_many(configs, workdirs, *, stacked):
    methods = {c.search.algorithm for c in configs}
    calls.append((methods.pop(), tuple(c.seed for c in configs)))
    assert not methods and stacked == (len(configs) > 1)
    return []

  def stop(*args, **kwargs):
    raise _Stop

  monkeypatch.setattr(enas_vs_random.train, "train_many", train_many)
  monkeypatch.setattr(enas_vs_random, "density", stop)
  with pytest.raises(_Stop):
    enas_vs_random.run(_config(seeds_mode=mode), str(tmp_path))
  assert calls == expected
