"""Tests for the experiments registry, presets and config validation."""

import os

import ml_collections
import pytest

import experiments
from experiments import common
from experiments import enas_probe
from nas_jax import rundir
from nas_jax import settings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("enas_probe", "enas_vs_random", "memory_buffer", "probe", "random_ws",
         "smoke", "train_fixed")
SEARCH_NAMES = ("enas_probe", "random_ws", "smoke")
SPECS = [n if p is None else f"{n}:{p}"
         for n in SEARCH_NAMES for p in (None, "paper", "smoke")]
PTB_VOCAB = 10000


def _flat(spec):
  return rundir.flatten(experiments.get_config(spec)[1].to_dict())


def test_registry_names():
  """The registry lists exactly the seven experiments, sorted."""
  assert experiments.names() == list(NAMES)


def test_get_experiment_unknown_name_lists_valid_names():
  """An unknown name raises ValueError naming it and every valid experiment."""
  with pytest.raises(ValueError) as info:
    experiments.get_experiment("enas")
  message = str(info.value)
  assert "'enas'" in message
  for name in NAMES:
    assert name in message


@pytest.mark.parametrize("name", NAMES)
def test_get_experiment_returns_module_with_run_and_config(name):
  """Each registered experiment has callable get_config and run."""
  module = experiments.get_experiment(name)
  assert callable(module.run)
  assert isinstance(module.get_config(), ml_collections.ConfigDict)


def test_get_config_unknown_preset_lists_presets():
  """An unknown preset raises ValueError naming the valid presets."""
  with pytest.raises(ValueError, match=r"unknown preset 'big'.*paper, smoke"):
    experiments.get_config("smoke:big")


def test_describe_lists_experiments_and_presets():
  """The --help text names every experiment and preset."""
  text = experiments.describe()
  for word in NAMES + ("paper", "smoke"):
    assert word in text


@pytest.mark.parametrize("spec", SPECS)
def test_get_config_returns_config_dict(spec):
  """Every NAME and NAME:PRESET resolves to its module and a ConfigDict."""
  module, config = experiments.get_config(spec)
  assert module is experiments.get_experiment(spec.partition(":")[0])
  assert isinstance(config, ml_collections.ConfigDict)
  assert config.train.steps_per_epoch >= 1


@pytest.mark.parametrize("name", ("enas_probe", "random_ws"))
def test_paper_preset_pins_design_values(name):
  """The paper preset restores the DESIGN sizes and hyperparameters."""
  c = experiments.get_config(f"{name}:paper")[1]
  assert c.model.hidden_size == 1000
  assert c.model.init_range == 0.025  # The authors'.
  assert c.controller.reset_each_phase and c.derive.mode == "train"
  assert c.train.epochs == 150
  assert c.train.steps_per_epoch == 400
  assert c.controller.steps_per_epoch == 2000
  assert c.train.batch_size == 64
  assert c.train.bptt == 35
  assert c.train.lr == 20.0
  assert c.train.grad_clip == 0.25
  assert c.train.lr_decay == 0.96
  assert c.train.lr_decay_start_epoch == 15
  assert c.controller.lr == pytest.approx(3.5e-4)
  assert c.controller.temperature == 5.0
  assert c.controller.tanh_constant == 2.5
  assert c.controller.reward_c == 80.0
  assert c.controller.entropy_weight == pytest.approx(1e-4)
  assert c.controller.baseline_decay == 0.95
  assert c.derive.num_cells == 100


def test_presets_return_fresh_configs():
  """Applying a preset does not change the experiment's plain config."""
  experiments.get_config("enas_probe:paper")
  experiments.get_config("enas_probe:smoke")
  config = experiments.get_config("enas_probe")[1]
  assert config.model.hidden_size == 128
  assert config.train.epochs == 6


@pytest.mark.parametrize("preset", ("", ":paper", ":smoke"))
def test_random_ws_differs_from_enas_probe_only_in_algorithm(preset):
  """random_ws is one enas_probe seed with search.algorithm = "random_ws"."""
  enas = rundir.flatten(enas_probe.run_config(
      experiments.get_config("enas_probe" + preset)[1], 0).to_dict())
  rs = _flat("random_ws" + preset)
  assert enas["search.algorithm"] == "enas"
  assert rs["search.algorithm"] == "random_ws"
  assert rundir.config_differences(enas, rs) == [
      'search.algorithm: "enas" -> "random_ws"']


def test_smoke_equals_enas_probe_smoke():
  """The smoke experiment is enas_probe with the smoke preset."""
  smoke = experiments.get_config("smoke")[1].to_dict()
  assert smoke == experiments.get_config("enas_probe:smoke")[1].to_dict()
  assert (experiments.get_experiment("smoke").run
          is experiments.get_experiment("enas_probe").run)


