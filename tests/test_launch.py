"""Tests for launch.py's command line, run as a subprocess.

Bad input must give one ``error:`` line on stderr, no traceback, exit status
2, and no run directory. Each subprocess imports JAX (seconds), so the cases
are few and none of them trains.
"""

import os
import shutil
import subprocess
import sys

import pytest

import experiments
from experiments import enas_probe
from nas_jax import files
from nas_jax import rundir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTB_DIR = os.path.join(REPO_ROOT, "nas_jax", "corpora", "ptb")


def _launch(*args):
  return subprocess.run(
      [sys.executable, "launch.py", *args], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=300)


def _assert_one_error_line(proc, *fragments):
  """Exit 2, one ``error:`` line naming every fragment, no traceback."""
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error:"), lines[0]
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert proc.returncode == 2, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("args, fragments", [
    pytest.param(["--experiment=nope"],
                 ["'nope'", "enas_probe", "random_ws", "smoke"],
                 id="unknown_experiment"),
    pytest.param([], ["--experiment is required", "enas_probe"],
                 id="missing_experiment"),
    pytest.param(["--experiment=smoke:big"], ["'big'", "paper", "smoke"],
                 id="unknown_preset"),
    pytest.param(["--experiment=smoke", "--config.train.foo=1"],
                 ["'train.foo'", "train.epochs"], id="unknown_key"),
    pytest.param(["--experiment=smoke", "--config.trian.lr=1"],
                 ["'trian.lr'", "train"], id="misspelt_section"),
    pytest.param(["--experiment=smoke", "--config.train.epochs=abc"],
                 ["train.epochs", "abc"], id="wrong_type"),
    pytest.param(["--experiment=smoke", "--config.train.epochs=0"],
                 ["train.epochs"], id="invalid_value"),
    pytest.param(["--experiment=smoke", "--config.data.dir={tmp}/nope"],
                 ["{tmp}/nope", "not found"], id="missing_data_dir"),
])
def test_bad_input_is_one_error_line_and_leaves_no_workdir(
    tmp_path, args, fragments):
  """Bad input exits 2 with one error line and creates no run directory."""
  workdir = tmp_path / "run"
  args = [a.format(tmp=tmp_path) for a in args]
  fragments = [f.format(tmp=tmp_path) for f in fragments]
  proc = _launch(*args, f"--workdir={workdir}")
  _assert_one_error_line(proc, *fragments)
  assert not workdir.exists()


def test_corrupt_data_is_refused_naming_the_file(tmp_path):
  """A data file that fails its checksum is named, and nothing is created."""
  data_dir = tmp_path / "ptb"
  shutil.copytree(PTB_DIR, data_dir)
  valid = data_dir / "valid.txt"
  content = bytearray(valid.read_bytes())
  content[100] = ord("x") if content[100] != ord("x") else ord("y")
  valid.write_bytes(bytes(content))
  workdir = tmp_path / "run"
  proc = _launch("--experiment=smoke", f"--config.data.dir={data_dir}",
                 f"--workdir={workdir}")
  _assert_one_error_line(proc, "valid.txt", "checksum")
  assert not workdir.exists()


def test_help_lists_experiments_and_presets():
  """--help exits 0 and names every experiment and preset."""
  proc = _launch("--help")
  assert proc.returncode == 0, proc.stderr
  for word in experiments.names() + ["paper", "smoke", "--config."]:
    assert word in proc.stdout
  assert "Traceback" not in proc.stderr


def test_print_config_prints_and_creates_nothing(tmp_path):
  """--print_config prints the resolved config (overrides applied), exits 0."""
  workdir = tmp_path / "run"
  proc = _launch("--experiment=smoke", "--print_config",
                 "--config.train.epochs=7", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr
  assert "steps_per_epoch" in proc.stdout
  assert "epochs: 7" in proc.stdout
  assert "Traceback" not in proc.stderr
  assert not workdir.exists()


def test_workdir_of_another_config_is_refused(tmp_path):
  """A workdir bound to another config exits 2 naming key, old and new value."""
  workdir = tmp_path / "run"
  config = enas_probe.run_config(experiments.get_config("smoke")[1], 0)
  assert config.train.lr == 20.0
  assert rundir.bind_config(str(workdir), config)
  config_path = workdir / files.CONFIG_FILE
  before = config_path.read_text()

  proc = _launch("--experiment=smoke", "--config.train.lr=1.0",
                 f"--workdir={workdir}")
  _assert_one_error_line(proc, "train.lr", "20.0 -> 1.0")
  # The directory is left as it was: same config, no checkpoints or logs.
  assert config_path.read_text() == before
  assert sorted(p.name for p in workdir.iterdir()) == [
      files.CONFIG_FILE]


def test_help_after_experiment_exits_zero():
  """--help with an experiment exits 0 and shows the usage and its config."""
  proc = _launch("--experiment=smoke", "--help")
  assert "--experiment=NAME[:PRESET]" in proc.stdout
  assert "steps_per_epoch" in proc.stdout
  assert proc.returncode == 0, proc.returncode
