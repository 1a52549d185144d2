"""Runs an experiment: ``python launch.py --experiment=NAME[:PRESET] [flags]``.

  --experiment=NAME[:PRESET]   which experiment; a preset (paper, smoke)
                               modifies its config.
  --workdir=DIR                run directory (default runs/NAME or
                               runs/NAME_PRESET). The same command on the same
                               directory resumes; a directory made with another
                               config is refused, with the differing keys.
  --config.SECTION.KEY=VALUE   override any config value (type-checked).
  --print_config               print the resolved config and exit.
  --compilation_cache=DIR      keep compiled programs in DIR (default
                               ~/.cache/nas_jax/jax; '' for JAX's own setting).
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I
                               one process of a multi-host job (all three;
                               under SLURM with several tasks, none). The mesh
                               spans every process's devices; process 0 writes.

Experiments:
{experiments}

Examples:
  python launch.py --experiment=smoke
  python launch.py --experiment=enas_probe --config.train.epochs=20
  python launch.py --experiment=random_ws:paper --workdir=/scratch/rs_seed0 \\
      --config.seed=0

Bad input (unknown experiment or key, wrong type, missing or corrupt data, a
workdir of another config) prints one line and exits with status 2; a
diverged run exits with status 3. Ctrl-C (SIGINT) or SIGTERM saves a
checkpoint at the next step boundary, prints one line and exits with status
130 or 143; rerunning the same command resumes.
"""

import os
import signal
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

import experiments
from nas_jax import devices
from nas_jax import runtime
from nas_jax import train

__doc__ = __doc__.format(experiments=experiments.describe())

_EXPERIMENT = flags.DEFINE_string(
    "experiment", None, "NAME or NAME:PRESET of the experiment to run.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: runs/NAME[_PRESET]).")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config and exit.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "",
    "Multi-host: HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 0, "Multi-host: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", -1, "Multi-host: this process's index, 0 to N-1.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", runtime.default_cache_dir(),
    "Directory of JAX's persistent compilation cache ('' leaves JAX's own "
    "setting: off unless JAX_COMPILATION_CACHE_DIR is set).")


def _fail(message: str, status: int = 2):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _stop(message: str, status: int):
  print(message, file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv):
  """Two passes: the experiment decides which config ``--config.*`` overrides."""
  help_flags = ("--help", "-h", "--helpfull", "-?")
  first = [a for a in argv if not a.startswith("--config")
           and a not in help_flags]
  try:
    flags.FLAGS(first, known_only=True)
  except flags.Error as e:
    _fail(str(e))
  spec = _EXPERIMENT.value
  if any(a in help_flags for a in argv):
    print(__doc__)
    if spec is not None:
      try:
        print(f"Config of {spec} (override with --config.KEY=VALUE):")
        print(experiments.get_config(spec)[1])
      except ValueError as e:
        _fail(str(e))
    sys.exit(0)
  if spec is None:
    _fail("--experiment is required; valid experiments: "
          + ", ".join(experiments.names()))
  try:
    experiment, config = experiments.get_config(spec)
  except ValueError as e:
    _fail(str(e))
  try:
    experiments.check_override_keys(config, argv)
  except ValueError as e:
    _fail(str(e))
  try:
    config_flags.DEFINE_config_dict("config", config,
                                    "The experiment's config (see above).")
  except (flags.Error, ValueError, TypeError, KeyError, AttributeError) as e:
    _fail(f"bad --config override: {e}")
  flags.FLAGS.unparse_flags()
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e).splitlines()[0])
  if len(rest) > 1:
    _fail(f"unexpected arguments: {' '.join(rest[1:])}")
  return experiment, flags.FLAGS.config, spec


def main():
  experiment, config, spec = parse_flags(sys.argv)
  if _PRINT_CONFIG.value:
    print(config)
    return 0
  workdir = _WORKDIR.value or os.path.join("runs", spec.replace(":", "_"))
  try:
    multi_host = devices.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
  except devices.MeshError as e:
    _fail(str(e))
  if multi_host:
    name = spec.partition(":")[0]
    if name not in experiments.MULTI_HOST:
      _fail(f"experiment {name} does not run on several processes (it runs "
            "several searches with analyses between them); run its seeds as "
            "separate jobs, or use one of: "
            + ", ".join(experiments.MULTI_HOST))
    if not devices.is_writer():  # Process 0 speaks for the job.
      sys.stdout = open(os.devnull, "w", encoding="utf-8")
  runtime.enable_compilation_cache(_COMPILATION_CACHE.value)
  # Outside the search loop (which saves first, see train.Interrupted) a
  # SIGTERM stops like Ctrl-C: one line, no traceback.
  signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    experiment.run(config, workdir)
  except train.INPUT_ERRORS as e:
    _fail(str(e))
  except train.TrainingDiverged as e:
    _fail(str(e), status=3)
  except train.Interrupted as e:
    _stop(str(e), e.exit_status)
  except devices.WorkerDone as e:
    print(f"{e}; waiting for it", file=sys.stderr, flush=True)
  except KeyboardInterrupt:
    _stop(_OUTSIDE_LOOP.format(signal="SIGINT"), 130)
  # Multi-host: the processes leave together, after process 0's analysis.
  devices.wait_for_all("nas_jax_experiment_done")
  return 0


# A stop without a fresh checkpoint: outside the search loop, or a second
# Ctrl-C inside it.
_OUTSIDE_LOOP = ("interrupted by {signal}; rerun the same command to resume "
                 "from the last checkpoint (a finished search is not redone; "
                 "an unfinished analysis starts again)")


def _raise_terminated(signum, frame):
  del frame
  raise train.Interrupted(signum, _OUTSIDE_LOOP.format(signal="SIGTERM"))


if __name__ == "__main__":
  # glibc reads its allocator settings only at start-up (see runtime).
  runtime.reexec_with_tuned_allocator()
  # absl's handlers (--help, logging) without app.run's own flag parsing.
  app.define_help_flags()
  sys.exit(main())