def test_default_data_dir_is_bundled_ptb():
  """The default data dir is the bundled nas_jax/corpora/ptb with the splits."""
  config = experiments.get_config("enas_probe")[1]
  assert config.data.dir == common.DEFAULT_DATA_DIR
  assert os.path.samefile(config.data.dir,
                          os.path.join(REPO_ROOT, "nas_jax", "corpora", "ptb"))
  assert os.path.isabs(config.data.dir)
  for split in ("train.txt", "valid.txt", "test.txt", "SHA256SUMS"):
    assert os.path.isfile(os.path.join(config.data.dir, split))


@pytest.mark.parametrize("preset", (None, "paper", "smoke"))
def test_probe_config_takes_every_preset(preset):
  """The probe experiment's config has run_dir and probe settings per preset."""
  spec = "probe" if preset is None else f"probe:{preset}"
  config = experiments.get_config(spec)[1]
  assert config.run_dir == ""
  expected = {None: 100, "paper": 1000, "smoke": 20}[preset]
  assert config.probe.num_cells == expected
  # The search configs carry the same probe section.
  search = experiments.get_config(spec.replace("probe", "enas_probe", 1))[1]
  assert search.probe.to_dict() == config.probe.to_dict()


@pytest.mark.parametrize("values, named", [
    ({"train.epochz": 3}, "'train.epochz': train has no 'epochz'"),
    ({"trian.epochs": 3}, "'trian.epochs': the config has no 'trian'"),
    ({"train.lr.value": 3}, "'train.lr.value': train.lr has no 'value'"),
])
def test_a_preset_with_an_unknown_key_or_section_raises_naming_it(
    monkeypatch, values, named):
  """A misspelt key or section in a preset is an error, never a new key."""
  monkeypatch.setitem(common.SEARCH_PRESETS, "typo", values)
  with pytest.raises(settings.ConfigError) as info:
    experiments.get_config("enas_probe:typo")
  assert named in str(info.value)


def test_resolved_configs_are_locked():
  """No key can be added to a resolved config; existing ones can be set."""
  config = experiments.get_config("enas_probe")[1]
  config.train.epochs = 3
  with pytest.raises(AttributeError):
    config.train.epochz = 3


def test_only_multi_seed_experiments_have_seeds():
  """The smoke preset's seed list belongs to the experiments that run seeds;
  enas_probe runs five by default, one in its smoke preset (CI's smoke)."""
  for name in ("random_ws", "train_fixed"):
    assert "seeds" not in experiments.get_config(f"{name}:smoke")[1]
  for name in ("memory_buffer", "enas_vs_random"):
    assert tuple(experiments.get_config(f"{name}:smoke")[1].seeds) == (0, 1)
  assert tuple(experiments.get_config("enas_probe")[1].seeds) == (
      0, 1, 2, 3, 4)
  for spec in ("enas_probe:smoke", "smoke"):
    assert tuple(experiments.get_config(spec)[1].seeds) == (0,)


def test_enas_probe_refuses_a_seed_it_would_ignore(tmp_path):
  """enas_probe runs config.seeds: --config.seed=3 is refused, naming the
  flag that does it, before anything is written."""
  module, config = experiments.get_config("enas_probe:smoke")
  config.seed = 3
  with pytest.raises(settings.ConfigError, match=r"--config.seeds=3,"):
    module.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")
  config.seed, config.seeds = 0, (1, 1)
  with pytest.raises(settings.ConfigError, match="distinct integers"):
    module.run(config, str(tmp_path / "run"))


def test_unknown_preset_lists_the_valid_ones():
  with pytest.raises(ValueError, match="valid presets: paper, smoke"):
    experiments.get_config("enas_probe:papr")


def test_describe_aligns_descriptions_past_the_longest_name():
  """Every description starts in the same column, after the longest name
  (enas_vs_random, 14 characters) and two spaces."""
  lines = experiments.describe().splitlines()[:len(experiments.names())]
  width = max(map(len, experiments.names()))
  columns = {len(line) - len(line[2 + width:].lstrip()) for line in lines}
  assert columns == {2 + width + 2}, lines


def test_train_fixed_config_has_no_search_arch_to_set():
  """train_fixed's cell is ``arch`` only: --print_config shows no empty
  ``search.arch`` (run_config fills it from ``arch``)."""
  from experiments import train_fixed  # pylint: disable=g-import-not-at-top
  config = experiments.get_config("train_fixed")[1]
  assert "arch" not in config.search and config.arch == ""
  config.unlock()
  config.arch = "0 0 1 1 2 1 3"
  assert train_fixed.run_config(config).search.arch == "0 0 1 1 2 1 3"
