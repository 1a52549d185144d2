"""Tests for launch.py and the experiments registry."""

import os
import subprocess
import sys

import pytest

import experiments

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_experiment_lists_valid_names():
  """The registry's error names the bad experiment and the valid ones."""
  with pytest.raises(ValueError, match=r"unknown experiment 'nope'; valid"):
    experiments.get_experiment("nope")


def test_launch_rejects_unknown_experiment_in_one_line():
  """launch.py exits non-zero with one clear line and no traceback."""
  proc = subprocess.run(
      [sys.executable, "launch.py", "--experiment=nope"], cwd=REPO_ROOT,
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown experiment 'nope'" in lines[0]
