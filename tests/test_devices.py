"""Tests for nas_jax.devices: the mesh sizes, and (in subprocesses, as JAX
fixes its devices when it starts) runs on 4 simulated CPU devices and on 2
processes."""

import os
import socket
import subprocess
import sys

import ml_collections
import pytest

import experiments
from experiments import common
from nas_jax import devices
from nas_jax import train

from conftest import assert_same_run

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Faster XLA compiles for the tiny programs of these subprocesses (each
# compares runs within its own process, so the flags do not bias them).
FAST_COMPILE = ("--xla_backend_optimization_level=0 "
                "--xla_llvm_disable_expensive_passes=true")


def _mesh(seeds=0, data=0):
  return ml_collections.ConfigDict({"seeds": seeds, "data": data})


@pytest.mark.parametrize("num_seeds, batch, num_devices, want", [
    (1, 32, 4, (1, 4)),  # One run: data parallel.
    (1, 6, 4, (1, 2)),  # The data axis divides the batch: 2 of 4 devices.
    (8, 32, 4, (4, 1)),  # Several seeds: all devices on seeds.
    (3, 32, 4, (2, 2)),  # 3 seeds on 4 devices: 2 x 2, padded to 4 seeds.
    (5, 32, 1, (1, 1)),
])
def test_automatic_mesh_shape(num_seeds, batch, num_devices, want):
  shape = devices.mesh_shape(_mesh(), num_seeds=num_seeds, batch_size=batch,
                             num_devices=num_devices)
  assert (shape.seeds, shape.data) == want


def test_explicit_mesh_shape_and_padding():
  shape = devices.mesh_shape(_mesh(seeds=4), num_seeds=5, batch_size=8,
                             num_devices=8)
  assert (shape.seeds, shape.data) == (4, 2)
  assert devices.padded_seeds(5, shape) == 8
  # A seeds axis means nothing for one run.
  one = devices.mesh_shape(_mesh(seeds=2, data=2), num_seeds=1, batch_size=8,
                           num_devices=4)
  assert (one.seeds, one.data) == (1, 2)


@pytest.mark.parametrize("mesh, match", [
    (_mesh(seeds=2, data=4), "needs 8 devices; there are 4"),
    (_mesh(data=8), "asks for 8 devices"),
    (_mesh(data=3), "must divide train.batch_size = 32"),
    (_mesh(seeds=-1), ">= 0"),
])
def test_bad_mesh_names_the_problem(mesh, match):
  with pytest.raises(devices.MeshError, match=match):
    devices.mesh_shape(mesh, num_seeds=2, batch_size=32, num_devices=4)


def test_multi_host_flags_must_come_together():
  with pytest.raises(devices.MeshError, match="all of --coordinator_address"):
    devices.initialize(coordinator_address="localhost:1234")
  with pytest.raises(devices.MeshError, match="process_id must be in"):
    devices.initialize("localhost:1234", num_processes=2, process_id=2)
  assert not devices.initialize("localhost:1234", num_processes=1,
                                process_id=0)


def test_runs_on_four_devices_equal_runs_on_one():
  """tests/multidevice_cases.py on 4 simulated CPU devices: data parallel,
  sharded and padded stacked seeds, a resume onto another device count."""
  env = dict(os.environ, XLA_FLAGS=(
      "--xla_force_host_platform_device_count=4 " + FAST_COMPILE))
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       os.path.join("tests", "multidevice_cases.py")],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert "3 passed" in proc.stdout, proc.stdout[-2000:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_smoke_experiment_equals_one_process(tmp_path):
  """``launch.py --experiment=smoke`` on 2 local processes (JAX's CPU
  collectives, a 2-device mesh across them): the search writes what one
  process writes, process 0 alone speaks and runs the probe, and process 1
  waits for it before both exit."""
  overrides = {"log_every": 4, "checkpoint_every": 4}
  reference = str(tmp_path / "one_process")
  train.train_and_evaluate(common.apply_overrides(
      experiments.get_config("smoke")[1], overrides), reference)
  workdir = str(tmp_path / "two_processes")
  address = f"127.0.0.1:{_free_port()}"
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
  procs = [subprocess.Popen(
      [sys.executable, "launch.py", "--experiment=smoke",
       f"--workdir={workdir}", f"--coordinator_address={address}",
       "--num_processes=2", f"--process_id={i}"]
      + [f"--config.{k}={v}" for k, v in overrides.items()],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out[-3000:] + err[-3000:]
  (out0, _), (out1, err1) = outs
  assert "mesh: 1 (seeds) x 2 (data) of 2 CPU devices on 2 processes" in out0
  assert "enas_probe: best cell" in out0
  # Process 1 prints nothing of its own (gloo's C++ log line aside).
  assert "mesh" not in out1 and "best cell" not in out1
  assert "process 1: 1 search done; process 0 writes the results" in err1
  assert os.path.isfile(os.path.join(workdir, "report.md"))
  assert_same_run(workdir, reference)
