"""``enas_probe``: the main job. ENAS searches on PTB, one per seed of
``config.seeds``, each followed by the probe of its controller's carries and
policy (trained and untrained controller: report.md, figures/, results.json,
probe.npz in the run's directory); with several seeds, claims 3 and 4 are
then judged paired over seeds (:mod:`nas_jax.analysis.across_seeds`).

Layout: one seed (``--config.seeds=0,``) runs in ``WORKDIR`` itself, and its
verdicts are tests over that run's cells; several run in
``WORKDIR/seed_S/`` (each an ordinary run directory: resumable, with its
own report), and ``WORKDIR/report.md`` holds the paired verdicts. With
``seeds_mode`` stacked (``"auto"`` on an accelerator) the seeds train
together as one stacked program (``train.train_many``); sequential runs go
seed by seed, each probed before the next starts.

Rerunning a finished experiment prints its summary in seconds: the searches
resume as complete, the probes of their checkpoints are reused (re-analyse
one with the ``probe`` experiment) and the comparison over seeds is redone.
"""

from __future__ import annotations

import glob
import os
import time

import jax

from experiments import common
from experiments import probe
from nas_jax import files
from nas_jax import settings
from nas_jax import train
from nas_jax.analysis import across_seeds
from nas_jax.analysis import search_report

# Keys of this experiment only: not part of a run's config.
_OWN_KEYS = ("seeds", "seeds_mode")


def get_config(preset: str = ""):
  config = common.search_config()
  common.multi_seed_budget(config)
  # Five searches: the paired t-test over seeds has some power (the
  # Wilcoxon test would need six to reach 0.05); 21 minutes on a quiet
  # 2-core CPU (README). The smoke preset runs one.
  config.seeds = (0, 1, 2, 3, 4)
  config.seeds_mode = "auto"  # or "stacked", "sequential" (common.stacked_seeds).
  return common.with_preset(config, preset, {"smoke": {"seeds": (0,)}})


def run_config(config, seed: int):
  """The search config of one seed's run."""
  return common.run_config(config, _OWN_KEYS, seed=seed)


def _check(config, workdir) -> tuple[int, ...]:
  seeds = common.check_seeds(config.seeds)
  common.stacked_seeds(config)  # Checks seeds_mode, even for one seed.
  if config.seed != 0:
    raise settings.ConfigError(
        f"config seed: this experiment runs the seeds of config.seeds "
        f"(now {', '.join(map(str, seeds))}); for one search with seed "
        f"{config.seed} pass --config.seeds={config.seed},")
  if len(seeds) > 1 and jax.process_count() > 1:
    raise settings.ConfigError(
        "config seeds: several seeds do not run on several processes; run "
        "one seed per job (--config.seeds=N, --workdir=WORKDIR/seed_N), "
        "then this command on one process writes the comparison")
  # Neither layout may write over the other's report.
  if len(seeds) > 1 and os.path.exists(os.path.join(workdir,
                                                    files.CONFIG_FILE)):
    raise settings.ConfigError(
        f"{workdir} holds one search ({files.CONFIG_FILE}); several seeds "
        "would write their comparison over its report: use another "
        "--workdir, or --config.seeds=S, to resume it (one made before "
        "enas_probe ran seeds also needs --config.train.epochs=10 "
        "--config.derive.every_epochs=5)")
  if len(seeds) == 1 and any(
      os.path.exists(os.path.join(d, files.CONFIG_FILE))
      for d in glob.glob(files.seed_dir(glob.escape(workdir), "*"))):
    raise settings.ConfigError(
        f"{workdir} holds searches of several seeds (seed_S/); one seed "
        "would run in its root and write over their comparison: use "
        f"--workdir={files.seed_dir(workdir, seeds[0])}")
  return seeds


def run(config, workdir):
  seeds = _check(config, workdir)
  if len(seeds) == 1:
    loaded = train.train_and_evaluate(run_config(config, seeds[0]), workdir)
    results = probe.run_probe(config.probe, loaded, workdir, reuse=True)
    print(f"enas_probe: {train.best_summary(loaded.best)} | report: "
          f"{os.path.join(workdir, files.REPORT_FILE)}", flush=True)
    return results
  start = time.perf_counter()
  if common.stacked_seeds(config):
    batches = [seeds]
  else:
    batches = [(seed,) for seed in seeds]
  for n, batch in enumerate(batches):
    print(f"enas_probe: part {n + 1}/{len(batches)}: seeds "
          f"{', '.join(map(str, batch))}", flush=True)
    subs = [run_config(config, seed) for seed in batch]
    directories = [files.seed_dir(workdir, seed) for seed in batch]
    loaded = train.train_many(subs, directories, stacked=len(batch) > 1)
    for sub, directory, one in zip(subs, directories, loaded):
      probe.run_probe(sub.probe, one, directory, reuse=True)
  print(f"enas_probe: comparing trained and untrained controllers over "
        f"{len(seeds)} seeds", flush=True)
  runs = {s: across_seeds.read_run(files.seed_dir(workdir, s)) for s in seeds}
  results = across_seeds.compare(runs, seeds, seed=config.probe.seed)
  results["timing"] = {"total_seconds": time.perf_counter() - start}
  overview = search_report.runs_overview(
      workdir, [(f"seed {s}", os.path.relpath(files.seed_dir(workdir, s),
                                              workdir)) for s in seeds])
  across_seeds.write_outputs(results, workdir, overview)
  for claim in ("claim3", "claim4"):
    print(f"enas_probe: {claim}: {results['verdicts'][claim]}", flush=True)
  print(f"enas_probe: report: {os.path.join(workdir, files.REPORT_FILE)}",
        flush=True)
  return results
