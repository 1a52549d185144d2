"""Tests for nas_jax.train: whole runs of the search loop.

Whole runs use the ``smoke`` config (tiny sizes, every phase); the resume
test stops a real ``launch.py`` process with SIGKILL, SIGINT and SIGTERM.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import experiments
from experiments import common
from nas_jax import search_space
from nas_jax import settings
from nas_jax import train

from conftest import assert_same_run
from conftest import interrupt_window
from conftest import run_outputs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**overrides):
  return common.apply_overrides(experiments.get_config("smoke")[1], overrides)


def _read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------
# Whole runs.


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """One uninterrupted smoke run, shared by the tests below."""
  workdir = str(tmp_path_factory.mktemp("runs") / "smoke")
  best = train.train_and_evaluate(smoke_config(), workdir).best
  return workdir, best


def test_smoke_run_writes_the_run_directory(smoke_run):
  """config.json, logs with the documented keys, best_arch.json, TB events."""
  workdir, best = smoke_run
  config = smoke_config()
  for name in ("config.json", "metrics.jsonl", "archs.jsonl",
               "derived.jsonl", "best_arch.json", "checkpoints", "tb"):
    assert os.path.exists(os.path.join(workdir, name)), name
  keys = set()
  for r in _read_lines(os.path.join(workdir, "metrics.jsonl")):
    keys |= set(r)
  for key in ("train/loss", "train/ppl", "valid/ppl", "test/ppl",
              "ctrl/reward", "ctrl/baseline", "ctrl/entropy", "train/lr",
              "ctrl/lr", "train/steps_per_s", "ctrl/steps_per_s"):
    assert key in keys, key
  archs = _read_lines(os.path.join(workdir, "archs.jsonl"))
  steps = config.train.epochs * config.controller.steps_per_epoch
  assert len(archs) == steps * config.controller.samples_per_step
  search_space.validate_tokens([a["tokens"] for a in archs])
  stored = json.load(open(os.path.join(workdir, "best_arch.json")))
  assert stored == best
  assert math.isfinite(stored["valid_ppl"]) and math.isfinite(stored["test_ppl"])
  search_space.Architecture.from_tokens(stored["tokens"])
  assert any(f.startswith("events") for f in os.listdir(
      os.path.join(workdir, "tb")))


def test_same_seed_same_results(smoke_run, tmp_path):
  """A second run with the same seed: identical logs apart from timing."""
  workdir, _ = smoke_run
  again = str(tmp_path / "again")
  train.train_and_evaluate(smoke_config(), again)
  assert run_outputs(again) == run_outputs(workdir)
  other = str(tmp_path / "other")
  train.train_and_evaluate(smoke_config(seed=1), other)
  assert run_outputs(other)["archs"] != run_outputs(workdir)["archs"]


def test_rerunning_a_finished_run_changes_nothing(smoke_run):
  """The same command on a finished workdir reports and keeps the files."""
  workdir, best = smoke_run
  before = run_outputs(workdir)
  assert train.train_and_evaluate(smoke_config(), workdir).best == best
  assert run_outputs(workdir) == before


_INTERRUPTED = re.compile(
    r"^interrupted by (SIG[A-Z]+) in epoch (\d+)/\d+ at shared step (\d+), "
    r"controller step (\d+); checkpoint saved in (.+); rerun the same "
    r"command to resume$")


def test_resume_after_sigkill_sigint_and_sigterm_gives_identical_results(
    smoke_run, tmp_path):
  """Stop a launch.py run with SIGKILL, then SIGINT, then SIGTERM, at later
  and later moments; resume; compare with the uninterrupted run.

  SIGINT and SIGTERM save a checkpoint where they stop, print one line (no
  traceback) and exit with 130 and 143."""
  reference, _ = smoke_run
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "launch.py", "--experiment=smoke",
         f"--workdir={workdir}"]
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # The processes share a compilation cache: only the first compiles.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  for wanted, signum in ((1, signal.SIGKILL), (3, signal.SIGINT),
                         (5, signal.SIGTERM)):
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      if _latest_tick(ckpt_dir) >= _min_tick(wanted):
        break
      time.sleep(0.05)
    assert proc.poll() is None, "run ended before it could be stopped"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert not os.path.exists(os.path.join(workdir, "best_arch.json"))
    if signum == signal.SIGKILL:
      assert proc.returncode == -signal.SIGKILL
      continue
    assert proc.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    match = _INTERRUPTED.match(stderr.strip().splitlines()[-1])
    assert match, stderr[-2000:]
    name, epoch, shared, ctrl, where = match.groups()
    assert name == signal.Signals(signum).name and where == workdir
    # The checkpoint of the stopping point: tick = epochs done + steps.
    assert _latest_tick(ckpt_dir) == int(epoch) - 1 + int(shared) + int(ctrl)
  result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "resumed in epoch" in result.stdout
  assert run_outputs(workdir) == run_outputs(reference)
  # The report opens with the search; the console ends with a summary.
  report = os.path.join(workdir, "report.md")
  with open(report) as f:
    text = f.read()
  assert text.startswith("# Run ") and "\n## The search\n" in text
  assert "\n## Controller probe\n" in text
  assert f"`{reference_best(reference)}`" in text
  for name in ("best_cell.png", "derived_cells.png", "search_curves.png"):
    assert os.path.getsize(os.path.join(workdir, "figures", name)) > 0
  last = result.stdout.strip().splitlines()[-1]
  assert last.startswith("enas_probe: best cell ") and "test ppl" in last
  # Rerunning the finished run redoes nothing and prints the same summary.
  stamp = os.stat(report).st_mtime_ns
  again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]
  assert "already complete" in again.stdout
  assert "probe: already done" in again.stdout
  assert again.stdout.strip().splitlines()[-1] == last
  assert os.stat(report).st_mtime_ns == stamp


def reference_best(workdir):
  with open(os.path.join(workdir, "best_arch.json")) as f:
    return json.load(f)["arch"]


def _latest_tick(ckpt_dir):
  done = [int(d) for d in (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir)
                           else []) if d.isdigit()]
  return max(done, default=-1)


def _min_tick(n):
  # Smoke checkpoints every 2 steps: the n-th lands at tick >= 2 n.
  return 2 * n


def test_epochs_are_numbered_from_one_everywhere(smoke_run):
  """metrics.jsonl, archs.jsonl, derived.jsonl and best_arch.json number
  the epochs 1..E, as the console does."""
  workdir, best = smoke_run
  epochs = smoke_config().train.epochs
  outputs = run_outputs(workdir)
  for name in ("metrics", "archs", "derived"):
    assert {r["epoch"] for r in outputs[name]} == set(
        range(1, epochs + 1)), name
  assert best["epoch"] == epochs
  (test_row,) = [r for r in outputs["metrics"] if "test/ppl" in r]
  assert test_row["epoch"] == epochs


def test_a_diverging_cell_leaves_only_finite_or_null_logs(tmp_path):
  """Cells whose ppl overflows float32 (log ppl > 88.7) and even float64:
  the logs keep finite log ppls; a ppl beyond float64 is null, never NaN or
  inf, and TensorBoard gets no non-finite value."""
  config = smoke_config(**{"model.init_range": 3.0, "train.lr": 0.0,
                           "train.epochs": 1})
  workdir = str(tmp_path / "diverging")
  train.train_and_evaluate(config, workdir)
  archs = _read_lines(os.path.join(workdir, "archs.jsonl"))
  log_ppl = [a["log_ppl"] for a in archs]
  assert all(v is not None and math.isfinite(v) for v in log_ppl)
  assert max(log_ppl) > 89.0  # The case that made mean ppl inf before.
  rows = _read_lines(os.path.join(workdir, "metrics.jsonl"))
  companions = {"train/ppl": "train/loss",
                "ctrl/sampled_ppl": "ctrl/sampled_log_ppl"}
  for row in rows:
    for key, value in row.items():
      if value is None:  # Only an overflowing ppl, beside its finite log.
        assert key in companions, (key, row)
        assert math.isfinite(row[companions[key]]), row
      else:
        assert math.isfinite(value), (key, row)
  assert any(r.get("ctrl/sampled_log_ppl") is not None for r in rows)


def test_random_ws_trains_no_controller(tmp_path):
  """random_ws: no controller phase, controller untouched, a derived cell."""
  config = smoke_config(**{"search.algorithm": "random_ws"})
  workdir = str(tmp_path / "rs")
  best = train.train_and_evaluate(config, workdir).best
  assert _read_lines(os.path.join(workdir, "archs.jsonl")) == []
  assert math.isfinite(best["test_ppl"])
  records = _read_lines(os.path.join(workdir, "metrics.jsonl"))
  assert not any("ctrl/reward" in r for r in records)
  variant = smoke_config(**{"search.algorithm": "random_ws",
                            "search.random_sampler": "controller"})
  best = train.train_and_evaluate(variant, str(tmp_path / "rs_ctrl")).best
  assert math.isfinite(best["valid_ppl"])


def test_non_finite_loss_stops_with_step_and_checkpoint(tmp_path):
  """A NaN learning rate: the run stops naming the step; no best_arch.json."""
  config = smoke_config(**{"train.lr": float("nan")})
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.TrainingDiverged,
                     match=r"shared step 1 .*last good checkpoint"):
    train.train_and_evaluate(config, workdir)
  assert not os.path.exists(os.path.join(workdir, "best_arch.json"))


# ---------------------------------------------------------------------------
# Several runs trained together (train_many).


def test_stacked_runs_equal_single_runs_and_resume(tmp_path, monkeypatch):
  """Two seeds with the memory buffer, stacked, stopped once and resumed:
  each run's directory holds what its single run writes."""
  configs = [smoke_config(seed=s, **{"buffer.variant": "clean"})
             for s in (0, 3)]
  singles = [str(tmp_path / f"single_{c.seed}") for c in configs]
  for config, workdir in zip(configs, singles):
    train.train_and_evaluate(config, workdir)
  together = [str(tmp_path / f"stacked_{c.seed}") for c in configs]
  # Window 6 is epoch 2's first controller window: the resumed runs must
  # store into their buffers first, as the single runs did.
  calls = interrupt_window(monkeypatch, stop_at=6)
  with pytest.raises(KeyboardInterrupt):
    train.train_many(configs, together)
  monkeypatch.undo()
  loaded = train.train_many(configs, together)
  assert len(calls) == 6  # The resumed runs did not use the patched one.
  for run, stacked, single in zip(loaded, together, singles):
    assert run.finished
    assert_same_run(stacked, single)
  sizes = [r["buffer/size"] for r in run_outputs(together[1])["metrics"]
           if "buffer/size" in r]
  assert max(sizes) == 2 * configs[0].buffer.store_per_epoch


def test_train_many_skips_finished_runs(smoke_run, tmp_path, capsys):
  """A finished run is reported, the others train (here one, alone)."""
  workdir, best = smoke_run
  other = str(tmp_path / "seed_1")
  runs = train.train_many([smoke_config(), smoke_config(seed=1)],
                          [workdir, other])
  assert "already complete" in capsys.readouterr().out
  assert runs[0].best == best and runs[1].finished
  assert runs[1].best["arch"] != "" and os.path.isfile(
      os.path.join(other, "best_arch.json"))


def test_train_many_rejects_configs_that_differ_beyond_the_seed(tmp_path):
  dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
  with pytest.raises(settings.ConfigError, match="train.lr"):
    train.train_many([smoke_config(), smoke_config(seed=1, **{"train.lr": 1.0})],
                     dirs)
  with pytest.raises(settings.ConfigError, match="seeds repeat"):
    train.train_many([smoke_config(), smoke_config()], dirs)
  assert not os.path.exists(dirs[0])  # Checked before any directory.
