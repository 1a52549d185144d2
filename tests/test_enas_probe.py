"""The enas_probe experiment over several seeds (experiments/enas_probe.py)."""

import os

import pytest

import experiments
from experiments import enas_probe
from nas_jax import files
from nas_jax import rundir
from nas_jax import settings
from nas_jax.analysis import across_seeds


def _config(seeds):
  config = experiments.get_config("enas_probe:smoke")[1]
  config.seeds = seeds
  return config


def test_two_seeds_end_to_end_then_rerun_reuses_everything(tmp_path, capsys):
  """Two seeds at smoke sizes: a run directory per seed (its own config
  without the experiment's keys, its own report), then the paired verdicts
  in WORKDIR; the same command again retrains and re-probes nothing and
  gives the same verdicts."""
  config = _config((0, 1))
  workdir = str(tmp_path / "ep")
  results = enas_probe.run(config, workdir)
  for seed in (0, 1):
    d = files.seed_dir(workdir, seed)
    for name in (files.REPORT_FILE, files.RESULTS_FILE, files.BEST_ARCH_FILE):
      assert os.path.getsize(os.path.join(d, name)) > 0
    bound = rundir.flatten(files.read_json(os.path.join(d, files.CONFIG_FILE)))
    assert bound["seed"] == seed and "seeds" not in bound
    assert "seeds_mode" not in bound
  assert results["seeds"] == [0, 1]
  assert set(results["verdicts"]) == {"claim3", "claim4"}
  for name in (files.REPORT_FILE, files.RESULTS_FILE,
               os.path.join(files.FIGURES_DIR, "across_seeds.png"),
               os.path.join(files.FIGURES_DIR, "returned_cells.png")):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  with open(os.path.join(workdir, files.REPORT_FILE)) as f:
    report = f.read()
  assert "over 2 seeds" in report and "[report](seed_1/report.md)" in report
  assert results["verdicts"]["claim4"] in report
  capsys.readouterr()
  again = enas_probe.run(config, workdir)
  out = capsys.readouterr().out
  assert out.count("probe: already done") == 2
  assert "sampling" not in out
  assert again["verdicts"] == results["verdicts"]


def test_one_seed_runs_in_the_workdir_itself(monkeypatch, tmp_path):
  """--config.seeds=S, (the smoke preset's): the old layout, one run in
  WORKDIR bound to the run config of seed S."""
  seen = {}

  def train_and_evaluate(config, workdir):
    seen["config"], seen["workdir"] = config, workdir
    raise _Stop

  monkeypatch.setattr(enas_probe.train, "train_and_evaluate",
                      train_and_evaluate)
  with pytest.raises(_Stop):
    enas_probe.run(_config((7,)), str(tmp_path))
  assert seen["workdir"] == str(tmp_path)
  assert seen["config"].seed == 7 and "seeds" not in seen["config"]


class _Stop(Exception):
  pass


@pytest.mark.parametrize("mode, expected", [
    ("stacked", [(0, 1, 2)]),
    ("sequential", [(0,), (1,), (2,)]),
])
def test_seeds_mode_batches_the_searches(mode, expected, monkeypatch,
                                         tmp_path):
  """Stacked: one train_many call of every seed; sequential: seed by seed
  (each probed before the next). Each seed keeps its own directory."""
  calls = []

  def train_many(configs, workdirs, *, stacked):
    calls.append(tuple(c.seed for c in configs))
    assert stacked == (len(configs) > 1)
    assert workdirs == [files.seed_dir(str(tmp_path), c.seed)
                        for c in configs]
    return [None] * len(configs)

  monkeypatch.setattr(enas_probe.train, "train_many", train_many)
  monkeypatch.setattr(enas_probe.probe, "run_probe", lambda *a, **k: None)
  monkeypatch.setattr(across_seeds, "read_run",
                      lambda *a: (_ for _ in ()).throw(_Stop()))
  config = _config((0, 1, 2))
  config.seeds_mode = mode
  with pytest.raises(_Stop):
    enas_probe.run(config, str(tmp_path))
  assert calls == expected


def test_neither_layout_writes_over_the_other(tmp_path):
  """Several seeds refuse a workdir that holds one search, and one seed
  refuses a workdir of several (each would write over the other's
  report); both say what to pass instead, before anything is written."""
  one = tmp_path / "one"
  one.mkdir()
  (one / files.CONFIG_FILE).write_text("{}")
  with pytest.raises(settings.ConfigError, match="--config.seeds=S,"):
    enas_probe.run(_config((0, 1)), str(one))
  assert sorted(p.name for p in one.iterdir()) == [files.CONFIG_FILE]
  many = tmp_path / "many"
  os.makedirs(files.seed_dir(str(many), 1))
  with open(os.path.join(files.seed_dir(str(many), 1), files.CONFIG_FILE),
            "w") as f:
    f.write("{}")
  with pytest.raises(settings.ConfigError,
                     match=f"--workdir={files.seed_dir(str(many), 2)}"):
    enas_probe.run(_config((2,)), str(many))
  assert sorted(p.name for p in many.iterdir()) == ["seed_1"]
  config = _config((2,))
  config.seeds_mode = "parallel"
  with pytest.raises(settings.ConfigError, match="seeds_mode"):
    enas_probe.run(config, str(tmp_path / "new"))
