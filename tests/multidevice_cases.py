"""Runs on a mesh of 4 simulated CPU devices equal runs on one device.

Not collected by the suite itself (JAX fixes the device count when it
starts): ``tests/test_devices.py`` runs this file in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import jax
import pytest

import experiments
from experiments import common
from nas_jax import devices
from nas_jax import train

from conftest import assert_same_run

pytestmark = pytest.mark.skipif(
    len(jax.devices()) != 4, reason="needs 4 (simulated) devices")


def smoke_config(**overrides):
  # Windows of 4 steps (a whole phase): fewer programs and saves.
  overrides = {"log_every": 4, "checkpoint_every": 4, **overrides}
  return common.apply_overrides(experiments.get_config("smoke")[1], overrides)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
  """Seeds 0-2, each alone on one device."""
  root = tmp_path_factory.mktemp("one_device")
  out = {}
  for seed in (0, 1, 2):
    out[seed] = str(root / f"seed_{seed}")
    train.train_and_evaluate(smoke_config(seed=seed, **{"mesh.data": 1}),
                             out[seed])
  return out


def test_data_parallel_equals_one_device(references, tmp_path, capsys):
  workdir = str(tmp_path / "data4")
  run = train.train_and_evaluate(smoke_config(), workdir)  # Automatic: 1 x 4.
  assert "mesh: 1 (seeds) x 4 (data) of 4 CPU devices" in (
      capsys.readouterr().out)
  assert_same_run(workdir, references[0])
  # The batch is split, the parameters replicated, on all 4 devices.
  carry, w = run.state.carry, run.state.shared["w_x"]
  assert len(carry.sharding.device_set) == 4
  assert {s.data.shape for s in carry.addressable_shards} == {
      (1, 2, carry.shape[2])}  # [M, B / 4, H]
  assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 4


def test_stacked_seeds_sharded_and_padded_equal_single_runs(
    references, tmp_path, capsys):
  """3 seeds on a 2 (seeds) x 2 (data) mesh: padded to 4 seeds."""
  configs = [smoke_config(seed=s, **{"mesh.seeds": 2, "mesh.data": 2})
             for s in (0, 1, 2)]
  workdirs = [str(tmp_path / f"seed_{c.seed}") for c in configs]
  train.train_many(configs, workdirs)
  out = capsys.readouterr().out
  assert "mesh: 2 (seeds) x 2 (data)" in out
  assert "3 seeds padded to 4" in out
  for config, workdir in zip(configs, workdirs):
    assert_same_run(workdir, references[config.seed])


def test_resume_on_another_device_count(references, tmp_path, monkeypatch):
  """Stopped on 4 devices, resumed on 1, the same run: the checkpoint's
  4 shards restore onto one device."""
  workdir = str(tmp_path / "moved")
  real, calls = devices.Placement.window, []

  def interrupted(self, *args, **kwargs):
    program = real(self, *args, **kwargs)

    def run(*a):
      calls.append(1)
      if len(calls) == 3:  # Epoch 2's shared phase.
        raise KeyboardInterrupt
      return program(*a)
    return run

  monkeypatch.setattr(devices.Placement, "window", interrupted)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(smoke_config(**{"mesh.data": 4}), workdir)
  monkeypatch.setattr(devices.Placement, "window", real)
  run = train.train_and_evaluate(smoke_config(**{"mesh.data": 1}), workdir)
  assert len(run.state.carry.sharding.device_set) == 1
  assert_same_run(workdir, references[0])
