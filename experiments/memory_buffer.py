"""``memory_buffer``: ENAS with and without the memory-buffer replay loss.

For every seed of ``config.seeds`` and every arm of ``config.arms`` (``none``
is plain ENAS and the baseline; ``clean`` and ``faithful`` add the replay
loss, see ``nas_jax/buffer.py``), one search with the same budget and data
order, then the probe of its trained controller, in ``WORKDIR/ARM/seed_S/``
(each an ordinary run directory: resumable, with its own report). Then the
comparison across seeds (``nas_jax/analysis/buffer_comparison.py``):
``WORKDIR/report.md``, ``results.json`` and ``figures/``.

With ``seeds_mode`` stacked (``"auto"`` on an accelerator) each arm's seeds
train together as one stacked program (``train.train_many``), arm after arm;
sequential runs go seed by seed, so an interrupted experiment has whole
pairs. Either way every run has its own directory, and the same command
resumes the experiment, skipping finished runs and probes.
"""

from __future__ import annotations

import os
import time

import ml_collections

from experiments import common
from experiments import probe
from nas_jax import data
from nas_jax import files
from nas_jax import settings
from nas_jax import train
from nas_jax.analysis import buffer_comparison

# Arm -> the buffer settings it sets; other buffer.* keys apply to every
# buffered arm. "faithful" is the authors' version: their loss and fill policy.
ARMS = {
    "none": {"buffer.variant": "none"},
    "clean": {"buffer.variant": "clean"},
    "faithful": {"buffer.variant": "faithful", "buffer.policy": "authors"},
}
# Keys of this experiment only: not part of a run's config.
_OWN_KEYS = ("seeds", "arms", "seeds_mode")


def get_config(preset: str = ""):
  config = common.search_config()
  # Sized for ~40 minutes on a 2-core CPU: 6 seeds x 2 arms x (6 epochs of
  # search + probe), about 3 minutes a run. Six seeds are the fewest with
  # which the exact Wilcoxon test can reach p < 0.05 (smallest p: 2 / 2**n).
  # The buffer stores from epoch 1 and replays from epoch 2
  # (common.search_config), so 4 of the 6 epochs (800 controller steps)
  # train with the replay loss.
  common.multi_seed_budget(config)
  config.seeds = (0, 1, 2, 3, 4, 5)
  config.arms = ("none", "clean")
  config.seeds_mode = "auto"  # or "stacked", "sequential" (common.stacked_seeds).
  return common.with_preset(config, preset, {"smoke": {"seeds": (0, 1)}})


def _check(config):
  arms, seeds = tuple(config.arms), common.check_seeds(config.seeds)
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise settings.ConfigError(
        f"config arms: unknown {unknown}; valid arms: {sorted(ARMS)}")
  if "none" not in arms or len(arms) < 2 or len(set(arms)) != len(arms):
    raise settings.ConfigError(
        f"config arms must list 'none' (the baseline) and at least one of "
        f"'clean', 'faithful', each once; got {arms}")
  if config.buffer.variant != "none":
    raise settings.ConfigError(
        "config buffer.variant is set per arm by this experiment: leave it "
        "'none' and choose arms with --config.arms")
  # Ordered: the baseline first.
  return ("none",) + tuple(a for a in arms if a != "none"), seeds


def run_config(config: ml_collections.ConfigDict, arm: str, seed: int
               ) -> ml_collections.ConfigDict:
  """The search config of one run: the experiment's, with its seed and arm."""
  return common.apply_overrides(
      common.run_config(config, _OWN_KEYS, seed=seed), ARMS[arm])


def run(config, workdir):
  arms, seeds = _check(config)
  # Every arm's config is checked before the first run starts.
  corpus = data.load_corpus(config.data.dir,
                            verify=config.data.verify_checksums)
  for arm in arms:
    settings.make_setup(run_config(config, arm, seeds[0]), corpus.vocab_size)
  start = time.perf_counter()
  if common.stacked_seeds(config):
    batches = [(arm, seeds) for arm in arms]
  else:
    batches = [(arm, (seed,)) for seed in seeds for arm in arms]
  for n, (arm, batch) in enumerate(batches):
    print(f"memory_buffer: part {n + 1}/{len(batches)}: arm {arm}, seeds "
          f"{', '.join(map(str, batch))}", flush=True)
    subs = [run_config(config, arm, seed) for seed in batch]
    directories = [files.run_dir(workdir, arm, seed) for seed in batch]
    loaded = train.train_many(subs, directories, stacked=len(batch) > 1)
    for sub, directory, run in zip(subs, directories, loaded):
      probe.run_probe(sub.probe, run, directory, reuse=True)
  runs = buffer_comparison.collect(workdir, arms, seeds)
  results = buffer_comparison.compare(runs, arms, seeds,
                                      seed=config.probe.seed)
  results["timing"] = {"total_seconds": time.perf_counter() - start}
  buffer_comparison.write_outputs(results, workdir)
  print(f"memory_buffer: report in {os.path.join(workdir, files.REPORT_FILE)}",
        flush=True)
  for arm in arms[1:]:
    print(f"{arm}: {results['comparisons'][arm]['verdict']}", flush=True)
  return results
